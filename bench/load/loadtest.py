#!/usr/bin/python3
"""Load test of comrope-serve at a resolution mix: capacity, latency steps,
the knee, and a capacity model that predicts replicas for any mix.

One command (starts build/comrope-serve on the bundled model, or --model,
or targets --url), writes OUT/report.json, OUT/steps.csv, OUT/report.png
and, with --fit, OUT/capacity_model.json:

    bench/load/loadtest.py --mix 28:0.6,56:0.3,28x84:0.1 --out bench/out/load
    bench/load/loadtest.py --url http://svc:8080 --mix ... --fit
    bench/load/loadtest.py --predict 28:0.7,112:0.3 --slo-p99 200 --rate 500 \\
        --capacity-model bench/out/load/capacity_model.json

What it does:
 1. capacity: closed loop, --capacity-conns connections back to back for
    --capacity-seconds (after a warm-up) at the mix: answers per second;
 2. steps: open loop (bench/load/openloop.py) at --steps percent of that
    capacity, --step-seconds each: per resolution and overall p50/p90/p99/
    max latency from the scheduled send time, throughput, 503/504/error
    rates, the generator's own lag; one progress line per step;
 3. the knee: the highest step whose throughput is >= 90 % of the offered
    rate, with under 1 % 503/504/errors and p99 within 3x the first step's;
 4. --fit: cost per request at single resolutions (--fit-resolutions) with
    one image per request, and at the first one with --overhead-images per
    request (v2 binary) to split off the per-request overhead; fits
    cost(T) = a + b*T + c*T^2 (T tokens, least squares on relative error);
    predicts the capacity of --validate mixes, measures them and prints the
    error; saves the model with the latency curve of step 2 (p99 x capacity
    vs load), which --predict uses to keep p99 under an SLO.

Every answer is checked (bench/load/kit.py: status, top-k, labels); exit 1
when any request failed, other than by 503 at or past capacity
(--allow-503-below: the percent of capacity from which 503 is allowed).
"""
import argparse
import csv
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import kit  # noqa: E402
import openloop  # noqa: E402
from daemon import Daemon, http_get, metrics  # noqa: E402

DEFAULT_STEPS = "25,50,75,90,100,110,125,150"


