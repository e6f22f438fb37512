#!/usr/bin/env python3
"""The daemon's side of the performance issue: HTTP against engine-only.

Starts build-bench/comrope-serve (or --serve) on a model, on a free port,
pinned like every other system of bench/run.py (--pin "taskset -c 0,1"),
sends PNG images through POST /v1/classify, stops it with SIGTERM and
prints one JSON line at the end. Two modes:

  --mode speed   (ViT-B/16 at 224, the issue's model)
      saturation: --concurrency clients (one kept-alive connection each)
      send --images requests as fast as answers come back -> images/s;
      low load: one client, --sequential requests one after the other ->
      latency percentiles (request sent -> answer read, ms).
      bench/run.py compares both with comrope-bench-engine measured in the
      same run (batch 8 and batch 1).

  --mode memory  (the small default model, many requests)
      after a warm-up that sends every resolution of --mix a few times
      (the first request of a new size may allocate and touch memory),
      --requests requests cycling through --mix from --concurrency clients;
      RSS (/proc/PID/status VmRSS) and minor page faults (/proc/PID/stat)
      before and after -> growth in % and faults per request.

Standard library only; the PNGs are made here (bench/resolution_sweep.py's
encoder). Progress goes to stderr.
"""
import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import resolution_sweep as rs  # noqa: E402


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", required=True, help="the comrope-serve binary")
    ap.add_argument("--model", required=True, help="model directory")
    ap.add_argument("--mode", choices=("speed", "memory"), required=True)
    ap.add_argument("--pin", default="", help="command prefix for the daemon, e.g. 'taskset -c 0,1'")
    ap.add_argument("--serve-flags", default="", help="extra daemon flags")
    ap.add_argument("--resolution", type=int, default=224, help="speed: the image side sent and asked for")
    ap.add_argument("--concurrency", type=int, default=16, help="clients at saturation (speed) or in memory mode")
    ap.add_argument("--images", type=int, default=48, help="speed: timed requests at saturation")
    ap.add_argument("--sequential", type=int, default=15, help="speed: timed requests one at a time")
    ap.add_argument("--warmup", type=int, default=2, help="speed: warm-up requests per client")
    ap.add_argument("--requests", type=int, default=10000, help="memory: timed requests")
    ap.add_argument("--mix", default="28,20,40,56,84,28x40", help="memory: resolutions, cycled")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    return ap.parse_args(argv)


