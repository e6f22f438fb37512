#!/usr/bin/env python3
"""Top-1 accuracy and latency of a running comrope-serve across resolutions.

Sends Fashion-MNIST test images (28x28 gray, encoded here as PNG) to the
daemon's HTTP API, POST /v1/classify with the raw PNG as the body and
?resolution=HxW&top_k=1, from a few concurrent clients (one kept-alive
connection each), at each resolution in turn (--model NAME: that model of a
daemon serving several, POST /v1/models/NAME/classify; default: the
daemon's default model). For each resolution it prints
a progress line, then a table: top-1 accuracy, client-side latency
percentiles (request sent -> answer read, milliseconds) and images/s.

    bench/resolution_sweep.py [--url http://127.0.0.1:8080] [--model NAME] [--limit N]
        [--resolutions 16,20,28,40,56,84,28x40] [--concurrency 4]
        [--out-json FILE] [--out-csv FILE] [--plot FILE.png]

Default resolutions: 0.5x, 0.75x, 1x, 1.5x, 2x and 3x the model's training
size (GET /v1/models), each rounded to the nearest multiple of the patch
size (ties to the even multiple, Python's round), plus one non-square:
training height x 1.5x width. For the 28x28 / patch-4 default model:
16, 20, 28, 40, 56, 84 and 28x40.

Merging runs of several checkpoints (bench/sweep_all.sh does this):

    bench/resolution_sweep.py --merge run1.json run2.json ... \
        --out-json all.json --out-csv all.csv [--plot all.png]

Only the Python standard library is used; --plot alone needs matplotlib
(Debian python3-matplotlib, e.g. /usr/bin/python3). Exit status 1 when a
request failed (non-200 or a broken answer): such an image counts as wrong.
"""
import argparse
import csv
import datetime
import gzip
import http.client
import json
import math
import os
import struct
import sys
import threading
import time
import urllib.parse
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor

DATA_DIR = "/usr/share/datasets/fashion-mnist"
SPLITS = {"test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
          "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")}
FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
# the order the paper lists the position encodings in (legend and CSV order)
PE_ORDER = ("raw", "none", "vanilla-rope", "liere", "comrope-ap", "comrope-ld")


# --------------------------------------------------------------------------
# data: idx files -> 8-bit gray images -> PNG bytes
# --------------------------------------------------------------------------