def log(msg):
    print(msg, flush=True)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="target this daemon instead of starting one")
    ap.add_argument("--serve", help="comrope-serve binary (default build/comrope-serve)")
    ap.add_argument("--model", help="model directory for the local daemon (default: the bundled model)")
    ap.add_argument("--serve-flags", default="", help="extra flags for the local daemon")
    ap.add_argument("--daemon-cpus", help="run the local daemon under taskset -c CPUS")
    ap.add_argument("--client-cpus", help="pin this generator to CPUS (e.g. the ones the daemon does not use)")
    ap.add_argument("--mix", default="1:0.5,2:0.3,3:0.15,4:0.05",
                    help="resolution mix H[xW]:weight,...; numbers under 8 are multiples of the training side")
    ap.add_argument("--api", default="v1", choices=kit.APIS)
    ap.add_argument("--images", help="folder of JPEG/PNG images (default: the Fashion-MNIST test set)")
    ap.add_argument("--image-count", type=int, default=64)
    ap.add_argument("--capacity", type=float, help="skip the capacity measurement: this many requests/s")
    ap.add_argument("--capacity-conns", type=int, default=32)
    ap.add_argument("--capacity-seconds", type=float, default=5.0)
    ap.add_argument("--warmup-seconds", type=float, default=1.0)
    ap.add_argument("--steps", default=DEFAULT_STEPS, help="offered load, percent of capacity")
    ap.add_argument("--step-seconds", type=float, default=10.0)
    ap.add_argument("--arrival", default="constant", choices=("constant", "poisson"))
    ap.add_argument("--timeout-s", type=float, default=60.0, help="client timeout per request")
    ap.add_argument("--engine", default="auto", choices=("auto", "c", "python"),
                    help="sender: c (build/comrope-loadgen), python (asyncio), auto (c when built)")
    ap.add_argument("--allow-503-below", type=float, default=100.0,
                    help="percent of capacity under which a 503 counts as a failure (default 100)")
    ap.add_argument("--fit", action="store_true", help="fit the capacity model and validate it")
    ap.add_argument("--fit-resolutions", default="1,1.5,2,3,4",
                    help="sides of the fit's square images; numbers under 8 are multiples of the training side")
    ap.add_argument("--overhead-images", type=int, default=8)
    ap.add_argument("--reference", default="2",
                    help="side of the reference measured just before each fit/held-out measurement (numbers "
                         "under 8: multiples of the training side); costs are taken relative to it")
    ap.add_argument("--no-pairs", dest="pairs", action="store_false",
                    help="no reference measurements (half the time; slow drift of a shared machine then "
                         "shows in the fit)")
    ap.add_argument("--cost", default="auto", choices=("auto", "cpu", "wall"),
                    help="what the fit measures per request: the daemon's CPU time (process_cpu_seconds_total; "
                         "auto when /metrics answers) or wall time at saturation (1 / capacity)")
    ap.add_argument("--replica-cpus", type=float,
                    help="CPUs of one replica, to turn CPU costs into requests/s (default: the local daemon's "
                         "--daemon-cpus or this machine's CPUs; with --url: 1, i.e. per CPU)")
    ap.add_argument("--validate", default="1.25:0.5,2.5:0.5;1:0.5,1x3:0.3,3.5:0.2",
                    help="held-out mixes, ';'-separated (numbers under 8: multiples of the training side)")
    ap.add_argument("--repeat-point", action="store_true", help="measure the first fit point again at the end")
    ap.add_argument("--predict", help="MIX: print the replicas it needs (with --slo-p99, --rate)")
    ap.add_argument("--slo-p99", type=float, help="p99 latency target, ms")
    ap.add_argument("--rate", type=float, help="requests/s the mix must sustain")
    ap.add_argument("--images-per-request", type=int, default=1, help="--predict: images per request")
    ap.add_argument("--capacity-model", help="--predict: capacity_model.json of a --fit run")
    ap.add_argument("--replot", metavar="REPORT_JSON", help="only redraw report.png next to REPORT_JSON")
    ap.add_argument("--out", default=os.path.join(kit.ROOT, "bench", "out", "load"))
    ap.add_argument("--title", default="")
    return ap.parse_args(argv)


# --------------------------------------------------------------------------
# resolutions relative to the model
# --------------------------------------------------------------------------

def scale_side(x, train, patch):
    """A side: numbers under 8 are multiples of the training side, rounded to the patch."""
    v = float(x)
    side = v * train if v < 8 else v
    return max(patch, int(math.floor(side / patch + 0.5)) * patch)


def model_mix(text, train, patch):
    """A mix whose sides may be multiples ('1.5:0.3,1x3:0.2') -> kit mix."""
    out = []
    for item in text.split(","):
        res, _, weight = item.strip().partition(":")
        sides = res.lower().split("x")
        h = scale_side(sides[0], train, patch)
        w = scale_side(sides[1], train, patch) if len(sides) > 1 else h
        out.append(f"{h}x{w}:{weight or 1}")
    return kit.parse_mix(",".join(out))


# --------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------

class Target:
    def __init__(self, url, images, api):
        self.url = url
        self.model = kit.get_model(lambda p: http_get(url + p))
        self.labels = self.model["labels"]
        self.images = images
        self.api = api

    def requests(self, mix, api=None, n_images=1, per_res=16, timeout_ms=None):
        api = api or self.api
        return [[kit.build_request(api, self.model["name"], [self.images[(j * n_images + k) % len(self.images)]
                                                             for k in range(n_images)],
                                   h, w, n_images, timeout_ms) for j in range(per_res)]
                for h, w, _ in mix]

    def names(self, mix):
        return [kit.res_name(h, w) for h, w, _ in mix]

    def cpu_seconds(self):
        """The daemon's process_cpu_seconds_total, or None (no /metrics here)."""
        try:
            return metrics(self.url).get("process_cpu_seconds_total")
        except OSError:
            return None


