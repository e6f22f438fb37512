#!/usr/bin/python3
"""bench/run.py: every comparison of the performance issue, side by side.

Run through bench/run.sh (which installs, builds, then calls this):

    bench/run.sh [--quick] [--threads T] [--reps R] [--warmup W] [--parts LIST] ...

Steps, each printed as it runs ([i/N]):
  1. random checkpoints (tools/make_checkpoint.py, keep_ape: no APE table) for
     comrope-ap, comrope-ld, vanilla-rope and none, cached in OUT/cache;
  2. ONNX exports (tools/export_onnx.py), one per model and resolution, cached;
  3. benchmarks, each one process, all pinned to the same CPUs with the same
     thread count, W warm-up and R timed runs, median and min/max; each
     comparison in --rounds rounds (default 3) that take the systems in turn,
     so that a slow spell of a shared machine hits all of them: a number is
     the median of its rounds' medians, a ratio the median of the rounds'
     ratios (each round's numbers measured minutes apart at most):
       main      engine vs ONNX Runtime vs PyTorch eager: AP and LD, batch 1
                 and 8, every --resolutions (default 224 384)
       sweep     the same three at the other --sweep resolutions (AP, batch 1)
       pe        engine cost of AP / LD vs vanilla RoPE vs none: the four in one
                 process, forward by forward, ratios paired forward by forward
       haswell   engine without and with OPENBLAS_CORETYPE=Haswell
       official  the paper's model.py (AP, batch 1; only where the shim exists)
       bf16      engine --precision fp32, bf16 and auto, PyTorch fp32 and bf16 autocast
                 (AP; bf16 skipped if the engine lacks it),
                 then bf16's top-1 agreement with fp32 on the default model's test set
       daemon    comrope-serve through HTTP (bench/daemon_bench.py) vs the engine
                 alone: saturation throughput vs engine batch 8 and one request
                 at a time vs engine batch 1 (AP, first --resolutions), then
                 RSS growth and page faults over --memory-requests requests at
                 mixed resolutions on the bundled default model
Before the first benchmark and after the last, comrope-fma-peak measures the
CPU's fp32 FMA peak on the same pinned CPUs with the same thread count (a loop
of register-only FMAs: no GEMM passes it); every system's images/s is also
reported as the share of that peak its arithmetic (GFLOP per image, counted
from the checkpoint's config.json) runs at, and each engine/ORT target says
what share of the peak it asks for: how far a ratio can go on this CPU.
Writes OUT/results.json (every run and every target), OUT/throughput.png,
OUT/latency_vs_tokens.png and OUT/targets.png, and prints the tables and each
target as PASS / FAIL with its numbers.
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

from flops import vit_gflop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.environ.get("PYTHON", "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable)

PE_SHORT = {"comrope-ap": "AP", "comrope-ld": "LD", "vanilla-rope": "vanilla", "none": "none"}
SYSTEMS = ("engine", "onnxruntime", "torch", "official")
SYSTEM_LABEL = {"engine": "comrope engine", "onnxruntime": "ONNX Runtime", "torch": "PyTorch eager",
                "official": "official model.py"}

# the targets
T_ORT, T_TORCH, T_OFFICIAL = 1.15, 1.6, 40.0
T_VANILLA, T_NONE, T_HASWELL, T_BF16, T_AGREE = 1.03, 1.08, 0.10, 1.6, 0.99
# on a CPU with AMX (issue 25): bf16 vs fp32, and vs PyTorch's bf16 autocast (oneDNN on AMX)
T_AMX_FP32, T_AMX_TORCH = 2.0, 1.3


def cpu_has_amx():
    """Whether /proc/cpuinfo lists AMX-BF16 and AVX512-BF16 (what our AMX kernel needs, as
    gemm_amx_kernel asks): the bf16 part then also times it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return {"amx_bf16", "avx512_bf16"} <= set(line.split())
    except OSError:
        pass
    return False
T_DAEMON_SAT, T_DAEMON_P50_REL, T_DAEMON_P50_ABS_MS, T_RSS_GROWTH_PCT = 0.9, 1.10, 2.0, 2.0
T_FAULTS_PER_REQUEST = 0.5
ALL_PARTS = ("main", "sweep", "pe", "haswell", "official", "bf16", "daemon")
DEFAULT_MODEL = os.path.join(ROOT, "models", "fashion-comrope-ld")


def log(msg=""):
    print(msg, flush=True)


def parse_list(text, cast=int):
    return [cast(t) for t in text.replace(",", " ").split()] if text else []


# --------------------------------------------------------------------------
# settings and the plan
# --------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: vit-ti16, 1 warm-up and 1 timed run, fewer sweep points")
    ap.add_argument("--preset", help="model size (default vit-b16; --quick: vit-ti16)")
    ap.add_argument("--threads", type=int, default=2, help="threads of every system (default 2)")
    ap.add_argument("--reps", type=int, help="timed runs per measurement and round (default 3; --quick 1)")
    ap.add_argument("--warmup", type=int, help="warm-up runs (default 2; --quick 1)")
    ap.add_argument("--pe-reps", type=int, help="pe: timed forwards of each model per round, in turn "
                    "(default 6; --quick 1): each rep is a set of pairs")
    ap.add_argument("--rounds", type=int, help="rounds of every comparison, the systems in turn "
                    "(default 3; --quick 1); the official model.py runs once")
    ap.add_argument("--resolutions", default="224 384", help="the target resolutions (default '224 384')")
    ap.add_argument("--batches", default="1 8", help="batch sizes of the main comparison (default '1 8')")
    ap.add_argument("--sweep", help="resolutions of the plots, batch 1 "
                    "(default '160 224 288 384 448'; --quick '160 224 384')")
    ap.add_argument("--parts", default=",".join(ALL_PARTS),
                    help=f"which comparisons (default all: {','.join(ALL_PARTS)})")
    ap.add_argument("--daemon-images", type=int,
                    help="daemon: requests timed at saturation (default 48; --quick 16)")
    ap.add_argument("--memory-requests", type=int,
                    help="daemon: requests of the RSS measurement (default 10000; --quick 1000)")
    ap.add_argument("--official-reps", type=int, help="timed runs of the official model.py (default 2; --quick 1)")
    ap.add_argument("--official-warmup", type=int, help="its warm-up runs (default 1; --quick 0)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"), help="output folder (default bench/out)")
    ap.add_argument("--build-dir", default=os.environ.get("BUILD_DIR", os.path.join(ROOT, "build-bench")))
    ap.add_argument("--no-pin", action="store_true", help="do not pin the processes to CPUs with taskset")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    ap.add_argument("--verbose", action="store_true", help="show every run's own output")
    ap.add_argument("--report", action="store_true",
                    help="run nothing: print the tables and redraw the pictures from OUT/results.json")
    a = ap.parse_args(argv)
    a.preset = a.preset or ("vit-ti16" if a.quick else "vit-b16")
    a.reps = a.reps or (1 if a.quick else 3)
    a.pe_reps = a.pe_reps or (1 if a.quick else 6)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.quick else 2)
    a.official_reps = a.official_reps or (1 if a.quick else 2)
    a.official_warmup = a.official_warmup if a.official_warmup is not None else (0 if a.quick else 1)
    a.resolutions = parse_list(a.resolutions)
    a.batches = parse_list(a.batches)
    a.sweep = parse_list(a.sweep or ("160 224 384" if a.quick else "160 224 288 384 448"))
    a.parts = set(parse_list(a.parts, str))
    a.daemon_images = a.daemon_images or (16 if a.quick else 48)
    a.memory_requests = a.memory_requests or (1000 if a.quick else 10000)
    unknown = a.parts - set(ALL_PARTS)
    if unknown:
        ap.error(f"--parts: unknown {sorted(unknown)}")
    if a.threads < 1 or a.reps < 1 or a.warmup < 0 or a.rounds < 1:
        ap.error("--threads, --reps and --rounds must be >= 1, --warmup >= 0")
    return a


class Plan:
    """An ordered list of steps; each a description and a function."""

    def __init__(self):
        self.steps = []

    def add(self, desc, fn):
        self.steps.append((desc, fn))


