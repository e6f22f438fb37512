#!/usr/bin/python3
"""bench/profile.py: where a forward pass spends its time, by stage.

    bench/profile.py --model DIR [--resolution 224] [--batch 1] [--threads 2] [--precision fp32|bf16]
                     [--gemm-backend auto|own|onednn|amx] [--amx-shape 1x3|2x2] [--attention-gemm]
                     [--reps 20]
                     [--engine build-bench/comrope-bench-engine] [--out bench/out/profile]

Samples comrope-bench-engine with `perf record -e cpu-clock` (a software
clock: works in VMs without hardware counters), skipping the model load and
the warm-up (perf's --delay, from a first timed run), then sorts the samples
of every thread into the forward's stages: the GEMM micro-kernel, the GEMM's
packing and loop, attention's two products, its softmax, its copies of K and
V, GELU, LayerNorm (with the residual adds), the rotation (RoPE / ComRoPE),
the thread pool, the kernel (page faults, scheduling), the rest. Prints a
table (share of samples, ms per forward = share x median forward time x
threads), writes OUT/profile.json and OUT/profile.png. For the two stages
that are products (the GEMM micro-kernel; attention's QK^T and PV) it also
gives their rate, useful GFLOP (from the checkpoint's config.json) per CPU
second, against one core's fp32 FMA peak measured by comrope-fma-peak (built
next to the engine) right before the sampling: how far each is from the
ceiling. With --precision bf16 the GEMM's rate is set against the bf16
dot-product peak (comrope-fma-peak --op bf16) instead, or with
--gemm-backend amx against the AMX tiles' peak (--op amx); attention's
against the bf16 peak on AMD, where a bf16 model's attention runs in bf16,
and the FMA peak elsewhere (engine/dispatch.h, bf16_attention_pays).

Needs `perf` (Debian's linux-perf; scripts/install-deps.sh bench) and the
engine built with symbols (the project's default RelWithDebInfo flags).
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

from flops import vit_gflop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (stage, regex on the symbol), first match wins; [k] marks kernel symbols.
STAGES = [
    ("GEMM micro-kernel", r"^kernel_(avx512|avx2|generic|bf16|amx|amx22)$"),
    ("GEMM packing + loop",
     r"^(gemm_tiles|gemm_part|gemm_forward|pack_part|pack_rows_.*|pack6_.*|pack8_.*|pairs16_bf16|amx_enter|amx_leave|gemm_pack_bf16_act)$"),
    ("attention QK^T + PV", r"^(attn_qk_.*|attn_pv_.*|sgemm_.*|.*_sgemm.*)$"),
    ("attention softmax", r"^(softmax_.*|exp256|exp512)$"),
    ("attention copies (K^T, V)",
     r"^(attention_head_.*|attention_copy_kv|attention_forward|attention_part|pairs_bf16.*)$"),
    ("GELU (activation)", r"^(activation_.*|erf.*|gelu.*)$"),
    ("LayerNorm + residual", r"^(layernorm_.*|norm_part|residual_norm)$"),
    ("rotation (RoPE / ComRoPE)", r"^(rotation_apply|rotate_pairs.*)$"),
    ("patch embed, APE, head", r"^(im2col|vit_add_ape|vit_forward_ragged)$"),
    ("thread pool", r"^(spin_until|worker|parallel_run|now_ns|__GI___clock_gettime|clock_gettime|__vdso_clock_gettime)$"),
    ("kernel: faults, scheduling", r"^\[k\]"),
]


def log(msg):
    print(msg, flush=True)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint directory")
    ap.add_argument("--resolution", default="224")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="the engine's GEMM precision; bf16's product rates are set against one "
                         "core's vdpbf16ps peak (comrope-fma-peak --op bf16)")
    ap.add_argument("--gemm-backend", choices=("auto", "own", "onednn", "amx"),
                    help="who runs the bf16 GEMMs (default: the engine's, auto); amx: the GEMM's rate "
                         "against the AMX peak (comrope-fma-peak --op amx)")
    ap.add_argument("--amx-shape", choices=("1x3", "2x2"),
                    help="with --gemm-backend amx: our AMX kernel's block (default: the engine's)")
    ap.add_argument("--attention-gemm", action="store_true",
                    help="bf16 attention as two GEMMs on the bf16 GEMM kernel (the tiles with --gemm-backend "
                         "amx); its products then count under the GEMM micro-kernel, its packing under "
                         "the GEMM's packing")
    ap.add_argument("--reps", type=int, default=20, help="timed forwards under perf (default 20)")
    ap.add_argument("--engine", default=os.path.join(ROOT, "build-bench", "comrope-bench-engine"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "profile"))
    return ap.parse_args(argv)


def engine_cmd(a, reps, warmup):
    cmd = [a.engine, "--model", a.model, "--resolution", a.resolution, "--batch", str(a.batch),
           "--threads", str(a.threads), "--reps", str(reps), "--warmup", str(warmup),
           "--precision", a.precision]
    return (cmd + (["--gemm-backend", a.gemm_backend] if a.gemm_backend else [])
            + (["--amx-shape", a.amx_shape] if a.amx_shape else [])
            + (["--attention-gemm", "1"] if a.attention_gemm else []))


def cpu_is_amd():
    """Whether this CPU is AMD's: there a bf16 model's attention runs in bf16 too."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return any(ln.startswith("vendor_id") and "AuthenticAMD" in ln for ln in f)
    except OSError:
        return False