def capacity(target, mix, args, api=None, n_images=1, label=""):
    """Closed-loop saturation -> dict (requests/s, images/s, codes)."""
    gen = openloop.make_generator(target.url, target.requests(mix, api, n_images), target.labels,
                                  timeout_s=args.timeout_s, engine=getattr(args, "engine", "auto"))
    cpu0, t0 = target.cpu_seconds(), time.monotonic()
    recs, secs = gen.saturate(args.capacity_conns, args.capacity_seconds, args.warmup_seconds,
                              kit.MixSampler(mix, seed=7))
    cpu1, wall = target.cpu_seconds(), time.monotonic() - t0
    s = openloop.summarize(recs, target.names(mix), secs)
    rps, rps_from = s["throughput_rps"], "window"
    allr = [r for r in getattr(gen, "last_all", []) if r.status == 200 and r.done is not None]
    if s["ok"] < 20 and len(allr) >= 3:
        # too slow a daemon for the window (a big model, a sanitizer build):
        # the rate between the first and the last answer of the whole run
        done = sorted(r.done for r in allr)
        rps, rps_from = (len(done) - 1) / (done[-1] - done[0]), "all answers"
    out = {"mix": kit.mix_name(mix), "api": api or target.api, "images_per_request": n_images,
           "rps": rps, "rps_from": rps_from, "images_per_s": rps * n_images,
           "p50_ms": s["p50_ms"], "errors": s["errors"], "codes": s["codes"]}
    if cpu0 is not None and cpu1 is not None and gen.answered_total:
        # the daemon's CPU time per request: what one request costs whatever
        # share of the CPUs the daemon got (on a shared machine its wall-clock
        # throughput follows the neighbours; its CPU time per request much less)
        out["cpu_s_per_request"] = (cpu1 - cpu0) / gen.answered_total
        out["cpus_used"] = (cpu1 - cpu0) / wall
        # the mix actually served (few requests of a slow model drift from the weights)
        n = sum(gen.answered_by_res.values())
        out["served_mix"] = [[h, w, gen.answered_by_res.get(i, 0) / n] for i, (h, w, _) in enumerate(mix)]
        out["answered_total"] = gen.answered_total
    if s.get("first_bad"):
        out["first_bad"] = s["first_bad"]
    cpu = (f", {1e3 * out['cpu_s_per_request']:.3f} CPU-ms/request, daemon used {out['cpus_used']:.2f} CPUs"
           if "cpu_s_per_request" in out else "")
    log(f"  capacity {label or out['mix']} ({out['api']}, {n_images} image/request): "
        f"{out['rps']:.1f} req/s, {out['images_per_s']:.1f} images/s{cpu}, errors {out['errors']}")
    return out


def run_steps(target, mix, cap, args):
    names = target.names(mix)
    fractions = [float(x) for x in args.steps.split(",")]
    gen = openloop.make_generator(target.url, target.requests(mix), target.labels, timeout_s=args.timeout_s,
                                  engine=args.engine)
    steps = []
    for i, pct in enumerate(fractions):
        rate = cap * pct / 100.0
        t0 = time.monotonic()
        recs = gen.open_loop(rate, args.step_seconds, kit.MixSampler(mix, seed=100 + i),
                             arrival=args.arrival, seed=200 + i)
        s = openloop.summarize(recs, names, args.step_seconds)
        s.update({"percent": pct, "offered_rps": rate, "wall_s": time.monotonic() - t0})
        steps.append(s)

        def f(v):
            return "-" if v is None else f"{v:.1f}"
        log(f"[{i + 1}/{len(fractions)}] offered {rate:.1f} req/s ({pct:g}%): {s['throughput_rps']:.1f} ok/s, "
            f"p50 {f(s['p50_ms'])} p90 {f(s['p90_ms'])} p99 {f(s['p99_ms'])} max {f(s['max_ms'])} ms, "
            f"503 {100 * s['rate_503']:.1f}% 504 {100 * s['rate_504']:.1f}% errors {s['errors']}, "
            f"generator lag p99 {f(s['lag_p99_ms'])} ms")
        if s.get("first_bad"):
            log(f"      first wrong answer: {s['first_bad']}")
    return steps