class Bench:
    def __init__(self, args):
        self.a = args
        self.cache = os.path.join(args.out, "cache")
        self.engine = os.path.join(args.build_dir, "comrope-bench-engine")
        self.serve = os.path.join(args.build_dir, "comrope-serve")
        self.peak_bin = os.path.join(args.build_dir, "comrope-fma-peak")
        self.flops_cache = {}
        self.runs = []
        self.skipped = {}  # system -> reason
        self.env = dict(os.environ)
        self.caller_coretype = self.env.pop("OPENBLAS_CORETYPE", None)
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            self.env[k] = str(args.threads)
        self.pin = []
        self.cpus = sorted(os.sched_getaffinity(0))
        if not args.no_pin and len(self.cpus) >= args.threads and which("taskset"):
            chosen = self.cpus[:args.threads]
            self.pin = ["taskset", "-c", ",".join(map(str, chosen))]
        self.meta = self.machine_meta()

    # ---- environment ----------------------------------------------------
    def machine_meta(self):
        cpu = platform.processor() or ""
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        flags = ""
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("flags"):
                        fl = line.split()
                        flags = " ".join(x for x in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if x in fl)
                        break
        except OSError:
            pass

        def out(cmd):
            try:
                return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                return ""
        commit = out(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
        dirty = out(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"])
        return {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "cpu": cpu, "cpu_flags": flags, "nproc": os.cpu_count(), "affinity": self.cpus,
            "pinned_to": self.pin[2] if self.pin else None, "threads": self.a.threads,
            "preset": self.a.preset, "reps": self.a.reps, "rounds": self.a.rounds, "warmup": self.a.warmup,
            "quick": self.a.quick, "git": commit + ("-dirty" if dirty else ""),
            "node": out(["node", "--version"]),
            "openblas": out(["dpkg-query", "-W", "-f=${Version}", "libopenblas0-pthread"]) or
            out(["dpkg-query", "-W", "-f=${Version}", "libopenblas-dev"]),
            "caller_OPENBLAS_CORETYPE": self.caller_coretype,
            "loadavg_start": os.getloadavg(),
        }

    # ---- files ----------------------------------------------------------
    def ckpt_dir(self, pe):
        return os.path.join(self.cache, f"{self.a.preset}-{pe}")

    def onnx_path(self, pe, res):
        return os.path.join(self.cache, "onnx", f"{self.a.preset}-{pe}-{res}.onnx")

    def make_checkpoint(self, pe):
        d = self.ckpt_dir(pe)
        stamp = os.path.join(d, ".complete")
        if os.path.exists(stamp):
            return "cached"
        tmp = d + ".tmp"
        subprocess.run(["rm", "-rf", tmp, d], check=True)
        self.call([PY, os.path.join(ROOT, "tools", "make_checkpoint.py"), "--preset", self.a.preset,
                   "--pe", pe, "--keep-ape", "--image-size", "224", "--out", tmp], pin=False)
        os.rename(tmp, d)
        open(stamp, "w").close()
        return "written"

    def export(self, pe, res):
        path = self.onnx_path(pe, res)
        if os.path.exists(path) and os.path.exists(path + ".sample/sample_logits.f32"):
            return "cached"
        tmp = path + ".tmp"
        out = self.call([PY, os.path.join(ROOT, "tools", "export_onnx.py"), self.ckpt_dir(pe),
                         "--resolution", str(res), "--out", tmp, "--sample-dir", path + ".sample"],
                        pin=False)
        os.rename(tmp, path)
        last = [line for line in out.splitlines() if "checker" in line]
        return last[-1].replace("export_onnx: ", "") if last else "exported"

    def gflop_per_image(self, pe, res):
        """GFLOP of one res x res forward of that checkpoint (bench/flops.py), or None."""
        key = (pe, res)
        if key not in self.flops_cache:
            f = vit_gflop(self.ckpt_dir(pe), res)
            self.flops_cache[key] = f and f["total"]
        return self.flops_cache[key]

    def peak(self, when):
        """comrope-fma-peak, pinned like the benchmarks: meta['fma_peak'][when]."""
        if not os.access(self.peak_bin, os.X_OK):
            return f"skipped: {self.peak_bin} is missing (bench/run.sh builds it)"
        try:
            lines = [ln for ln in self.call([self.peak_bin, "--threads", str(self.a.threads)], timeout=120)
                     .splitlines() if ln.startswith("{")]
            rec = json.loads(lines[-1])
        except (RuntimeError, IndexError, ValueError, subprocess.TimeoutExpired, OSError) as e:
            return f"ERROR {e}"
        if "skipped" in rec:
            return f"skipped: {rec['skipped']}"
        self.meta.setdefault("fma_peak", {})[when] = rec
        msg = (f"{rec['gflops']:.1f} GFLOP/s fp32 ({rec['isa']}, {rec['threads']} thread(s): "
               f"{', '.join(f'{g:.1f}' for g in rec['per_thread_gflops'])})")
        # the bf16 units beside it (vdpbf16ps; AMX tiles), where the CPU has them
        for op in ("bf16", "amx"):
            try:
                lines = [ln for ln in self.call([self.peak_bin, "--threads", str(self.a.threads), "--op", op],
                                                timeout=120).splitlines() if ln.startswith("{")]
                r = json.loads(lines[-1])
            except (RuntimeError, IndexError, ValueError, subprocess.TimeoutExpired, OSError) as e:
                r = {"skipped": f"ERROR {e}"}
            self.meta.setdefault(f"{op}_peak", {})[when] = r
            msg += f"; {op} " + (f"{r['gflops']:.1f}" if "gflops" in r else f"skipped ({r['skipped']})")
        return msg

    def peak_gflops(self):
        """The higher of the two peak measurements (a busy host only lowers it), or None."""
        got = [r["gflops"] for r in (self.meta.get("fma_peak") or {}).values()]
        return max(got) if got else None

    def peak_share(self, rec):
        """The share of the FMA peak a run's arithmetic ran at, or None."""
        if not rec:
            return None
        pk, g = self.peak_gflops(), rec.get("gflop_per_image") or self.gflop_per_image(rec["pe"], rec["res"])
        if not pk or not g or "images_per_s" not in rec:
            return None
        return rec["images_per_s"] * g / pk

    # ---- processes ------------------------------------------------------
    def call(self, cmd, env=None, pin=True, timeout=None):
        full = (self.pin if pin else []) + cmd
        if self.a.verbose:
            log("    $ " + " ".join(shlex.quote(c) for c in full))
        p = subprocess.run(full, env=env or self.env, capture_output=True, text=True, timeout=timeout)
        if self.a.verbose and p.stderr:
            log("    " + p.stderr.rstrip().replace("\n", "\n    "))
        if p.returncode:
            tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"exit {p.returncode}: {' | '.join(tail)}")
        return p.stdout

    def bench(self, system, group, pe, res, batch, coretype=None, precision=None, rnd=0):
        a = self.a
        env = dict(self.env)
        if coretype:
            env["OPENBLAS_CORETYPE"] = coretype
        common = ["--batch", str(batch), "--threads", str(a.threads)]
        if system == "engine":
            cmd = [self.engine, "--model", self.ckpt_dir(pe), "--resolution", str(res),
                   "--reps", str(a.reps), "--warmup", str(a.warmup)] + common
            if precision in ("bf16-amx", "bf16-amx-2x2"):  # our AMX tile kernel, one block or the other
                cmd += ["--precision", "bf16", "--gemm-backend", "amx",
                        "--amx-shape", "2x2" if precision == "bf16-amx-2x2" else "1x3"]
            elif precision:
                cmd += ["--precision", precision]
        elif system == "torch" and precision == "bf16-autocast":
            cmd = [PY, os.path.join(ROOT, "bench", "torch_bench.py"), "--model", self.ckpt_dir(pe),
                   "--resolution", str(res), "--reps", str(a.reps), "--warmup", str(a.warmup),
                   "--bf16-autocast"] + common
        elif system == "onnxruntime":
            path = self.onnx_path(pe, res)
            cmd = ["node", os.path.join(ROOT, "bench", "ort_bench.js"), "--model", path, "--pe", pe,
                   "--label", self.ckpt_dir(pe), "--check-dir", path + ".sample", "--tol", "1e-3",
                   "--reps", str(a.reps), "--warmup", str(a.warmup)] + common
        elif system == "torch":
            cmd = [PY, os.path.join(ROOT, "bench", "torch_bench.py"), "--model", self.ckpt_dir(pe),
                   "--resolution", str(res), "--reps", str(a.reps), "--warmup", str(a.warmup)] + common
        else:
            cmd = [PY, os.path.join(ROOT, "bench", "torch_bench.py"), "--official", "--model",
                   self.ckpt_dir(pe), "--resolution", str(res), "--reps", str(a.official_reps),
                   "--warmup", str(a.official_warmup)] + common
        rec = {"system": system, "group": group, "pe": pe, "res": res, "batch": batch,
               "tokens": 1 + (res // 16) ** 2, "env": f"OPENBLAS_CORETYPE={coretype}" if coretype else "default",
               "precision": precision or "fp32", "round": rnd,
               "gflop_per_image": self.gflop_per_image(pe, res)}
        skip_key = "engine-bf16" if precision in ("bf16", "bf16-amx", "bf16-amx-2x2") else system
        if skip_key in self.skipped:
            rec["skipped"] = self.skipped[skip_key]
            self.runs.append(rec)
            return f"skipped: {rec['skipped']}"
        if system in self.skipped:
            rec["skipped"] = self.skipped[system]
            self.runs.append(rec)
            return f"skipped: {rec['skipped']}"
        t0 = time.time()
        try:
            lines = [ln for ln in self.call(cmd, env=env, timeout=3600).splitlines() if ln.startswith("{")]
            res_json = json.loads(lines[-1])
        except (RuntimeError, IndexError, ValueError, subprocess.TimeoutExpired, OSError) as e:
            if precision and "unknown option --precision" in str(e):
                self.skipped["engine-bf16"] = "this comrope-bench-engine has no --precision"
                rec["skipped"] = self.skipped["engine-bf16"]
                self.runs.append(rec)
                return f"skipped: {rec['skipped']}"
            rec["error"] = str(e)
            self.runs.append(rec)
            return f"ERROR {e}"
        # what it computed in (auto's choice) beside what was asked, the key
        computed = res_json.pop("precision", None)
        rec.update(res_json)
        if computed:
            rec["computed_precision"] = computed
        rec["wall_s"] = round(time.time() - t0, 1)
        if "skipped" in res_json:
            self.skipped[system] = res_json["skipped"]
            self.runs.append(rec)
            return f"skipped: {res_json['skipped']}"
        rec["spread_pct"] = round(100.0 * (rec["max_s"] - rec["min_s"]) / rec["median_s"], 1)
        self.runs.append(rec)
        extra = f", logits vs ours {rec['check_max_abs_diff']:.1e}" if "check_max_abs_diff" in rec else ""
        return (f"{rec['images_per_s']:8.3f} img/s  (median {rec['median_s'] * 1e3:.1f} ms, "
                f"spread {rec['spread_pct']:.1f}%{extra})")

    def bench_pe(self, res, batch, rnd):
        """The four position encodings in one engine process that runs their
        forwards in turn (comrope-bench-engine with four --model): each
        model's forward r ran in the same rep as the others' forward r (the
        engine rotates which model goes first), so their ratios pair forward
        by forward (pe_cost). One record per model."""
        a = self.a
        pes = list(PE_SHORT)
        cmd = [self.engine, "--resolution", str(res), "--batch", str(batch), "--threads", str(a.threads),
               "--reps", str(a.pe_reps), "--warmup", str(a.warmup)]
        for pe in pes:
            cmd += ["--model", self.ckpt_dir(pe)]
        base = {"system": "engine", "group": "pe", "res": res, "batch": batch, "tokens": 1 + (res // 16) ** 2,
                "env": "default", "precision": "fp32", "round": rnd}
        t0 = time.time()
        try:
            lines = [json.loads(ln) for ln in self.call(cmd, timeout=3600).splitlines() if ln.startswith("{")]
            if len(lines) != len(pes):
                raise ValueError(f"{len(lines)} result lines for {len(pes)} models")
        except (RuntimeError, ValueError, subprocess.TimeoutExpired, OSError) as e:
            for pe in pes:
                self.runs.append(dict(base, pe=pe, error=str(e)))
            return f"ERROR {e}"
        wall = round(time.time() - t0, 1)
        for pe, out in zip(pes, lines):  # the lines come in the order of the --model flags
            rec = dict(base, gflop_per_image=self.gflop_per_image(pe, res), wall_s=wall)
            rec.update(out)
            rec["pe"] = pe  # run.py's name, whatever the engine calls its encoding
            rec["spread_pct"] = round(100.0 * (rec["max_s"] - rec["min_s"]) / rec["median_s"], 1)
            self.runs.append(rec)
        return "  ".join(f"{PE_SHORT[pe]} {out['median_s'] * 1e3:.1f} ms" for pe, out in zip(pes, lines))

    def daemon(self, mode, pe, res):
        """bench/daemon_bench.py in speed or memory mode -> a run record."""
        a = self.a
        cmd = [sys.executable, os.path.join(ROOT, "bench", "daemon_bench.py"), "--serve", self.serve,
               "--mode", mode, "--pin", " ".join(self.pin)]
        if mode == "speed":
            model = self.ckpt_dir(pe)
            # one worker whose GEMMs use every thread: what the engine-only run does
            cmd += ["--model", model, "--resolution", str(res), "--images", str(a.daemon_images),
                    "--serve-flags", f"--workers 1 --gemm-threads {a.threads} --max-batch-size 8"]
        else:
            model = DEFAULT_MODEL
            cmd += ["--model", model, "--requests", str(a.memory_requests)]
        rec = {"system": "daemon" if mode == "speed" else "daemon-memory", "group": "daemon",
               "pe": pe, "res": res, "batch": 8 if mode == "speed" else 0, "env": "default",
               "precision": "fp32", "model": os.path.relpath(model, ROOT)}
        t0 = time.time()
        try:
            lines = [ln for ln in self.call(cmd, pin=False, timeout=3600).splitlines() if ln.startswith("{")]
            rec.update(json.loads(lines[-1]))
        except (RuntimeError, IndexError, ValueError, subprocess.TimeoutExpired, OSError) as e:
            rec["error"] = str(e)
            self.runs.append(rec)
            return f"ERROR {e}"
        rec["wall_s"] = round(time.time() - t0, 1)
        self.runs.append(rec)
        if mode == "speed":
            return (f"saturation {rec['saturation_images_per_s']:.3f} img/s, one at a time p50 "
                    f"{rec['p50_ms']:.1f} ms")
        return (f"RSS {rec['rss_start_kib'] / 1024:.1f} -> {rec['rss_end_kib'] / 1024:.1f} MiB "
                f"({rec['rss_growth_pct']:+.2f}%), {rec['faults_per_request']:.3f} faults/request")

    def bf16_agreement(self):
        """bench/bf16_agreement.py: bf16 vs fp32 top-1 on the default model's test set -> a record."""
        classify = os.path.join(self.a.build_dir, "comrope-classify")
        out = os.path.join(self.a.out, "bf16_agreement.json")
        cmd = [sys.executable, os.path.join(ROOT, "bench", "bf16_agreement.py"), "--classify", classify,
               "--model", DEFAULT_MODEL, "--threads", str(self.a.threads), "--out", out]
        rec = {"system": "bf16-agreement", "group": "bf16", "pe": "comrope-ld", "res": 28, "batch": 0,
               "env": "default", "precision": "bf16", "model": os.path.relpath(DEFAULT_MODEL, ROOT)}
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
            lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            if p.returncode not in (0, 2) or not lines:
                raise RuntimeError((p.stderr.strip() or p.stdout.strip())[-500:])
            rec.update(json.loads(lines[-1]))
        except (RuntimeError, ValueError, subprocess.TimeoutExpired, OSError) as e:
            rec["error"] = str(e)
            self.runs.append(rec)
            return f"ERROR {e}"
        self.runs.append(rec)
        if "skipped" in rec:
            return f"skipped: {rec['skipped']}"
        return (f"top-1 agreement {100 * rec['agreement']:.2f}% over {rec['images']} images "
                f"(fp32 {100 * rec['fp32_top1']:.2f}%, bf16 {100 * rec['bf16_top1']:.2f}% correct)")

    def record(self, system):
        """The first record of a one-off measurement (daemon, daemon-memory, bf16-agreement)
        that did not fail, or None."""
        for r in self.runs:
            if r["system"] == system and "error" not in r:
                return r
        return None

    # ---- the plan -------------------------------------------------------
    def plan(self):
        a, p = self.a, Plan()
        parts = a.parts
        pes = ["comrope-ap", "comrope-ld"]
        if "pe" in parts:
            pes += ["vanilla-rope", "none"]
        for pe in pes:
            p.add(f"checkpoint {a.preset} {pe}", lambda pe=pe: self.make_checkpoint(pe))
        exports = []
        if "main" in parts:
            exports += [(pe, r) for pe in ("comrope-ap", "comrope-ld") for r in a.resolutions]
        if "sweep" in parts:
            exports += [("comrope-ap", r) for r in a.sweep]
        for pe, r in sorted(set(exports)):
            p.add(f"export ONNX {pe} {r}x{r}", lambda pe=pe, r=r: self.export(pe, r))

        p.add(f"fma peak  comrope-fma-peak, {a.threads} thread(s), before the benchmarks",
              lambda: self.peak("start"))

        def b(system, group, pe, r, batch, coretype=None, precision=None, rnd=0):
            env = f" {coretype and 'OPENBLAS_CORETYPE=' + coretype or ''}{precision or ''}"
            tag = f" round {rnd + 1}/{a.rounds}" if a.rounds > 1 else ""
            p.add(f"{group:8s} {system:11s} {PE_SHORT[pe]:7s} {r}x{r} b{batch}{env}{tag}".rstrip(),
                  lambda: self.bench(system, group, pe, r, batch, coretype, precision, rnd))

        def rounds(*runs):  # the runs of one comparison, in turn, a.rounds times
            for rnd in range(a.rounds):
                for args in runs:
                    b(*args, rnd=rnd)
        if "main" in parts:
            for r in a.resolutions:
                for batch in a.batches:
                    for pe in ("comrope-ap", "comrope-ld"):
                        rounds(*[(system, "main", pe, r, batch) for system in ("engine", "onnxruntime", "torch")])
        if "sweep" in parts:
            for r in a.sweep:
                if "main" in parts and r in a.resolutions and 1 in a.batches:
                    continue  # measured by main
                rounds(*[(system, "sweep", "comrope-ap", r, 1) for system in ("engine", "onnxruntime", "torch")])
        if "pe" in parts:
            points = sorted(set((r, 1) for r in a.sweep + a.resolutions) |
                            set((r, bt) for r in a.resolutions for bt in a.batches))
            for r, batch in points:  # the four models in one process, forward by forward
                for rnd in range(a.rounds):
                    tag = f" round {rnd + 1}/{a.rounds}" if a.rounds > 1 else ""
                    p.add(f"pe       engine      AP LD vanilla none, interleaved {r}x{r} b{batch}{tag}",
                          lambda r=r, batch=batch, rnd=rnd: self.bench_pe(r, batch, rnd))
        if "haswell" in parts:
            for r in a.resolutions:
                for batch in a.batches:
                    rounds(("engine", "haswell", "comrope-ap", r, batch),
                           ("engine", "haswell", "comrope-ap", r, batch, "Haswell"))
        if "bf16" in parts:
            for r in a.resolutions:
                for batch in a.batches:
                    amx = [("engine", "bf16", "comrope-ap", r, batch, None, p)
                           for p in ("bf16-amx", "bf16-amx-2x2")] if cpu_has_amx() else []
                    rounds(("engine", "bf16", "comrope-ap", r, batch),
                           ("engine", "bf16", "comrope-ap", r, batch, None, "bf16"),
                           *amx,
                           ("engine", "bf16", "comrope-ap", r, batch, None, "auto"),
                           ("torch", "bf16", "comrope-ap", r, batch),
                           ("torch", "bf16", "comrope-ap", r, batch, None, "bf16-autocast"))
            p.add("bf16     top-1 agreement with fp32, default model, Fashion-MNIST test set",
                  self.bf16_agreement)
        if "official" in parts:  # with the engine next to it, for the ratio
            for r in a.resolutions:
                b("engine", "official", "comrope-ap", r, 1)
                b("official", "official", "comrope-ap", r, 1)
        if "daemon" in parts:  # the engine alone right before, for the ratios
            r = a.resolutions[0]
            b("engine", "daemon", "comrope-ap", r, 8)
            b("engine", "daemon", "comrope-ap", r, 1)
            p.add(f"daemon   HTTP        AP      {r}x{r} saturation + one at a time",
                  lambda: self.daemon("speed", "comrope-ap", r))
            p.add(f"daemon   HTTP        default model, {a.memory_requests} requests, mixed resolutions",
                  lambda: self.daemon("memory", "comrope-ld", 28))
        p.add(f"fma peak  comrope-fma-peak, {a.threads} thread(s), after the benchmarks",
              lambda: self.peak("end"))
        return p

    # ---- results --------------------------------------------------------
    def find(self, **kw):
        """The measurement matching kw, its rounds merged (merge_rounds), or None."""
        kw.setdefault("precision", "fp32")
        hits = [r for r in self.runs
                if all(r.get(k, "fp32" if k == "precision" else None) == v for k, v in kw.items()) and "median_s" in r]
        if not hits:
            return None
        first = hits[0]  # one measurement: a group may hold several (pe: four models), keep the first's
        same = [r for r in hits if all(r.get(k) == first.get(k) for k in
                                       ("system", "group", "pe", "res", "batch", "env", "precision"))]
        return merge_rounds(same)

    def engine_b(self, pe, res, batch, group):
        """The engine's number for a target: the group's own run first, else any."""
        return (self.find(system="engine", group=group, pe=pe, res=res, batch=batch) or
                self.find(system="engine", pe=pe, res=res, batch=batch, env="default"))

    def targets(self):
        a, out = self.a, []

        def add(name, kind, config, value, target, ok, detail):
            out.append({"name": name, "kind": kind, "config": config, "value": value, "target": target,
                        "pass": ok, "detail": detail})
        for r in a.resolutions:
            for batch in a.batches:
                for pe in ("comrope-ap", "comrope-ld"):
                    e = self.find(system="engine", group="main", pe=pe, res=r, batch=batch)
                    cfg = f"{PE_SHORT[pe]} {r} b{batch}"
                    for system, tgt, kind in (("onnxruntime", T_ORT, "engine/ORT"),
                                              ("torch", T_TORCH, "engine/torch")):
                        o = self.find(system=system, group="main", pe=pe, res=r, batch=batch)
                        if e and o:
                            v = ratio(e, o)
                            detail = f"{e['images_per_s']:.3f} vs {o['images_per_s']:.3f} img/s"
                            need = self.peak_share(o)
                            if need is not None:  # what the target asks of the CPU
                                detail += (f"; {tgt}x {SYSTEM_LABEL[system]} = {100 * tgt * need:.0f}% of "
                                           f"the fp32 FMA peak, the engine ran at {100 * self.peak_share(e):.0f}%")
                            add(f"engine >= {tgt}x {SYSTEM_LABEL[system]}", kind, cfg, round(v, 3), tgt,
                                v >= tgt, detail)
            for batch in a.batches:
                pt = {pe: self.find(system="engine", group="pe", pe=pe, res=r, batch=batch)
                      for pe in PE_SHORT}
                for pe in ("comrope-ap", "comrope-ld"):
                    for base, tgt in (("vanilla-rope", T_VANILLA), ("none", T_NONE)):
                        if pt[pe] and pt[base]:
                            c = pe_cost(pt[pe], pt[base])
                            v = c["ratio"]
                            add(f"{PE_SHORT[pe]} cost within {round((tgt - 1) * 100)}% of {PE_SHORT[base]}",
                                f"time {PE_SHORT[pe]}/{PE_SHORT[base]}", f"{r} b{batch}", round(v, 3), tgt,
                                v <= tgt, f"{c['how']}; medians {pt[pe]['median_s'] * 1e3:.1f} vs "
                                f"{pt[base]['median_s'] * 1e3:.1f} ms")
                d = self.find(system="engine", group="haswell", pe="comrope-ap", res=r, batch=batch, env="default")
                h = self.find(system="engine", group="haswell", pe="comrope-ap", res=r, batch=batch,
                              env="OPENBLAS_CORETYPE=Haswell")
                if d and h:
                    v = ratio(h, d)
                    add("within 10% with OPENBLAS_CORETYPE=Haswell", "Haswell/default", f"AP {r} b{batch}",
                        round(v, 3), T_HASWELL, abs(v - 1) <= T_HASWELL,
                        f"{h['images_per_s']:.3f} vs {d['images_per_s']:.3f} img/s")
            for batch in a.batches:
                f32 = self.find(system="engine", group="bf16", pe="comrope-ap", res=r, batch=batch)
                b16 = self.find(system="engine", group="bf16", pe="comrope-ap", res=r, batch=batch,
                                precision="bf16")
                if f32 and b16:
                    v = ratio(b16, f32)
                    add(f"engine bf16 >= {T_BF16}x fp32 (speed only)", "bf16/fp32", f"AP {r} b{batch}",
                        round(v, 3), T_BF16, v >= T_BF16,
                        f"{b16['images_per_s']:.3f} vs {f32['images_per_s']:.3f} img/s")
                # AMX: each bf16 backend against fp32 and against PyTorch's autocast
                tb = self.find(system="torch", group="bf16", pe="comrope-ap", res=r, batch=batch,
                               precision="bf16-autocast")
                for label, prec in (("bf16", "bf16"), ("bf16 (our AMX kernel)", "bf16-amx"),
                                    ("bf16 (our AMX kernel, 2x2 block)", "bf16-amx-2x2")):
                    e = self.find(system="engine", group="bf16", pe="comrope-ap", res=r, batch=batch,
                                  precision=prec)
                    if not cpu_has_amx() or not e:
                        continue
                    if f32:
                        v = ratio(e, f32)
                        add(f"AMX: engine {label} >= {T_AMX_FP32}x fp32", "bf16/fp32", f"AP {r} b{batch}",
                            round(v, 3), T_AMX_FP32, v >= T_AMX_FP32,
                            f"{e['images_per_s']:.3f} vs {f32['images_per_s']:.3f} img/s")
                    if tb:
                        v = ratio(e, tb)
                        add(f"AMX: engine {label} >= {T_AMX_TORCH}x PyTorch bf16 autocast", "bf16/torch bf16",
                            f"AP {r} b{batch}", round(v, 3), T_AMX_TORCH, v >= T_AMX_TORCH,
                            f"{e['images_per_s']:.3f} vs {tb['images_per_s']:.3f} img/s")
            o = self.find(system="official", pe="comrope-ap", res=r, batch=1)
            e = self.engine_b("comrope-ap", r, 1, "official")
            if r == a.resolutions[-1]:  # once, not per resolution
                g = self.record("bf16-agreement")
                if g and "agreement" in g:
                    add(f"bf16 top-1 agreement >= {T_AGREE * 100:g}% with fp32", "agreement",
                        f"default model, {g['images']} test images", round(g["agreement"], 4), T_AGREE,
                        g["agreement"] >= T_AGREE, f"{g['disagree']} differ; correct: fp32 "
                        f"{100 * g['fp32_top1']:.2f}%, bf16 {100 * g['bf16_top1']:.2f}%")
            if o and e:
                v = ratio(e, o)
                add(f"engine >= {T_OFFICIAL:g}x official model.py", "engine/official", f"AP {r} b1",
                    round(v, 1), T_OFFICIAL, v >= T_OFFICIAL,
                    f"{e['images_per_s']:.3f} vs {o['images_per_s']:.4f} img/s")
        if "daemon" in a.parts:
            r = a.resolutions[0]
            d = self.record("daemon")
            e8 = self.find(system="engine", group="daemon", pe="comrope-ap", res=r, batch=8)
            e1 = self.find(system="engine", group="daemon", pe="comrope-ap", res=r, batch=1)
            if d and e8:
                v = d["saturation_images_per_s"] / e8["images_per_s"]
                add(f"daemon HTTP >= {T_DAEMON_SAT}x engine at saturation", "HTTP/engine", f"AP {r} b8",
                    round(v, 3), T_DAEMON_SAT, v >= T_DAEMON_SAT,
                    f"{d['saturation_images_per_s']:.3f} vs {e8['images_per_s']:.3f} img/s")
            if d and e1:
                limit = e1["median_s"] * 1e3 * T_DAEMON_P50_REL + T_DAEMON_P50_ABS_MS
                v = d["p50_ms"] / limit
                add("daemon p50 <= engine b1 + 10% + 2 ms", "p50/limit", f"AP {r} c1", round(v, 3), 1.0,
                    v <= 1.0, f"{d['p50_ms']:.1f} ms vs limit {limit:.1f} ms (engine {e1['median_s'] * 1e3:.1f})")
            m = self.record("daemon-memory")
            if m:
                v = m["rss_growth_pct"]
                add(f"RSS growth < {T_RSS_GROWTH_PCT:g}% over {m['requests']} requests", "RSS growth %",
                    "default mix", v, T_RSS_GROWTH_PCT, v < T_RSS_GROWTH_PCT,
                    f"{m['rss_start_kib'] / 1024:.1f} -> {m['rss_end_kib'] / 1024:.1f} MiB, "
                    f"weights {m['weights_bytes'] / 2**20:.1f} MiB")
                v = m["faults_per_request"]
                add(f"page faults per request < {T_FAULTS_PER_REQUEST:g} after warm-up", "faults/request",
                    "default mix", v, T_FAULTS_PER_REQUEST, v < T_FAULTS_PER_REQUEST,
                    f"{m['minor_faults']} minor faults in {m['requests']} requests")
        return out

    def save(self, targets=None):
        os.makedirs(self.a.out, exist_ok=True)
        doc = {"meta": self.meta, "runs": self.runs, "targets": targets or [],
               "summary": {"pass": sum(t["pass"] for t in targets or []),
                           "fail": sum(not t["pass"] for t in targets or [])}}
        tmp = os.path.join(self.a.out, "results.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, os.path.join(self.a.out, "results.json"))


def merge_rounds(recs):
    """One record for a measurement taken in several rounds: the median of the
    rounds' medians, the min and max of all their runs, and the rounds
    themselves (for ratios paired round by round)."""
    if len(recs) == 1:
        return recs[0]
    m = dict(recs[0])
    m["median_s"] = statistics.median(r["median_s"] for r in recs)
    m["min_s"] = min(r["min_s"] for r in recs)
    m["max_s"] = max(r["max_s"] for r in recs)
    m["images_per_s"] = round(m["batch"] / m["median_s"], 3)
    m["spread_pct"] = round(100.0 * (m["max_s"] - m["min_s"]) / m["median_s"], 1)
    m["rounds"] = [{"round": r.get("round", 0), "median_s": r["median_s"],
                    "images_per_s": r["batch"] / r["median_s"], "times_s": r.get("times_s")} for r in recs]
    return m


def ratio(num, den, key="images_per_s"):
    """num[key] / den[key]; for measurements taken in the same rounds, the
    median of the ratios round by round (each pair ran back to back)."""
    rn, rd = num.get("rounds"), den.get("rounds")
    if rn and rd:
        by_round = {x["round"]: x[key] for x in rd}
        pairs = [x[key] / by_round[x["round"]] for x in rn if x["round"] in by_round]
        if pairs:
            return statistics.median(pairs)
    return num[key] / den[key]


def pe_cost(num, den):
    """Time ratio num / den of two models that ran forward by forward in the
    same processes (bench_pe), as {"ratio", "how", "paired", "pairs"}.

    The ratio is of each model's fastest forward over all its rounds: on a
    shared VM the host's interference only ever adds time (forwards of one
    model, seconds apart, spread by 10-20%), so the least disturbed forward
    is the best estimate of what a model costs; bench/ab.py judges engine
    builds the same way. Beside it, "paired": the median over the pairs of
    forwards of the same rep (forward i of each, in each round), whose
    spread is that of single forwards. Records without the forwards' times
    (results.json files from before 2026-11-30) give the ratio of the
    rounds' medians."""
    def by_round(rec):
        if rec.get("rounds"):
            return {x["round"]: x.get("times_s") for x in rec["rounds"]}
        return {rec.get("round", 0): rec.get("times_s")}
    tn, td = by_round(num), by_round(den)
    pairs = [a / b for rnd, ta in tn.items() if ta and td.get(rnd)
             for a, b in zip(ta, td[rnd]) if b > 0]
    if not pairs:
        v = ratio(num, den, "median_s")
        return {"ratio": v, "how": "ratio of the rounds' medians", "paired": None, "pairs": 0}
    fn = min(t for ta in tn.values() if ta for t in ta)
    fd = min(t for ta in td.values() if ta for t in ta)
    return {"ratio": fn / fd, "paired": statistics.median(pairs), "pairs": len(pairs),
            "how": f"fastest forwards {fn * 1e3:.1f} vs {fd * 1e3:.1f} ms; "
                   f"median of {len(pairs)} paired forwards {statistics.median(pairs):.3f}"}


def which(name):
    return any(os.access(os.path.join(d, name), os.X_OK) for d in os.environ.get("PATH", "").split(":"))


# --------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------

def fmt_ips(r):
    if r is None:
        return "-"
    if "median_s" not in r:
        return "skipped" if "skipped" in r else "error"
    return f"{r['images_per_s']:.3f} ±{r['spread_pct'] / 2:.0f}%"


def main_rows(B):
    """The main comparison's points in table order: (res, batch, pe, {system: its record or None})."""
    for r in B.a.resolutions:
        for batch in B.a.batches:
            for pe in ("comrope-ap", "comrope-ld"):
                yield r, batch, pe, {s: B.find(system=s, group="main", pe=pe, res=r, batch=batch)
                                     for s in ("engine", "onnxruntime", "torch")}


def print_peak_table(B):
    """The main comparison as shares of the measured fp32 FMA peak: how much
    of the CPU each system uses, and how much the engine/ORT target asks for."""
    a, pk = B.a, B.peak_gflops()
    log("")
    if not pk:
        log("Share of the fp32 FMA peak: not measured (comrope-fma-peak did not run)")
        return
    fp = B.meta["fma_peak"]
    runs = ", ".join(f"{w} {fp[w]['gflops']:.1f}" for w in ("start", "end") if w in fp)
    isa = next(iter(fp.values()))["isa"]
    log(f"Share of the fp32 FMA peak: {pk:.1f} GFLOP/s on {a.threads} thread(s) ({isa}; measured {runs}), "
        f"images/s x GFLOP per image / peak")
    hdr = (f"  {'model':5s} {'res':>4s} {'batch':>5s} {'GFLOP':>6s} | {'engine':>7s} {'ORT':>7s} {'torch':>7s} | "
           f"{T_ORT}x ORT needs")
    log(hdr)
    log("  " + "-" * (len(hdr) - 2))
    for r, batch, pe, row in main_rows(B):
        share = {s: B.peak_share(row[s]) for s in row}
        cells = [f"{100 * v:6.1f}%" if v is not None else f"{'-':>7s}" for v in share.values()]
        need = share["onnxruntime"]
        need_s = f"{100 * T_ORT * need:6.1f}%{' (over the peak)' if T_ORT * need > 1 else ''}" \
            if need is not None else "-"
        # as recorded with the runs (an old results.json's checkpoints may be gone)
        g = next((x["gflop_per_image"] for x in row.values() if x and x.get("gflop_per_image")), None) \
            or B.gflop_per_image(pe, r)
        g_s = f"{g:6.1f}" if g else f"{'-':>6s}"
        log(f"  {PE_SHORT[pe]:5s} {r:4d} {batch:5d} {g_s} | {' '.join(cells)} | {need_s}")


def print_tables(B, targets):
    a = B.a
    m = B.meta
    log("")
    log(f"== Results: {a.preset} fp32, {a.threads} threads{' pinned to CPUs ' + m['pinned_to'] if m['pinned_to'] else ''}, "
        f"{a.warmup} warm-up + {a.reps} timed runs, {a.rounds} round(s); images/s median of the rounds' medians "
        f"±half the min-max spread of all runs; ratios: median of the rounds' ratios (pe: see below)")
    log(f"   CPU {m['cpu']} ({m['cpu_flags']}), git {m['git']}, load average at start "
        f"{m['loadavg_start'][0]:.2f}, at end {m['loadavg_end'][0]:.2f}")
    if a.quick:
        log("   --quick: a smoke test of the pipeline (small model, 1 run): not a measurement")
    if "main" in a.parts:
        log("")
        log("Engine vs ONNX Runtime vs PyTorch eager (same checkpoint, same threads)")
        hdr = f"  {'model':5s} {'res':>4s} {'batch':>5s} | {'engine':>16s} {'ONNX Runtime':>16s} {'PyTorch eager':>16s} | {'eng/ORT':>8s} {'eng/torch':>9s}"
        log(hdr)
        log("  " + "-" * (len(hdr) - 2))
        for r, batch, pe, row in main_rows(B):
            ratios = []
            for s, tgt in (("onnxruntime", T_ORT), ("torch", T_TORCH)):
                if row["engine"] and row[s]:
                    v = ratio(row["engine"], row[s])
                    ratios.append(f"{v:.2f}x{'' if v >= tgt else '!'}")
                else:
                    ratios.append("-")
            log(f"  {PE_SHORT[pe]:5s} {r:4d} {batch:5d} | {fmt_ips(row['engine']):>16s} "
                f"{fmt_ips(row['onnxruntime']):>16s} {fmt_ips(row['torch']):>16s} | "
                f"{ratios[0]:>8s} {ratios[1]:>9s}")
        log(f"  (! below target: engine/ORT >= {T_ORT}, engine/torch >= {T_TORCH})")
        print_peak_table(B)
    sweep_res = sorted(set((a.sweep if "sweep" in a.parts else []) +
                           (a.resolutions if "main" in a.parts or "official" in a.parts else [])))
    if sweep_res and ({"sweep", "official"} & a.parts):
        log("")
        log("Images/s vs resolution, ComRoPE-AP, batch 1 (throughput.png, latency_vs_tokens.png)")
        log(f"  {'res':>4s} {'tokens':>6s} | " + " ".join(f"{SYSTEM_LABEL[s]:>17s}" for s in SYSTEMS))
        for r in sweep_res:
            cells = []
            for s in SYSTEMS:
                rr = B.find(system=s, pe="comrope-ap", res=r, batch=1, env="default") if s == "engine" else \
                    B.find(system=s, pe="comrope-ap", res=r, batch=1)
                if rr is None and s in B.skipped:
                    cells.append("skipped")
                else:
                    cells.append(fmt_ips(rr))
            log(f"  {r:4d} {1 + (r // 16) ** 2:6d} | " + " ".join(f"{c:>17s}" for c in cells))
    if "pe" in a.parts:
        log("")
        log("Engine cost of the position encoding (ms per batch, median; ratios to vanilla RoPE and to none:\n"
            "  of each model's fastest forward, the four run in turn in one process, see bench_pe and pe_cost;\n"
            "  for results written before 2026-11-30, of the rounds' medians)")
        log(f"  {'res':>4s} {'batch':>5s} | {'AP':>9s} {'LD':>9s} {'vanilla':>9s} {'none':>9s} | "
            f"{'AP/van':>7s} {'LD/van':>7s} {'AP/none':>7s} {'LD/none':>7s}")
        pts = sorted(set((r["res"], r["batch"]) for r in B.runs if r["group"] == "pe"))
        for r, batch in pts:
            t = {pe: B.find(system="engine", group="pe", pe=pe, res=r, batch=batch) for pe in PE_SHORT}
            ms = [f"{t[pe]['median_s'] * 1e3:9.1f}" if t[pe] else f"{'-':>9s}" for pe in PE_SHORT]
            rat = []
            for num, den, tgt in (("comrope-ap", "vanilla-rope", T_VANILLA), ("comrope-ld", "vanilla-rope", T_VANILLA),
                                  ("comrope-ap", "none", T_NONE), ("comrope-ld", "none", T_NONE)):
                if t[num] and t[den]:
                    v = pe_cost(t[num], t[den])["ratio"]
                    gated = r in a.resolutions
                    rat.append(f"{v:6.3f}{'!' if gated and v > tgt else ' '}")
                else:
                    rat.append(f"{'-':>7s}")
            log(f"  {r:4d} {batch:5d} | {' '.join(ms)} | {' '.join(rat)}")
        log(f"  (targets at {', '.join(map(str, a.resolutions))}: AP, LD <= {T_VANILLA} x vanilla, <= {T_NONE} x none)")
    if "haswell" in a.parts:
        log("")
        log("Engine with and without OPENBLAS_CORETYPE=Haswell in its environment (ComRoPE-AP)")
        log(f"  {'res':>4s} {'batch':>5s} | {'default':>16s} {'Haswell':>16s} | {'ratio':>6s}")
        for r in a.resolutions:
            for batch in a.batches:
                d = B.find(system="engine", group="haswell", res=r, batch=batch, env="default")
                h = B.find(system="engine", group="haswell", res=r, batch=batch, env="OPENBLAS_CORETYPE=Haswell")
                v = f"{ratio(h, d):.3f}" if d and h else "-"
                log(f"  {r:4d} {batch:5d} | {fmt_ips(d):>16s} {fmt_ips(h):>16s} | {v:>6s}")
    if "bf16" in a.parts:
        log("")
        log("Engine bf16 compute vs fp32, and PyTorch's bf16 autocast (ComRoPE-AP; speed; "
            "top-1 agreement on the default model below)")
        pk = {op: [r["gflops"] for r in (B.meta.get(f"{op}_peak") or {}).values() if "gflops" in r]
              for op in ("fma", "bf16", "amx")}
        log("  peaks (GFLOP/s, " + f"{a.threads} thread(s)): " + ", ".join(
            f"{op} {max(v):.1f}" if v else f"{op} skipped" for op, v in pk.items()))
        log(f"  {'res':>4s} {'batch':>5s} | {'engine fp32':>16s} {'engine bf16':>16s} {'engine auto':>16s} "
            f"{'torch fp32':>16s} {'torch bf16':>16s} | {'bf16/fp32':>9s} {'auto/fp32':>9s} {'bf16/torch bf16':>15s}"
            + (f" | {'our AMX':>16s} {'AMX/fp32':>9s} {'AMX/torch bf16':>14s}"
               f" | {'our AMX 2x2':>16s} {'2x2/fp32':>9s} {'2x2/torch bf16':>14s}" if cpu_has_amx() else ""))
        for r in a.resolutions:
            for batch in a.batches:
                d = B.find(system="engine", group="bf16", res=r, batch=batch)
                h = B.find(system="engine", group="bf16", res=r, batch=batch, precision="bf16")
                au = B.find(system="engine", group="bf16", res=r, batch=batch, precision="auto")
                tf = B.find(system="torch", group="bf16", res=r, batch=batch)
                tb = B.find(system="torch", group="bf16", res=r, batch=batch, precision="bf16-autocast")
                v = f"{ratio(h, d):.3f}" if d and h else "-"
                va = f"{ratio(au, d):.3f}" if d and au else "-"
                vt = f"{ratio(h, tb):.3f}" if h and tb else "-"
                hb = fmt_ips(h) if h else ("skipped" if "engine-bf16" in B.skipped else "-")
                am = ""
                for prec in ("bf16-amx", "bf16-amx-2x2") if cpu_has_amx() else ():
                    x = B.find(system="engine", group="bf16", res=r, batch=batch, precision=prec)
                    am += (f" | {fmt_ips(x):>16s} {(f'{ratio(x, d):.3f}' if x and d else '-'):>9s} "
                           f"{(f'{ratio(x, tb):.3f}' if x and tb else '-'):>14s}")
                log(f"  {r:4d} {batch:5d} | {fmt_ips(d):>16s} {hb:>16s} {fmt_ips(au):>16s} {fmt_ips(tf):>16s} "
                    f"{fmt_ips(tb):>16s} | {v:>9s} {va:>9s} {vt:>15s}" + am)
        g = B.record("bf16-agreement")
        if g and "agreement" in g:
            log(f"  top-1 agreement with fp32: {100 * g['agreement']:.2f}% of {g['images']} Fashion-MNIST test "
                f"images ({g['model']}); correct: fp32 {100 * g['fp32_top1']:.2f}%, bf16 {100 * g['bf16_top1']:.2f}%")
        elif g:
            log(f"  top-1 agreement: {g.get('skipped') or g.get('error')}")
    if "daemon" in a.parts:
        log("")
        log("The daemon through HTTP (bench/daemon_bench.py) vs the engine alone")
        d, m = B.record("daemon"), B.record("daemon-memory")
        r = a.resolutions[0]
        e8 = B.find(system="engine", group="daemon", pe="comrope-ap", res=r, batch=8)
        e1 = B.find(system="engine", group="daemon", pe="comrope-ap", res=r, batch=1)
        if d:
            log(f"  AP {r}: saturation ({d['concurrency']} clients) {d['saturation_images_per_s']:.3f} img/s "
                f"vs engine batch 8 {fmt_ips(e8)}")
            log(f"  AP {r}: one request at a time p50 {d['p50_ms']:.1f} ms, p90 {d['p90_ms']:.1f} ms "
                f"vs engine batch 1 {e1['median_s'] * 1e3 if e1 else float('nan'):.1f} ms")
        if m:
            log(f"  default model, {m['requests']} requests at {m['mix']} ({m['concurrency']} clients, "
                f"{m['requests_per_s']:.0f} req/s): RSS {m['rss_start_kib'] / 1024:.1f} -> "
                f"{m['rss_end_kib'] / 1024:.1f} MiB (peak {m['rss_peak_kib'] / 1024:.1f}), "
                f"{m['minor_faults']} minor faults")
    for s, why in B.skipped.items():
        log(f"\n  {SYSTEM_LABEL.get(s, s)}: skipped ({why})")
    errors = [r for r in B.runs if "error" in r]
    if errors:
        log("")
        log(f"{len(errors)} run(s) failed:")
        for r in errors:
            log(f"  {r['system']} {r['pe']} {r['res']} b{r['batch']} {r.get('env', '')}: {r['error']}")
    log("")
    log("== Targets (issue 6), every ratio from this run")
    if not targets:
        log("  none could be computed")
    order = []
    for t in targets:
        if t["name"] not in order:
            order.append(t["name"])
    for t in sorted(targets, key=lambda t: order.index(t["name"])):
        if t["kind"] == "Haswell/default":
            want = f"within 1 ± {t['target']}"
        elif t["kind"].startswith("time") or t["kind"] in ("p50/limit", "RSS growth %", "faults/request"):
            want = f"<= {t['target']}"
        else:
            want = f">= {t['target']:g}"
        log(f"  {'PASS' if t['pass'] else 'FAIL'}  {t['name']:44s} {t['config']:12s} "
            f"{t['value']:>8g} ({want}; {t['detail']})")
    npass = sum(t["pass"] for t in targets)
    log(f"  {npass} of {len(targets)} targets met")


# --------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------

def plots(B):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    a, out, written = B.a, B.a.out, []
    title = f"{a.preset} fp32, {a.threads} threads, {B.meta['cpu']}" + (" (--quick smoke test)" if a.quick else "")
    colors = {"engine": "tab:blue", "onnxruntime": "tab:orange", "torch": "tab:green", "official": "tab:red",
              "comrope-ap": "tab:blue", "comrope-ld": "tab:purple", "vanilla-rope": "tab:gray", "none": "black"}

    def series(system, batch, pe="comrope-ap", group=None):
        pts = {}  # res -> the runs (rounds) of the first group that measured it
        for r in B.runs:
            if (r["system"] == system and r["batch"] == batch and r["pe"] == pe and "median_s" in r
                    and r.get("env") == "default" and r.get("precision", "fp32") == "fp32" and (group is None or r["group"] == group)
                    and (r["res"] not in pts or pts[r["res"]][0]["group"] == r["group"])):
                pts.setdefault(r["res"], []).append(r)
        return [merge_rounds(pts[k]) for k in sorted(pts)]

    # images/s vs resolution, per system
    fig, axes = plt.subplots(1, len(a.batches), figsize=(6 * len(a.batches), 4.5), squeeze=False)
    for ax, batch in zip(axes[0], a.batches):
        for s in SYSTEMS:
            pts = series(s, batch)
            if not pts:
                continue
            x = [p["res"] for p in pts]
            y = [p["images_per_s"] for p in pts]
            lo = [max(0.0, p["images_per_s"] - p["batch"] / p["max_s"]) for p in pts]
            hi = [max(0.0, p["batch"] / p["min_s"] - p["images_per_s"]) for p in pts]
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, color=colors[s], label=SYSTEM_LABEL[s])
        pk = B.peak_gflops()  # the roofline: every FMA unit busy all the time
        xs = sorted(set(r["res"] for r in B.runs if r["batch"] == batch and r["pe"] == "comrope-ap"))
        ys = [(x, B.gflop_per_image("comrope-ap", x)) for x in xs]
        ys = [(x, pk / g) for x, g in ys if g and pk]
        if pk and ys:
            ax.plot([x for x, _ in ys], [y for _, y in ys], linestyle="--", color="black", linewidth=1,
                    label=f"fp32 FMA peak ({pk:.0f} GFLOP/s)")
        ax.set_yscale("log")
        ax.set_xlabel("resolution (pixels per side)")
        ax.set_ylabel("images / s (log)")
        ax.set_title(f"ComRoPE-AP, batch {batch}")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(os.path.join(out, "throughput.png"), dpi=110)
    plt.close(fig)
    written.append("throughput.png")

    # latency vs tokens: systems, then the engine per PE
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for s in SYSTEMS:
        pts = series(s, 1)
        if pts:
            axes[0].errorbar([p["tokens"] for p in pts], [p["median_s"] * 1e3 for p in pts],
                             yerr=[[max(0.0, p["median_s"] - p["min_s"]) * 1e3 for p in pts],
                                   [max(0.0, p["max_s"] - p["median_s"]) * 1e3 for p in pts]],
                             marker="o", capsize=3, color=colors[s], label=SYSTEM_LABEL[s])
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_title("latency of one image, ComRoPE-AP")
    for pe in PE_SHORT:
        pts = series("engine", 1, pe, group="pe")
        if pts:
            axes[1].errorbar([p["tokens"] for p in pts], [p["median_s"] * 1e3 for p in pts],
                             yerr=[[max(0.0, p["median_s"] - p["min_s"]) * 1e3 for p in pts],
                                   [max(0.0, p["max_s"] - p["median_s"]) * 1e3 for p in pts]],
                             marker="o", capsize=3, color=colors[pe], label=f"engine, {pe}")
    axes[1].set_title("engine latency by position encoding")
    for ax in axes:
        ax.set_xlabel("tokens (1 + patches)")
        ax.set_ylabel("latency, batch 1 (ms)")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(os.path.join(out, "latency_vs_tokens.png"), dpi=110)
    plt.close(fig)
    written.append("latency_vs_tokens.png")

    # every target as a bar against its line
    targets = B.targets()
    kinds = []
    for t in targets:
        if t["kind"] not in kinds:
            kinds.append(t["kind"])
    if kinds:
        fig, axes = plt.subplots(len(kinds), 1, figsize=(10, 2.2 * len(kinds)), squeeze=False)
        for ax, kind in zip(axes[:, 0], kinds):
            ts = [t for t in targets if t["kind"] == kind]
            labels = [t["config"] for t in ts]
            vals = [t["value"] for t in ts]
            ax.bar(range(len(ts)), vals, color=["tab:green" if t["pass"] else "tab:red" for t in ts])
            tgt = ts[0]["target"]
            if kind == "Haswell/default":
                ax.axhspan(1 - tgt, 1 + tgt, color="tab:green", alpha=0.12)
                ax.axhline(1.0, color="k", lw=0.8)
            else:
                ax.axhline(tgt, color="k", ls="--", lw=1)
            ax.set_xticks(range(len(ts)))
            ax.set_xticklabels(labels, fontsize=7)
            ax.set_ylabel(kind, fontsize=8)
            ax.set_title(f"{ts[0]['name']} (target {'1 ± ' if kind == 'Haswell/default' else ''}{tgt:g})",
                         fontsize=9)
            for i, v in enumerate(vals):
                ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=7)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 0.985))
        fig.savefig(os.path.join(out, "targets.png"), dpi=110)
        plt.close(fig)
        written.append("targets.png")
    return written