def product_gflop(model, resolution, batch):
    """Useful GFLOP per forward of (the GEMM micro-kernel's products: patch
    embedding, Q/K/V, output, MLP; attention's QK^T and PV), from config.json
    (bench/flops.py); (None, None) if it cannot be read."""
    h, _, w = resolution.partition("x")
    f = vit_gflop(model, int(h), int(w or h))
    return (batch * f["gemm"], batch * f["attention"]) if f else (None, None)


def core_peak(engine, op="fma"):
    """One core's fp32 FMA (or bf16 dot-product, op="bf16") peak in GFLOP/s
    (comrope-fma-peak next to the engine), or None."""
    tool = os.path.join(os.path.dirname(engine), "comrope-fma-peak")
    if not os.access(tool, os.X_OK):
        return None
    p = subprocess.run([tool, "--threads", "1", "--op", op], capture_output=True, text=True)
    try:
        return json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])["gflops"]
    except (IndexError, ValueError, KeyError):
        return None


def main(argv=None):
    a = parse_args(argv if argv is not None else sys.argv[1:])
    if not os.access(a.engine, os.X_OK):
        sys.exit(f"profile: no engine at {a.engine} (bench/run.sh builds it)")
    if subprocess.run(["perf", "--version"], capture_output=True).returncode:
        sys.exit("profile: perf is missing (scripts/install-deps.sh bench)")
    os.makedirs(a.out, exist_ok=True)

    # 1. how long the load and the warm-up take, to start sampling after them
    log(f"[1/3] timing load + warm-up: {' '.join(engine_cmd(a, 1, 1))}")
    t0 = time.time()
    p = subprocess.run(engine_cmd(a, 1, 1), capture_output=True, text=True)
    if p.returncode:  # e.g. --gemm-backend amx on a CPU without AMX: the engine says why
        sys.exit(f"profile: the engine failed: {p.stderr.strip()[-500:]}")
    wall = time.time() - t0
    reps = [float(x) for x in re.findall(r"rep \d+/\d+: ([0-9.]+) s", p.stderr)]
    load_s = max(0.0, wall - sum(reps))
    delay_ms = int((load_s + reps[0]) * 1000 * 1.2) + 200  # load + one forward, with margin
    log(f"      load {load_s:.2f} s, forward {reps[-1] * 1e3:.1f} ms: sampling starts after {delay_ms} ms")

    peak = core_peak(a.engine)
    log(f"      one core's fp32 FMA peak: {f'{peak:.1f} GFLOP/s' if peak else 'not measured (no comrope-fma-peak)'}")
    bf16_peak = core_peak(a.engine, "bf16") if a.precision == "bf16" else None
    if a.precision == "bf16":
        log(f"      one core's bf16 (vdpbf16ps) peak: "
            f"{f'{bf16_peak:.1f} GFLOP/s' if bf16_peak else 'not measured'}")
    amx_peak = core_peak(a.engine, "amx") if a.gemm_backend == "amx" else None
    if a.gemm_backend == "amx":
        log(f"      one core's AMX (tdpbf16ps) peak: {f'{amx_peak:.1f} GFLOP/s' if amx_peak else 'not measured'}")
    # each product's ceiling and its name: the GEMM's by its backend, attention's
    # bf16 only where a bf16 model's attention runs in bf16 (AMD)
    bf = a.precision == "bf16"
    tops = {"GEMM micro-kernel": (amx_peak, "AMX peak") if a.gemm_backend == "amx"
            else (bf16_peak, "bf16 peak") if bf else (peak, "peak"),
            "attention QK^T + PV": (bf16_peak, "bf16 peak") if bf and cpu_is_amd() else (peak, "peak")}

    # 2. sample warm-up + timed forwards. Enough warm-up forwards to outlast
    # the delay by themselves: with a small model the margin is many
    # forwards, and two warm-ups plus the timed ones ended before sampling
    # began (an empty profile).
    warmup = max(2, math.ceil(delay_ms / 1000 / max(reps[-1], 1e-3)))
    data = os.path.join(a.out, "perf.data")
    cmd = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "1999", "-D", str(delay_ms), "-o", data, "--"] + \
        engine_cmd(a, a.reps, warmup)
    log(f"[2/3] sampling {a.reps} forwards: {' '.join(cmd)}")
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"profile: perf record failed: {p.stderr.strip()[-500:]}")
    res = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])

    # 3. samples per symbol -> stages
    log("[3/3] perf report")
    rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "symbol", "--stdio",
                          "--percent-limit", "0"], capture_output=True, text=True, check=True).stdout
    by_stage, symbols = {}, []
    for line in rep.splitlines():
        m = re.match(r"^\s+([0-9.]+)%\s+\[(.)\]\s+(\S+)", line)
        if not m:
            continue
        pct, kind, sym = float(m.group(1)), m.group(2), m.group(3)
        name = f"[k] {sym}" if kind == "k" else sym
        stage = next((s for s, rx in STAGES if re.search(rx, "[k]" if kind == "k" else sym)), "other")
        by_stage[stage] = by_stage.get(stage, 0.0) + pct
        symbols.append({"symbol": name, "percent": pct, "stage": stage})
    if not by_stage:
        sys.exit(f"profile: perf recorded no samples of the forwards ({data}): raise --reps")
    total = sum(by_stage.values())
    fwd_ms = res["median_s"] * 1e3
    # samples cover every thread: a stage's share x forward time x threads = its CPU-ms per forward
    rows = [{"stage": s, "percent": round(100 * by_stage.get(s, 0.0) / total, 2),
             "cpu_ms_per_forward": round(by_stage.get(s, 0.0) / total * fwd_ms * a.threads, 2)}
            for s in [s for s, _ in STAGES] + ["other"]]
    log("")
    log(f"Where the time goes: {os.path.basename(a.model.rstrip('/'))} {a.resolution} batch {a.batch}, {a.precision}, "
        f"{a.threads} thread(s), kernel {res['kernel']}, median forward {fwd_ms:.1f} ms "
        f"({res['images_per_s']:.2f} img/s) over {a.reps} forwards")
    # the products' rates: useful GFLOP per CPU second of their stage
    gemm_gf, attn_gf = product_gflop(a.model, a.resolution, a.batch)
    for r in rows:
        gf = {"GEMM micro-kernel": gemm_gf, "attention QK^T + PV": attn_gf}.get(r["stage"])
        if gf and r["cpu_ms_per_forward"] > 0:
            r["gflop"] = round(gf, 2)
            r["gflops_per_core"] = round(gf / (r["cpu_ms_per_forward"] / 1e3), 1)
            top = tops[r["stage"]][0]
            if top:
                r["share_of_core_peak"] = round(r["gflops_per_core"] / top, 3)
    log(f"  {'stage':28s} {'share':>7s} {'CPU ms/forward':>15s}  rate (useful GFLOP per CPU second)")
    for r in rows:
        rate = ""
        if "gflops_per_core" in r:
            rate = f"  {r['gflop']:.1f} GFLOP at {r['gflops_per_core']:.1f} GFLOP/s"
            if "share_of_core_peak" in r:
                top, what = tops[r["stage"]]
                rate += f" = {100 * r['share_of_core_peak']:.0f}% of one core's {what} ({top:.1f})"
        log(f"  {r['stage']:28s} {r['percent']:6.1f}% {r['cpu_ms_per_forward']:15.1f}{rate}")
    top_other = [s for s in symbols if s["stage"] == "other"][:6]
    if top_other:
        log("  other: " + ", ".join(f"{s['symbol']} {s['percent']:.1f}%" for s in top_other))
    doc = {"model": a.model, "resolution": a.resolution, "batch": a.batch, "threads": a.threads,
           "precision": a.precision,
           "gemm_backend": a.gemm_backend or "auto",
           "engine": res, "core_peak_gflops": peak, "core_bf16_peak_gflops": bf16_peak,
           "core_amx_peak_gflops": amx_peak,
           "stages": rows, "symbols": symbols[:60]}
    with open(os.path.join(a.out, "profile.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        shown = [r for r in rows if r["percent"] > 0]
        fig, ax = plt.subplots(figsize=(8, 0.4 * len(shown) + 1.2))
        ax.barh([r["stage"] for r in shown][::-1], [r["percent"] for r in shown][::-1], color="tab:blue")
        for i, r in enumerate(shown[::-1]):
            ax.text(r["percent"], i, f" {r['percent']:.1f}%", va="center", fontsize=8)
        ax.set_xlabel("share of CPU samples (%)")
        ax.set_title(f"{os.path.basename(a.model.rstrip('/'))} {a.resolution} b{a.batch} {a.precision}, {a.threads} threads, "
                     f"{res['kernel']}: {fwd_ms:.1f} ms per forward", fontsize=9)
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, "profile.png"), dpi=110)
        plt.close(fig)
        log(f"wrote {os.path.join(a.out, 'profile.json')} and profile.png")
    except ImportError:
        log(f"wrote {os.path.join(a.out, 'profile.json')} (no matplotlib: no picture)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