def find_knee(steps):
    """-> (index of the knee step or None, why the next step is past it)."""
    if not steps or steps[0]["p99_ms"] is None:
        return None, "no answers at the first step"
    base = steps[0]["p99_ms"]
    knee, why = None, "every step held"
    for i, s in enumerate(steps):
        bad = []
        if s["throughput_rps"] < 0.9 * s["offered_rps"]:
            bad.append(f"throughput {s['throughput_rps']:.1f} < 90% of {s['offered_rps']:.1f}")
        if s["rate_503"] + s["rate_504"] + s["error_rate"] > 0.01:
            bad.append("over 1% 503/504/errors")
        if s["p99_ms"] is None or s["p99_ms"] > 3 * base:
            bad.append("no answer" if s["p99_ms"] is None else f"p99 {s['p99_ms']:.1f} ms > 3x {base:.1f}")
        if bad:
            why = f"step {s['percent']:g}%: " + "; ".join(bad)
            break
        knee = i
    return knee, why


# --------------------------------------------------------------------------
# capacity model
# --------------------------------------------------------------------------

def fit_cost(points):
    """points: [(T, seconds per request)] -> (a, b, c) of a + b*T + c*T^2,
    least squares on the relative error (costs span two orders of magnitude)."""
    import numpy as np
    T = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    A = np.stack([np.ones_like(T), T, T * T], axis=1) / y[:, None]
    coef, *_ = np.linalg.lstsq(A, np.ones_like(T), rcond=None)
    return [float(c) for c in coef]


def request_cost(cm, T, n_images=1):
    """Cost of one request of n images at T tokens: CPU-seconds of the daemon
    (basis "cpu") or seconds of one replica (basis "wall")."""
    a, b, c = cm["a"], cm["b"], cm["c"]
    return cm["overhead_s"] + n_images * (a + b * T + c * T * T)


def predict_cost(cm, mix, n_images=1):
    """Mean cost of a request of the mix (weights = request shares)."""
    patch = cm["patch"]
    return sum(p * request_cost(cm, kit.tokens(h, w, patch), n_images) for h, w, p in mix)


def predict_capacity(cm, mix, n_images=1, replica_cpus=None):
    """Requests/s one replica holds at the mix: with CPU costs, the replica's
    CPUs (its CPU limit) over the mean CPU time of a request."""
    scale = (replica_cpus or cm.get("replica_cpus") or 1.0) if cm.get("basis") == "cpu" else 1.0
    return scale / predict_cost(cm, mix, n_images)