# --------------------------------------------------------------------------

def report(B):
    """--report: the tables and pictures of an earlier run's results.json."""
    path = os.path.join(B.a.out, "results.json")
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    B.meta, B.runs = doc["meta"], doc["runs"]
    B.meta.setdefault("loadavg_end", B.meta["loadavg_start"])
    B.skipped = {r["system"]: r["skipped"] for r in B.runs if "skipped" in r}
    # the settings the run used, for the headings and the target points
    a = B.a
    a.preset, a.threads, a.reps, a.warmup, a.quick = (B.meta["preset"], B.meta["threads"], B.meta["reps"],
                                                      B.meta["warmup"], B.meta["quick"])
    a.rounds = B.meta.get("rounds", 1)
    a.resolutions = sorted(set(r["res"] for r in B.runs if r["group"] == "main")) or a.resolutions
    a.batches = sorted(set(r["batch"] for r in B.runs if r["group"] == "main")) or a.batches
    a.sweep = sorted(set(r["res"] for r in B.runs if r["batch"] == 1 and r["group"] in ("sweep", "pe")))
    a.parts = set(r["group"] for r in B.runs)
    targets = B.targets()
    print_tables(B, targets)
    written = plots(B)
    log("")
    log(f"redrew {', '.join(written)} in {B.a.out} from {path}")
    return 0