class Daemon:
    """comrope-serve on 127.0.0.1, port 0 (read back from its log)."""

    def __init__(self, args):
        self.log = tempfile.NamedTemporaryFile(prefix="daemon_bench-", suffix=".log", delete=False)
        cmd = args.pin.split() + [args.serve, "--model", args.model, "--host", "127.0.0.1", "--port", "0",
                                  "--access-log", "off"] + args.serve_flags.split()
        log("daemon: " + " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log)
        self.url = None
        deadline = time.time() + 120
        while time.time() < deadline:
            with open(self.log.name, encoding="utf-8", errors="replace") as f:
                text = f.read()
            m = re.search(r"listening on .*:(\d+)$", text, re.M)
            if m:
                self.url = f"http://127.0.0.1:{m.group(1)}"
                break
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon_bench: the daemon exited: {text.strip()[-500:]}")
            time.sleep(0.05)
        if not self.url:
            self.stop()
            raise SystemExit("daemon_bench: no port in the daemon's log after 120 s")
        self.banner = [ln for ln in text.splitlines() if "workers x" in ln or "model " in ln]

    def proc_numbers(self):
        """-> (VmRSS in KiB, minor faults) of the daemon process."""
        pid = self.proc.pid
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            rss = int(next(ln for ln in f if ln.startswith("VmRSS:")).split()[1])
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return rss, int(fields[7])  # field 10 of stat: minflt (fields[0] is field 3)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.unlink(self.log.name)
        return self.proc.returncode


def noise_png(side_h, side_w, seed):
    rnd = random.Random(seed)
    return rs.png_gray8(side_w, side_h, bytes(rnd.randrange(256) for _ in range(side_h * side_w)))


def run_clients(url, jobs, concurrency, timeout):
    """jobs: list of (path, body). Runs them from `concurrency` kept-alive
    clients. -> (wall seconds, sorted latencies in ms, failures)."""
    lock = threading.Lock()
    next_job = [0]
    lat, fails = [], []

    def worker():
        c = rs.Client(url, timeout)
        try:
            while True:
                with lock:
                    i = next_job[0]
                    next_job[0] += 1
                if i >= len(jobs):
                    return
                path, body = jobs[i]
                t0 = time.perf_counter()
                try:
                    status, data = c.post_png(path, body)
                except OSError as e:
                    status, data = 0, str(e).encode()
                dt = (time.perf_counter() - t0) * 1e3
                with lock:
                    lat.append(dt)
                    if status != 200:
                        fails.append(f"{status}: {data[:200]!r}")
        finally:
            c.close()

    threads = [threading.Thread(target=worker) for _ in range(min(concurrency, len(jobs)))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, sorted(lat), fails


def speed(args, d):
    r = args.resolution
    pngs = [noise_png(r, r, s) for s in range(8)]
    path = f"/v1/classify?resolution={r}x{r}&top_k=1"
    jobs = lambda n: [(path, pngs[i % len(pngs)]) for i in range(n)]  # noqa: E731
    out = {"resolution": r, "concurrency": args.concurrency}
    log(f"warm-up: {args.warmup * args.concurrency} requests from {args.concurrency} clients")
    _, _, fails = run_clients(d.url, jobs(args.warmup * args.concurrency), args.concurrency, args.timeout)
    log(f"saturation: {args.images} requests from {args.concurrency} clients")
    wall, lat, f2 = run_clients(d.url, jobs(args.images), args.concurrency, args.timeout)
    fails += f2
    out.update({"saturation_images": args.images, "saturation_s": round(wall, 3),
                "saturation_images_per_s": round(args.images / wall, 4),
                "saturation_p50_ms": round(rs.percentile(lat, 50), 2)})
    log(f"  {args.images / wall:.3f} images/s")
    log(f"low load: 2 warm-up + {args.sequential} requests, one at a time")
    run_clients(d.url, jobs(2), 1, args.timeout)
    _, lat, f3 = run_clients(d.url, jobs(args.sequential), 1, args.timeout)
    fails += f3
    out.update({"sequential": args.sequential, "p50_ms": round(rs.percentile(lat, 50), 2),
                "p90_ms": round(rs.percentile(lat, 90), 2), "min_ms": round(lat[0], 2)})
    log(f"  p50 {out['p50_ms']:.1f} ms, p90 {out['p90_ms']:.1f} ms")
    return out, fails


def memory(args, d):
    mix = rs.parse_resolutions(args.mix)
    pngs = [noise_png(28, 28, s) for s in range(16)]
    jobs = [(f"/v1/classify?resolution={h}x{w}&top_k=1", pngs[i % len(pngs)])
            for i in range(args.requests) for h, w in [mix[i % len(mix)]]]
    # every size, mixed; then the largest alone, so that full batches of it
    # (the biggest arena any batch needs) have been run before the count
    big = max(mix, key=lambda hw: hw[0] * hw[1])
    warm = [(f"/v1/classify?resolution={h}x{w}&top_k=1", pngs[0]) for h, w in mix] * (2 * args.concurrency)
    warm += [(f"/v1/classify?resolution={big[0]}x{big[1]}&top_k=1", pngs[0])] * (4 * args.concurrency)
    log(f"warm-up: {len(warm)} requests, every resolution of {args.mix}, then {big[0]}x{big[1]} alone")
    _, _, fails = run_clients(d.url, warm, args.concurrency, args.timeout)
    rss0, flt0 = d.proc_numbers()
    log(f"  RSS {rss0 / 1024:.1f} MiB; now {args.requests} requests cycling through {len(mix)} resolutions")
    samples = []

    def sampler(stop):
        while not stop.wait(1.0):
            rss, _ = d.proc_numbers()
            samples.append(rss)
            log(f"  ... RSS {rss / 1024:.1f} MiB")
    stop = threading.Event()
    th = threading.Thread(target=sampler, args=(stop,))
    th.start()
    try:
        wall, lat, f2 = run_clients(d.url, jobs, args.concurrency, args.timeout)
    finally:
        stop.set()
        th.join()
    fails += f2
    rss1, flt1 = d.proc_numbers()
    weights = os.path.getsize(os.path.join(args.model, "model.safetensors"))
    out = {"requests": args.requests, "mix": args.mix, "concurrency": args.concurrency,
           "wall_s": round(wall, 2), "requests_per_s": round(args.requests / wall, 1),
           "rss_start_kib": rss0, "rss_end_kib": rss1, "rss_peak_kib": max(samples + [rss1]),
           "rss_growth_pct": round(100.0 * (rss1 - rss0) / rss0, 3),
           "minor_faults": flt1 - flt0, "faults_per_request": round((flt1 - flt0) / args.requests, 3),
           "weights_bytes": weights}
    log(f"  RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB ({out['rss_growth_pct']:+.2f}%), "
        f"{out['minor_faults']} minor faults ({out['faults_per_request']:.3f} per request)")
    return out, fails


def main(argv=None):
    args = parse_args(argv)
    d = Daemon(args)
    try:
        out, fails = (speed if args.mode == "speed" else memory)(args, d)
    finally:
        rc = d.stop()
    out["daemon"] = d.banner
    out["failures"] = len(fails)
    if fails:
        out["first_failure"] = fails[0]
    if rc != 0:
        out["exit_status"] = rc
    print(json.dumps(out), flush=True)
    return 1 if fails or rc != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