def _read_idx(path, want_dims):
    """An idx file (gzip or plain) -> (dims, payload bytes)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] or data[1] or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    if data[3] != want_dims:
        raise ValueError(f"{path}: {data[3]} dimensions, expected {want_dims}")
    dims = struct.unpack(">" + "I" * want_dims, data[4:4 + 4 * want_dims])
    body = data[4 + 4 * want_dims:]
    if len(body) != math.prod(dims):
        raise ValueError(f"{path}: {len(body)} bytes of data, header says {list(dims)}")
    return dims, body


def _find(root, name):
    for candidate in (os.path.join(root, name + ".gz"), os.path.join(root, name)):
        if os.path.exists(candidate):
            return candidate
    raise SystemExit(f"resolution_sweep: {name}(.gz) not found in {root} "
                     "(Debian package dataset-fashion-mnist, or --data-dir)")


def load_images(root, split, limit):
    """-> (list of (height, width, pixel bytes), list of labels), the first `limit`."""
    img_name, lab_name = SPLITS[split]
    (n, h, w), pixels = _read_idx(_find(root, img_name), 3)
    (m,), labels = _read_idx(_find(root, lab_name), 1)
    if n != m:
        raise SystemExit(f"resolution_sweep: {n} images but {m} labels")
    if limit:
        n = min(n, limit)
    size = h * w
    return [(h, w, pixels[i * size:(i + 1) * size]) for i in range(n)], list(labels[:n])


def _chunk(tag, data):
    return (struct.pack(">I", len(data)) + tag + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))


def png_gray8(width, height, pixels):
    """8-bit grayscale PNG (color type 0, no interlace, filter 0 on each row)."""
    if len(pixels) != width * height:
        raise ValueError("png_gray8: pixel count does not match the size")
    raw = b"".join(b"\x00" + pixels[r * width:(r + 1) * width] for r in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b""))


# --------------------------------------------------------------------------
# resolutions
# --------------------------------------------------------------------------

def parse_resolutions(text):
    out = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        h, _, w = item.partition("x")
        try:
            hw = (int(h), int(w or h))
        except ValueError:
            raise SystemExit(f"resolution_sweep: bad resolution {item!r} (N or HxW)")
        if hw[0] <= 0 or hw[1] <= 0:
            raise SystemExit(f"resolution_sweep: bad resolution {item!r}")
        out.append(hw)
    if not out:
        raise SystemExit("resolution_sweep: --resolutions is empty")
    return out


def default_resolutions(train, patch):
    """0.5x .. 3x the training size, nearest multiple of the patch (ties to
    even), then training height x 1.5 x width."""
    def snap(x):
        return max(patch, round(x / patch) * patch)
    sides = []
    for f in FACTORS:
        s = snap(train * f)
        if s not in sides:
            sides.append(s)
    out = [(s, s) for s in sides]
    out.append((train, snap(train * 1.5)))
    return out


def tokens_of(h, w, patch):
    return (h // patch) * (w // patch) + 1  # + the class token


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------

def get_model(url, timeout, name=None):
    """The /v1/models entry of `name`, or the default model's (the first)."""
    with urllib.request.urlopen(url.rstrip("/") + "/v1/models", timeout=timeout) as r:
        models = json.load(r)["models"]
    if not models:
        raise SystemExit("resolution_sweep: the daemon serves no model")
    if name is None:
        return models[0]
    for m in models:
        if m.get("name") == name:
            return m
    raise SystemExit(f"resolution_sweep: the daemon does not serve {name!r} "
                     f"(it serves {', '.join(m.get('name', '?') for m in models)})")