def main(argv=None):
    a = parse_args(argv)
    B = Bench(a)
    if a.report:
        return report(B)
    os.makedirs(B.cache, exist_ok=True)
    if not os.access(B.engine, os.X_OK):
        log(f"bench: {B.engine} is missing: build it first (bench/run.sh does)")
        return 2
    if "daemon" in a.parts and not os.access(B.serve, os.X_OK):
        log(f"bench: {B.serve} is missing: build it first (bench/run.sh does)")
        return 2
    log(f"== bench: {a.preset}, {a.threads} threads, parts {','.join(sorted(a.parts))}, "
        f"results in {os.path.relpath(a.out, ROOT) if a.out.startswith(ROOT) else a.out}")
    if B.pin:
        log(f"   every process pinned: {' '.join(B.pin)}")
    if B.caller_coretype:
        log(f"   OPENBLAS_CORETYPE={B.caller_coretype} was set by the caller: removed for the default runs")
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1) and not a.quick:
        log(f"   WARNING: load average {load:.2f}: the machine is not quiet; numbers will be noisy")
    plan = B.plan()
    n = len(plan.steps)
    t_start = time.time()
    for i, (desc, fn) in enumerate(plan.steps, 1):
        t0 = time.time()
        log(f"[{i:3d}/{n}] {desc} ...")
        try:
            result = fn()
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            result = f"ERROR {e}"
        log(f"          {result}  [{time.time() - t0:.1f} s]")
        B.save()
    B.meta["loadavg_end"] = os.getloadavg()
    B.meta["total_s"] = round(time.time() - t_start, 1)
    targets = B.targets()
    B.save(targets)
    print_tables(B, targets)
    try:
        written = plots(B)
        log("")
        log(f"wrote {os.path.join(a.out, 'results.json')} and " + ", ".join(written))
    except Exception as e:  # pictures are a bonus: never lose the numbers for them
        log(f"bench: plots failed: {e}")
    log(f"bench: done in {B.meta['total_s']:.0f} s")
    if a.strict and any(not t["pass"] for t in targets):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
