#!/usr/bin/python3
"""bench/ab.py: is engine build B faster than build A? Interleaved, round by round.

    bench/ab.py --model DIR A B [C ...] [--resolution 224] [--batch 1] [--threads 2]
                [--rounds 6] [--reps 3] [--warmup 1] [--precision fp32|bf16]
                [--gemm-backend auto|own|onednn|amx] [--env A:VAR=VALUE ...]
                [--arg A:ARG ...]

A, B, ...: comrope-bench-engine binaries (copy build-bench/comrope-bench-engine
aside before rebuilding), or the same binary twice with different --env or
--arg (e.g. --arg "1:--amx-shape 2x2": our AMX kernel's other block).
Each round runs every binary once, in turn, pinned to the same CPUs (the
first --threads of this process's affinity), so that a slow spell of a
shared VM (these drift by ±15% over a minute) hits all of them. Prints each
run as it finishes, then per binary the best and the median of its runs'
fastest forward (images/s), and the median over rounds of its ratio to the
first binary. A change of a few percent needs 6 rounds or more to show; one
that does not show in the ratios' median is noise.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def run_once(binary, env_extra, args_extra, a, cpus):
    cmd = [binary, "--model", a.model, "--resolution", str(a.resolution), "--batch", str(a.batch),
           "--threads", str(a.threads), "--reps", str(a.reps), "--warmup", str(a.warmup),
           "--precision", a.precision]
    if a.gemm_backend:
        cmd += ["--gemm-backend", a.gemm_backend]
    cmd += args_extra
    if cpus:
        cmd = ["taskset", "-c", ",".join(map(str, cpus))] + cmd
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", **env_extra)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        sys.exit(f"ab: {' '.join(cmd)} failed (exit {p.returncode}):\n{p.stderr.strip()[-2000:]}")
    rec = json.loads(lines[-1])
    return a.batch / rec["min_s"]  # the fastest forward: the one the host disturbed least


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", nargs="+", help="comrope-bench-engine binaries, the first is the baseline")
    ap.add_argument("--model", required=True)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="the engines' GEMM precision")
    ap.add_argument("--gemm-backend", choices=("auto", "own", "onednn", "amx"),
                    help="who runs the bf16 GEMMs (default: the engine's, auto)")
    ap.add_argument("--env", action="append", default=[],
                    help="INDEX:VAR=VALUE, an environment variable for the INDEX-th binary (0-based)")
    ap.add_argument("--arg", action="append", default=[],
                    help="INDEX:ARG, engine arguments for the INDEX-th binary (split at spaces)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    a = ap.parse_args()
    if len(a.binaries) < 2:
        sys.exit("ab: give at least two binaries (the same one twice with --env is fine)")
    envs = [{} for _ in a.binaries]
    for e in a.env:
        try:
            i, kv = e.split(":", 1)
            k, v = kv.split("=", 1)
            envs[int(i)][k] = v
        except (ValueError, IndexError):
            sys.exit(f"ab: --env {e!r}: expected INDEX:VAR=VALUE with INDEX < {len(a.binaries)}")
    extra = [[] for _ in a.binaries]
    for e in a.arg:
        try:
            i, words = e.split(":", 1)
            extra[int(i)] += words.split()
        except (ValueError, IndexError):
            sys.exit(f"ab: --arg {e!r}: expected INDEX:ARG with INDEX < {len(a.binaries)}")
    cpus = None if a.no_pin else sorted(os.sched_getaffinity(0))[:a.threads]
    labels = [f"[{i}] {b}" + "".join(f" {k}={v}" for k, v in envs[i].items()) + "".join(f" {w}" for w in extra[i])
              for i, b in enumerate(a.binaries)]
    runs = [[] for _ in a.binaries]
    for r in range(a.rounds):
        for i, b in enumerate(a.binaries):
            v = run_once(b, envs[i], extra[i], a, cpus)
            runs[i].append(v)
            print(f"round {r + 1}/{a.rounds}  {labels[i]}: {v:.3f} images/s", flush=True)
    print(f"\n{a.model} {a.resolution}x{a.resolution} batch {a.batch}, {a.threads} thread(s), "
          f"{a.rounds} rounds of {a.warmup} warm-up + {a.reps} runs; images/s of each run's fastest forward")
    for i, lab in enumerate(labels):
        ratios = [x / y for x, y in zip(runs[i], runs[0])]
        print(f"  {lab}\n      best {max(runs[i]):.3f}  median {statistics.median(runs[i]):.3f}  "
              f"ratio to [0], median of rounds {statistics.median(ratios):.3f} "
              f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})")


if __name__ == "__main__":
    main()
