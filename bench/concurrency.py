#!/usr/bin/python3
"""bench/concurrency.py: throughput of W workers x T threads, against 1 x 1, in one run.

    bench/concurrency.py --model DIR [--model DIR2 ...] [--layouts 1x1,2x1,1x2]
                         [--batch 8] [--resolution N] [--rounds 3] [--reps 3] [--warmup 1]
                         [--binary build/comrope-bench-engine] [--cpus 2] [--target 1.8]

Each layout W x T runs `comrope-bench-engine --workers W --threads T`: W
threads, each with its own engine context of T threads (as the daemon's
workers), all pinned to the same first --cpus CPUs of this process's
affinity; the images/s of all of them together. Every round runs every
layout of every model in turn, so that a slow spell of a shared machine
hits them all; per layout the median over rounds of its images/s and of
its ratio to the first layout in the same round. With --target, the
second layout's median ratio must reach it (exit 1 otherwise): the
engine-context issue asks 2x1 >= 1.8 x 1x1 at batch 8 on 2 cores.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def run_once(a, model, workers, threads, cpus):
    cmd = [a.binary, "--model", model, "--batch", str(a.batch), "--workers", str(workers),
           "--threads", str(threads), "--reps", str(a.reps), "--warmup", str(a.warmup)]
    if a.resolution:
        cmd += ["--resolution", str(a.resolution)]
    if cpus:
        cmd = ["taskset", "-c", ",".join(map(str, cpus))] + cmd
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        sys.exit(f"concurrency: {' '.join(cmd)} failed (exit {p.returncode}):\n{p.stderr.strip()[-2000:]}")
    return json.loads(lines[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--layouts", default="1x1,2x1,1x2", help="W x T, the first is the baseline")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=0, help="default: each model's own")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--cpus", type=int, default=2, help="pin to the first N CPUs of the affinity (0: no pin)")
    ap.add_argument("--binary", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build",
                                                     "comrope-bench-engine"))
    ap.add_argument("--target", type=float, default=0, help="least median ratio of the second layout")
    a = ap.parse_args()
    layouts = [tuple(int(x) for x in l.split("x")) for l in a.layouts.split(",")]
    cpus = sorted(os.sched_getaffinity(0))[:a.cpus] if a.cpus else None
    if cpus and len(cpus) < a.cpus:
        sys.exit(f"concurrency: only {len(cpus)} CPUs in this process's affinity")
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        cpu = "unknown CPU"
    print(f"concurrency: {cpu}, pinned to CPUs {cpus}, batch {a.batch}, "
          f"{a.rounds} rounds of {a.warmup} warm-up + {a.reps} timed forwards per worker", flush=True)
    ips = {(m, l): [] for m in a.model for l in layouts}
    ratios = {(m, l): [] for m in a.model for l in layouts}
    for r in range(a.rounds):
        for m in a.model:
            base = None
            for l in layouts:
                rec = run_once(a, m, l[0], l[1], cpus)
                v = rec["images_per_s"]
                base = v if base is None else base
                ips[(m, l)].append(v)
                ratios[(m, l)].append(v / base)
                print(f"  round {r + 1}/{a.rounds} {os.path.basename(m.rstrip('/'))} {l[0]}x{l[1]} "
                      f"({rec['isa']}, {rec['resolution'][0]}x{rec['resolution'][1]}): {v:.2f} images/s, "
                      f"{v / base:.3f}x", flush=True)
    ok = True
    print("\n| model | workers x threads | images/s (median) | ratio to "
          f"{layouts[0][0]}x{layouts[0][1]} (median of rounds) |")
    print("|---|---|---|---|")
    for m in a.model:
        for l in layouts:
            ratio = statistics.median(ratios[(m, l)])
            print(f"| {os.path.basename(m.rstrip('/'))} | {l[0]} x {l[1]} | "
                  f"{statistics.median(ips[(m, l)]):.2f} | {ratio:.3f} |")
        if a.target and len(layouts) > 1:
            ratio = statistics.median(ratios[(m, layouts[1])])
            if ratio < a.target:
                ok = False
                print(f"FAIL {m}: {layouts[1][0]}x{layouts[1][1]} is {ratio:.3f}x, under {a.target}x")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