def fit_model(target, args, patch, train, replica_cpus):
    sides = [scale_side(x, train, patch) for x in args.fit_resolutions.split(",")]
    sides = sorted(set(sides))
    basis = args.cost
    if basis == "auto":
        basis = "cpu" if target.cpu_seconds() is not None else "wall"
    ref_side = scale_side(args.reference, train, patch)
    ref_mix = [(ref_side, ref_side, 1.0)]
    log(f"fit: single resolutions {sides} ({args.api}), overhead at {sides[0]} with "
        f"1 and {args.overhead_images} images per request (v2bin); cost basis: {basis}; "
        + (f"each measurement paired with {ref_side}x{ref_side} just before it" if args.pairs else "unpaired"))

    def cost(c):
        return c["cpu_s_per_request"] if basis == "cpu" else 1.0 / c["rps"]

    refs = []

    def measure(mix, label, api=None, n_images=1):
        """-> (capacity dict, cost relative to the reference measured just before)."""
        ref = capacity(target, ref_mix, args, label=f"{ref_side}x{ref_side} (reference)") if args.pairs else None
        c = capacity(target, mix, args, api=api, n_images=n_images, label=label)
        if ref is None:
            return c, cost(c)
        refs.append(cost(ref))
        c["reference_cost_s"] = cost(ref)
        return c, cost(c) / cost(ref)

    raw = []
    for side in sides:
        c, rel = measure([(side, side, 1.0)], f"{side}x{side}")
        raw.append((side, c, rel))
    one, rel1 = measure([(sides[0], sides[0], 1.0)], f"{sides[0]} v2bin x1", api="v2bin")
    many, reln = measure([(sides[0], sides[0], 1.0)], f"{sides[0]} v2bin x{args.overhead_images}", api="v2bin",
                         n_images=args.overhead_images)
    vals = []
    for text in args.validate.split(";"):
        mix = model_mix(text, train, patch)
        c, rel = measure(mix, kit.mix_name(mix))
        vals.append((mix, c, rel))
    # relative costs back to absolute ones at the references' mean machine state
    unit_cost = sum(refs) / len(refs) if refs else 1.0
    points = [{"side": side, "tokens": kit.tokens(side, side, patch), "rps": c["rps"], "cost_s": rel * unit_cost,
               "raw_cost_s": cost(c), "cpus_used": c.get("cpus_used"), "errors": c["errors"]}
              for side, c, rel in raw]
    n = args.overhead_images
    c1, cn = rel1 * unit_cost, reln * unit_cost
    overhead = max(0.0, (n * c1 - cn) / (n - 1))
    a1, b, c = fit_cost([(p["tokens"], p["cost_s"]) for p in points])
    cm = {"a": a1 - overhead, "b": b, "c": c, "overhead_s": overhead, "overhead_api": "v2bin",
          "basis": basis, "replica_cpus": replica_cpus, "paired": bool(args.pairs),
          "fit_api": args.api, "patch": patch, "training_resolution": train, "points": points,
          "overhead_points": {"one": one, "many": many}}
    if refs:
        cm["reference"] = {"side": ref_side, "n": len(refs), "mean_cost_s": unit_cost, "min_cost_s": min(refs),
                           "max_cost_s": max(refs), "spread_pct": 100.0 * (max(refs) - min(refs)) / unit_cost}
    for p in points:
        p["fit_cost_s"] = request_cost(cm, p["tokens"])
        p["fit_error_pct"] = 100.0 * (p["fit_cost_s"] - p["cost_s"]) / p["cost_s"]
    unit = "CPU-" if basis == "cpu" else ""
    log(f"fit: cost(T) = {1e6 * cm['a']:.1f} {unit}us + {1e6 * b:.3f} {unit}us*T + {1e9 * c:.3f} {unit}ns*T^2 "
        f"per image, + {1e6 * overhead:.1f} {unit}us per request; worst fit residual "
        f"{max(abs(p['fit_error_pct']) for p in points):.1f}%")
    if refs:
        r = cm["reference"]
        log(f"  noise: the {r['n']} reference measurements ({ref_side}x{ref_side}) ranged "
            f"{1e3 * r['min_cost_s']:.3f}-{1e3 * r['max_cost_s']:.3f} {unit}ms/request "
            f"({r['spread_pct']:.0f}% of their mean)")
    val = []
    for mix, meas, rel in vals:
        # CPU costs: predict the requests that were served (their shares differ
        # from the weights when few were); wall costs: the mix as offered
        served = [tuple(x) for x in meas["served_mix"]] if basis == "cpu" and "served_mix" in meas else mix
        pred_cost = predict_cost(cm, served)
        meas_cost = rel * unit_cost
        # capacity is inversely proportional to the cost: predicted/measured capacity - 1
        err = 100.0 * (meas_cost / pred_cost - 1.0)
        v = {"mix": kit.mix_name(mix), "served_mix": kit.mix_name(served), "answered": meas.get("answered_total"),
             "predicted_cost_s": pred_cost, "measured_cost_s": meas_cost,
             "raw_cost_s": cost(meas), "predicted_rps": predict_capacity(cm, mix), "measured_rps": meas["rps"],
             "capacity_error_pct": err, "errors": meas["errors"]}
        val.append(v)
        log(f"  held-out {kit.mix_name(mix)} (served {kit.mix_name(served)}, {meas.get('answered_total')} requests): "
            f"predicted {1e3 * pred_cost:.3f} {unit}ms/request, measured "
            f"{1e3 * meas_cost:.3f}: capacity error {err:+.1f}% (predicted {v['predicted_rps']:.1f} req/s per "
            f"replica; measured {meas['rps']:.1f} req/s{' on this shared machine' if basis == 'cpu' else ''})")
    cm["validation"] = val
    if args.repeat_point:
        again, rel = measure([(sides[0], sides[0], 1.0)], f"{sides[0]}x{sides[0]} again")
        first = points[0]["cost_s"]
        cm["repeat"] = {"side": sides[0], "first_rps": points[0]["rps"], "again_rps": again["rps"],
                        "rps_diff_pct": 100.0 * (again["rps"] - points[0]["rps"]) / points[0]["rps"],
                        "first_cost_s": first, "again_cost_s": rel * unit_cost,
                        "cost_diff_pct": 100.0 * (rel * unit_cost - first) / first}
        log(f"  repeat {sides[0]}x{sides[0]}: {points[0]['rps']:.1f} then {again['rps']:.1f} req/s "
            f"({cm['repeat']['rps_diff_pct']:+.1f}%); cost {cm['repeat']['cost_diff_pct']:+.1f}%")
    return cm