class Client:
    """One kept-alive HTTP/1.1 connection per worker thread."""

    def __init__(self, url, timeout):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", ""):
            raise SystemExit(f"resolution_sweep: only http:// URLs ({url})")
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.base = u.path.rstrip("/")
        self.timeout = timeout
        self.conn = None

    def post_png(self, path, body):
        """-> (status, body bytes); reconnects (at most twice) when the
        server closed the kept-alive connection."""
        last = None
        for _ in range(3):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request("POST", self.base + path, body=body,
                                  headers={"Content-Type": "image/png"})
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                return resp.status, data
            except (http.client.HTTPException, ConnectionError, OSError) as e:
                last = e
                self.close()
        raise last

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def percentile(sorted_values, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def run_resolution(url, pngs, labels, h, w, concurrency, timeout, warmup, model=None):
    """Every image once at h x w (to `model`, or the default model). -> dict
    of counts, latencies (ms), errors."""
    route = f"/v1/models/{urllib.parse.quote(model, safe='')}/classify" if model else "/v1/classify"
    path = f"{route}?resolution={h}x{w}&top_k=1"
    n = len(pngs)
    preds = [None] * n
    lat = [0.0] * n
    server_total = [float("nan")] * n
    server_compute = [float("nan")] * n
    errors = []
    lock = threading.Lock()
    state = {"next": 0}
    clients = [Client(url, timeout) for _ in range(concurrency)]

    def worker(client):
        # warm-up (not counted): the first requests build this resolution's
        # rotation tables in the daemon's workers
        for i in range(min(warmup, n)):
            try:
                client.post_png(path, pngs[i])
            except Exception:  # counted below when it fails again
                pass
        while True:
            with lock:
                i = state["next"]
                if i >= n:
                    return
                state["next"] = i + 1
            t0 = time.perf_counter()
            try:
                status, body = client.post_png(path, pngs[i])
            except Exception as e:  # connection refused, timeout, ...
                with lock:
                    errors.append(f"image {i}: {type(e).__name__}: {e}")
                continue
            lat[i] = (time.perf_counter() - t0) * 1000.0
            if status != 200:
                with lock:
                    errors.append(f"image {i}: HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
                continue
            try:
                answer = json.loads(body)
                pred = answer["predictions"][0]
                preds[i] = int(pred["top"][0]["index"])
                if list(pred["resolution"]) != [h, w]:
                    raise ValueError(f"answered at {pred['resolution']}, asked {h}x{w}")
                timing = answer.get("timing_ms", {})
                server_total[i] = float(timing.get("total", float("nan")))
                server_compute[i] = float(timing.get("compute", float("nan")))
            except (ValueError, KeyError, IndexError, TypeError) as e:
                preds[i] = None
                with lock:
                    errors.append(f"image {i}: bad answer ({e}): {body[:200]!r}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for f in [pool.submit(worker, c) for c in clients]:
            f.result()
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    ok = [i for i in range(n) if preds[i] is not None]
    correct = sum(1 for i in ok if preds[i] == labels[i])
    lats = sorted(lat[i] for i in ok)
    st = sorted(x for x in (server_total[i] for i in ok) if not math.isnan(x))
    sc = sorted(x for x in (server_compute[i] for i in ok) if not math.isnan(x))
    return {
        "images": n,
        "answered": len(ok),
        "correct": correct,
        "top1": 100.0 * correct / n if n else float("nan"),
        "errors": len(errors),
        "error_samples": errors[:5],
        "latency_ms": {"p50": percentile(lats, 50), "p90": percentile(lats, 90),
                       "p99": percentile(lats, 99), "mean": sum(lats) / len(lats) if lats else float("nan"),
                       "max": lats[-1] if lats else float("nan")},
        "server_total_ms": {"p50": percentile(st, 50), "p99": percentile(st, 99)},
        "server_compute_ms": {"p50": percentile(sc, 50), "p99": percentile(sc, 99)},
        "images_per_s": len(ok) / wall if wall > 0 else float("nan"),
        "wall_s": wall,
    }


# --------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------

CSV_FIELDS = ("model", "pe_type", "training_resolution", "height", "width", "tokens", "scale",
              "images", "correct", "top1", "errors", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
              "server_compute_p50_ms", "images_per_s", "concurrency")


def csv_rows(runs):
    for run in runs:
        m = run["model"]
        for r in run["results"]:
            lat = r["latency_ms"]
            yield {
                "model": m["name"], "pe_type": m["pe_type"],
                "training_resolution": m["training_resolution"],
                "height": r["height"], "width": r["width"], "tokens": r["tokens"],
                "scale": f"{r['scale']:.3f}", "images": r["images"], "correct": r["correct"],
                "top1": f"{r['top1']:.2f}", "errors": r["errors"],
                "p50_ms": f"{lat['p50']:.3f}", "p90_ms": f"{lat['p90']:.3f}",
                "p99_ms": f"{lat['p99']:.3f}", "mean_ms": f"{lat['mean']:.3f}",
                "server_compute_p50_ms": f"{r['server_compute_ms']['p50']:.3f}",
                "images_per_s": f"{r['images_per_s']:.1f}", "concurrency": run["concurrency"],
            }


def write_csv(path, runs):
    with open(path, "w", newline="", encoding="utf-8") as f:
        wr = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        wr.writeheader()
        for row in csv_rows(runs):
            wr.writerow(row)


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def print_table(run, out=sys.stdout):
    m = run["model"]
    print(f"\n{m['name']} ({m['pe_type']}, trained at {m['training_resolution']}x"
          f"{m['training_resolution']}, patch {m['patch_size']}): {run['images']} images, "
          f"concurrency {run['concurrency']}", file=out)
    head = (f"{'resolution':>10} {'tokens':>6} {'scale':>5} {'top-1 %':>7} {'correct':>11} "
            f"{'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'img/s':>7} {'errors':>6}")
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in run["results"]:
        lat = r["latency_ms"]
        print(f"{r['height']:>4}x{r['width']:<5} {r['tokens']:>6} {r['scale']:>5.2f} "
              f"{r['top1']:>7.2f} {r['correct']:>5}/{r['images']:<5} {lat['p50']:>7.2f} "
              f"{lat['p90']:>7.2f} {lat['p99']:>7.2f} {r['images_per_s']:>7.1f} {r['errors']:>6}",
              file=out)


def _pe_rank(run):
    pe = run["model"]["pe_type"]
    return (PE_ORDER.index(pe) if pe in PE_ORDER else len(PE_ORDER), run["model"]["name"])


def plot(path, runs):
    """Two panels: top-1 vs resolution per variant, latency vs tokens."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("resolution_sweep: --plot needs matplotlib (Debian python3-matplotlib; "
                         "run with /usr/bin/python3)")
    runs = sorted(runs, key=_pe_rank)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    trained = set()
    for k, run in enumerate(runs):
        m = run["model"]
        color = f"C{k}"
        label = f"{m['pe_type']} ({m['name']})"
        sq = sorted((r for r in run["results"] if r["height"] == r["width"]), key=lambda r: r["height"])
        ns = [r for r in run["results"] if r["height"] != r["width"]]
        ax1.plot([r["height"] for r in sq], [r["top1"] for r in sq], "o-", color=color, label=label)
        for r in ns:
            side = math.sqrt(r["height"] * r["width"])
            ax1.plot([side], [r["top1"]], "s", color=color, mfc="none", ms=8)
            ax1.annotate(f"{r['height']}x{r['width']}", (side, r["top1"]), textcoords="offset points",
                         xytext=(5, -12), fontsize=7, color=color)
        trained.add(m["training_resolution"])
        pts = sorted(run["results"], key=lambda r: r["tokens"])
        toks = [r["tokens"] for r in pts]
        ax2.plot(toks, [r["latency_ms"]["p50"] for r in pts], "o-", color=color, label=f"{label} p50")
        ax2.fill_between(toks, [r["latency_ms"]["p50"] for r in pts],
                         [r["latency_ms"]["p90"] for r in pts], color=color, alpha=0.15)
        ax2.plot(toks, [r["latency_ms"]["p99"] for r in pts], ":", color=color, lw=1)
    for t in sorted(trained):
        ax1.axvline(t, color="gray", ls="--", lw=1)
        ax1.annotate(f"trained at {t}", (t, 0.98), xycoords=("data", "axes fraction"), va="top",
                     xytext=(3, 0), textcoords="offset points", fontsize=8, color="gray")
    n_img = runs[0]["images"] if runs else 0
    ax1.set_xlabel("resolution (side in pixels; non-square: sqrt(h*w), hollow squares)")
    ax1.set_ylabel("top-1 accuracy (%)")
    ax1.set_title(f"Fashion-MNIST test top-1 through comrope-serve ({n_img} images)")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8, loc="best")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("tokens per image (patches + class token)")
    ax2.set_ylabel("client latency (ms): p50 line, p50-p90 band, p99 dotted")
    conc = sorted({run["concurrency"] for run in runs})
    ax2.set_title(f"latency vs tokens (concurrency {','.join(map(str, conc))})")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
    for axis in (ax2.xaxis, ax2.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def sweep(args):
    model = get_model(args.url, args.timeout, args.model)
    T, p = int(model["training_resolution"]), int(model["patch_size"])
    if model.get("channels") not in (1, 3):
        raise SystemExit(f"resolution_sweep: model has {model.get('channels')} channels")
    resolutions = parse_resolutions(args.resolutions) if args.resolutions else default_resolutions(T, p)
    max_tokens = int(model.get("resolutions", {}).get("max_tokens", 0) or 0)
    for h, w in resolutions:
        if h % p or w % p:
            raise SystemExit(f"resolution_sweep: {h}x{w} is not a multiple of the patch size {p}")
        if max_tokens and tokens_of(h, w, p) > max_tokens:
            raise SystemExit(f"resolution_sweep: {h}x{w} has {tokens_of(h, w, p)} tokens, "
                             f"over the daemon's max_tokens {max_tokens}")
    images, labels = load_images(args.data_dir, args.split, args.limit)
    t0 = time.perf_counter()
    pngs = [png_gray8(w, h, px) for (h, w, px) in images]
    print(f"resolution_sweep: {model['name']} ({model['pe_type']}, trained at {T}x{T}, patch {p}) "
          f"at {args.url}; {len(pngs)} {args.split} images encoded as PNG in "
          f"{time.perf_counter() - t0:.1f} s; concurrency {args.concurrency}; resolutions "
          + ", ".join(f"{h}x{w}" for h, w in resolutions), flush=True)
    run = {
        "tool": "bench/resolution_sweep.py",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "url": args.url,
        "dataset": {"name": "fashion-mnist", "split": args.split, "dir": args.data_dir},
        "images": len(pngs),
        "concurrency": args.concurrency,
        "warmup_per_client": args.warmup,
        "cpus": os.cpu_count(),
        "model": {k: model.get(k) for k in ("name", "pe_type", "training_resolution", "patch_size",
                                            "channels", "num_classes")},
        "results": [],
    }
    failed = 0
    for k, (h, w) in enumerate(resolutions):
        r = run_resolution(args.url, pngs, labels, h, w, args.concurrency, args.timeout, args.warmup,
                           args.model)
        r.update({"height": h, "width": w, "tokens": tokens_of(h, w, p),
                  "scale": math.sqrt(h * w) / T})
        run["results"].append(r)
        lat = r["latency_ms"]
        print(f"[{k + 1}/{len(resolutions)}] {h}x{w} ({r['tokens']} tokens): top-1 {r['top1']:.2f}% "
              f"({r['correct']}/{r['images']}), latency p50 {lat['p50']:.2f} p90 {lat['p90']:.2f} "
              f"p99 {lat['p99']:.2f} ms, {r['images_per_s']:.0f} img/s, {r['wall_s']:.1f} s"
              + (f", {r['errors']} ERRORS" if r["errors"] else ""), flush=True)
        for e in r["error_samples"]:
            print(f"  error: {e}", file=sys.stderr)
        failed += r["errors"]
        if args.out_json:  # rewritten after every resolution: an interrupted run keeps what it measured
            write_json(args.out_json, run)
    print_table(run)
    if args.out_csv:
        write_csv(args.out_csv, [run])
    if args.plot:
        plot(args.plot, [run])
    for path in (args.out_json, args.out_csv, args.plot):
        if path:
            print(f"wrote {path}")
    if failed:
        print(f"resolution_sweep: {failed} requests failed", file=sys.stderr)
        return 1
    return 0


def merge(args):
    runs = []
    for path in args.merge:
        with open(path, "r", encoding="utf-8") as f:
            obj = json.load(f)
        runs.extend(obj["runs"] if "runs" in obj else [obj])
    runs.sort(key=_pe_rank)
    for run in runs:
        print_table(run)
    if args.out_json:
        write_json(args.out_json, {"tool": "bench/resolution_sweep.py", "runs": runs})
    if args.out_csv:
        write_csv(args.out_csv, runs)
    if args.plot:
        plot(args.plot, runs)
    for path in (args.out_json, args.out_csv, args.plot):
        if path:
            print(f"wrote {path}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080", help="the daemon (default %(default)s)")
    ap.add_argument("--model", help="the model to sweep, by name (default: the daemon's default model)")
    ap.add_argument("--resolutions", help="comma-separated N or HxW (default: 0.5x..3x the training "
                    "size and one non-square, see above)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N images (default: all)")
    ap.add_argument("--concurrency", type=int, default=4, help="concurrent clients (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=2,
                    help="uncounted requests per client before each resolution (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    ap.add_argument("--data-dir", default=os.environ.get("FASHION_MNIST_DIR") or DATA_DIR,
                    help="idx files (default $FASHION_MNIST_DIR or %(default)s)")
    ap.add_argument("--split", choices=sorted(SPLITS), default="test")
    ap.add_argument("--out-json", help="write the results as JSON")
    ap.add_argument("--out-csv", help="write one CSV row per resolution")
    ap.add_argument("--plot", help="write a PNG plot (needs matplotlib)")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="no requests: combine the JSON of earlier runs (one per checkpoint)")
    args = ap.parse_args(argv)
    if args.concurrency < 1 or args.limit < 0 or args.warmup < 0:
        ap.error("--concurrency must be >= 1, --limit and --warmup >= 0")
    if args.merge:
        return merge(args)
    return sweep(args)


if __name__ == "__main__":
    sys.exit(main())