def latency_curve(steps, cap):
    """[(load fraction, p99 ms)] of the steps answered without rejections (under
    1 % 503/504/errors; a step that fell behind shows it in its p99):
    --predict scales the p99s to another mix by the ratio of the mixes' mean
    request costs."""
    out = []
    for s in steps:
        if s["p99_ms"] is None or s["rate_503"] + s["rate_504"] + s["error_rate"] > 0.01:
            continue
        out.append([s["offered_rps"] / cap, s["p99_ms"]])
    return out


def predict(cm, mix, slo_ms, rate, n_images=1):
    """-> dict: capacity per replica, the load fraction that keeps p99 under
    the SLO (the profile's measured curve, its p99s scaled by the mix's mean
    cost over the profile's), replicas."""
    cap = predict_capacity(cm, mix, n_images)
    curve = sorted(cm.get("latency_curve") or [])
    scale = predict_cost(cm, mix, n_images) / cm["profile"]["predicted_cost_s"] if curve else 1.0
    rho = None
    for frac, p99 in curve:
        if p99 * scale <= slo_ms:
            rho = frac
    out = {"mix": kit.mix_name(mix), "images_per_request": n_images, "capacity_rps": cap,
           "slo_p99_ms": slo_ms, "rate_rps": rate}
    if rho is None:
        out["replicas"] = None
        out["why"] = ("no measured load level keeps p99 under the SLO for this mix"
                      if curve else "the capacity model has no latency curve (fit it with the steps)")
        return out
    out["load_fraction"] = rho
    out["usable_rps"] = cap * rho
    out["replicas"] = max(1, math.ceil(rate / (cap * rho))) if rate else None
    return out


def print_prediction(p):
    if p["replicas"] is None:
        log(f"{p['mix']}: capacity {p['capacity_rps']:.1f} req/s per replica; {p['why']}")
        return
    log(f"{p['mix']} ({p['images_per_request']} image/request): capacity {p['capacity_rps']:.1f} req/s per "
        f"replica; p99 <= {p['slo_p99_ms']:g} ms up to {100 * p['load_fraction']:.0f}% load "
        f"({p['usable_rps']:.1f} req/s); {p['rate_rps']:g} req/s needs {p['replicas']} replica(s)")


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------

def write_csv(path, steps, names):
    cols = ["percent", "offered_rps", "resolution", "offered", "ok", "throughput_rps", "p50_ms", "p90_ms",
            "p99_ms", "max_ms", "rate_503", "rate_504", "error_rate", "errors", "lag_p99_ms"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for s in steps:
            for name in ["all"] + names:
                b = s if name == "all" else s["per_resolution"][name]
                row = {"percent": s["percent"], "offered_rps": s["offered_rps"], "resolution": name,
                       "lag_p99_ms": s["lag_p99_ms"]}
                row.update({k: b.get(k) for k in cols if k in b})
                w.writerow(["" if row.get(c) is None else row.get(c) for c in cols])


def plot(path, report):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps, names, cap = report["steps"], report["resolutions"], report["capacity_rps"]
    x = [s["offered_rps"] for s in steps]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(["all"] + names):
        col = colors[i % len(colors)]
        blk = [s if name == "all" else s["per_resolution"][name] for s in steps]
        lw = 2.5 if name == "all" else 1.5
        for q, style in (("p99_ms", "-"), ("p50_ms", ":")):
            ys = [b[q] if b[q] is not None else float("nan") for b in blk]
            ax1.plot(x, ys, style, color=col, lw=lw, marker="o" if q == "p99_ms" else None, ms=3,
                     label=f"{name} {q[:3]}")
    lag = [s["lag_p99_ms"] if s.get("lag_p99_ms") else float("nan") for s in steps]
    ax1.plot(x, lag, "--", color="grey", lw=1, label="generator lag p99")
    ax1.set_yscale("log")
    ax1.set_xlabel("offered requests/s (open loop)")
    ax1.set_ylabel("latency from scheduled send, ms (log)")
    ax1.set_title("latency vs offered load (solid p99, dotted p50)")
    ax2.plot(x, [s["throughput_rps"] for s in steps], "o-", label="answered 200/s")
    ax2.plot(x, x, "--", color="grey", label="offered")
    ax2.set_xlabel("offered requests/s")
    ax2.set_ylabel("requests/s")
    ax2b = ax2.twinx()
    ax2b.plot(x, [100 * (s["rate_503"] + s["rate_504"]) for s in steps], "s:", color="tab:red",
              label="503+504 %")
    ax2b.set_ylabel("503 + 504, % of offered", color="tab:red")
    ax2b.set_ylim(0, max([5.0] + [110 * (s["rate_503"] + s["rate_504"]) for s in steps]))
    ax2.set_title("throughput vs offered")
    for ax in (ax1, ax2):
        ax.axvline(cap, color="black", lw=0.8)
        if report.get("knee_rps"):
            ax.axvline(report["knee_rps"], color="tab:green", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7, ncol=2)
    h1, l1 = ax2.get_legend_handles_labels()
    h2, l2 = ax2b.get_legend_handles_labels()
    ax2.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    knee = f", knee {report['knee_rps']:.0f} req/s (green)" if report.get("knee_rps") else ""
    fig.suptitle(f"{report['title']}: mix {report['mix']}, capacity {cap:.0f} req/s (black){knee}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        with open(args.replot) as f:
            report = json.load(f)
        out = os.path.join(os.path.dirname(args.replot), "report.png")
        plot(out, report)
        log(f"wrote {out}")
        return 0
    if args.predict:
        if not (args.capacity_model and args.slo_p99 and args.rate):
            raise SystemExit("--predict needs --capacity-model, --slo-p99 and --rate")
        with open(args.capacity_model) as f:
            cm = json.load(f)
        mix = model_mix(args.predict, cm["training_resolution"], cm["patch"])
        if args.replica_cpus:
            cm["replica_cpus"] = args.replica_cpus
        p = predict(cm, mix, args.slo_p99, args.rate, args.images_per_request)
        print_prediction(p)
        print(json.dumps(p))
        return 0 if p["replicas"] else 1
    if args.client_cpus:
        os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})
    os.makedirs(args.out, exist_ok=True)
    daemon = None
    if args.url:
        url = args.url.rstrip("/")
    else:
        daemon = Daemon(args.serve, args.model, args.daemon_cpus, args.serve_flags.split())
        url = daemon.url
        for ln in daemon.banner:
            log(ln)
    try:
        images = kit.load_images(args.images, args.image_count)
        target = Target(url, images, args.api)
        m = target.model
        patch, train = m["patch_size"], m["training_resolution"]
        mix = model_mix(args.mix, train, patch)
        names = target.names(mix)
        log(f"target {url}: model {m['name']} ({m.get('pe_type')}, {train}x{train}, patch {patch}); "
            f"mix {kit.mix_name(mix)}; api {args.api}; {len(images)} images")
        report = {"title": args.title or m["name"], "url": url,
                  "engine": type(openloop.make_generator(url, [], [], engine=args.engine)).__name__, "model": m["name"], "mix": kit.mix_name(mix),
                  "resolutions": names, "tokens": {n: kit.tokens(h, w, patch) for n, (h, w, _) in zip(names, mix)},
                  "api": args.api, "arrival": args.arrival, "step_seconds": args.step_seconds,
                  "daemon": daemon.banner if daemon else None, "daemon_cpus": args.daemon_cpus,
                  "client_cpus": args.client_cpus, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if args.capacity:
            report["capacity_rps"] = args.capacity
        else:
            c = capacity(target, mix, args)
            report["capacity"] = c
            report["capacity_rps"] = c["rps"]
        cap = report["capacity_rps"]
        if not cap > 0:
            raise SystemExit("no capacity measured (no answer)")
        report["steps"] = run_steps(target, mix, cap, args)
        knee, why = find_knee(report["steps"])
        report["knee_rps"] = report["steps"][knee]["offered_rps"] if knee is not None else None
        report["knee_percent"] = report["steps"][knee]["percent"] if knee is not None else None
        report["knee_why"] = why
        log(f"capacity {cap:.1f} req/s; knee "
            + (f"{report['knee_rps']:.1f} req/s ({report['knee_percent']:g}%)" if knee is not None else "none")
            + f"; past it: {why}")
        if args.fit:
            cpus = args.replica_cpus
            if not cpus:
                if args.url:
                    cpus = 1.0
                elif args.daemon_cpus:
                    cpus = float(len(args.daemon_cpus.split(",")))  # a list like 0 or 0,1
                else:
                    cpus = float(len(os.sched_getaffinity(0)))
            cm = fit_model(target, args, patch, train, cpus)
            cm["latency_curve"] = latency_curve(report["steps"], cap)
            cm["profile"] = {"mix": report["mix"], "capacity_rps": cap,
                             "predicted_cost_s": predict_cost(cm, mix), "predicted_rps": predict_capacity(cm, mix)}
            report["capacity_model"] = cm
            with open(os.path.join(args.out, "capacity_model.json"), "w") as f:
                json.dump(cm, f, indent=1)
        report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with open(os.path.join(args.out, "report.json"), "w") as f:
            json.dump(report, f, indent=1)
        write_csv(os.path.join(args.out, "steps.csv"), report["steps"], names)
        plot(os.path.join(args.out, "report.png"), report)
        log(f"wrote {args.out}/report.json, steps.csv, report.png" + (", capacity_model.json" if args.fit else ""))
    finally:
        if daemon:
            rc = daemon.stop()
            if rc != 0:
                log(f"comrope-serve exited with status {rc}; log: {daemon.log_path}")
    failures = []
    for s in report["steps"]:
        allowed = ("503",) if s["percent"] >= args.allow_503_below else ()
        bad = {k: v for k, v in s["codes"].items() if k != "200" and k not in allowed}
        if bad or s["bad"]:
            failures.append(f"step {s['percent']:g}%: codes {bad}, wrong answers {s['bad']}")
    for c in ([report.get("capacity")] if report.get("capacity") else []):
        if c["errors"]:
            failures.append(f"capacity run: {c['errors']} errors ({c['codes']})")
    if failures:
        for f in failures:
            log("FAIL " + f)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
