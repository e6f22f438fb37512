#!/usr/bin/python3
"""torch_bench.py: images/s of PyTorch eager on one checkpoint, the
counterpart of comrope-bench-engine.

    /usr/bin/python3 bench/torch_bench.py --model DIR [--resolution N|HxW]
        [--batch B] [--threads T] [--reps R] [--warmup W] [--bf16-autocast]
        [--official [--shim DIR] [--model-py FILE | --official-repo DIR]]

Default: tools/torch_model.py (fused QKV, Schur-folded pairwise rotation with
cos / sin tables built once per resolution, float32), under
torch.inference_mode(), torch.set_num_threads(T), one inter-op thread.
--bf16-autocast: the same under torch.autocast("cpu", dtype=torch.bfloat16)
(linear layers and matmuls in bf16 through oneDNN, AMX where the CPU has
it); also reports the top-1 agreement and the largest logit difference
from float32 on the timed batch.
--official: the paper's unmodified model.py on the transformers stand-in of
shared/official-shim (dense per-token rotation matrices, as published), under
torch.no_grad(), positions from the config at that resolution; also reports
the largest logit difference from tools/torch_model.py on the timed batch.
When the shim or model.py cannot be found it prints a JSON line with
"skipped" and the reason, and exits 0 (CI has neither).

Where the official model.py comes from (nothing is assumed about this
machine): --model-py FILE or $COMROPE_OFFICIAL_MODEL_PY, else model.py at
HEAD of a clone of the official repository given by --official-repo DIR or
$COMROPE_OFFICIAL_REPO (`git clone https://github.com/Longin-Yu/ComRoPE`;
a bare clone works too), extracted into a temporary folder outside this
repository, which must not hold a copy of it.

Prints one JSON line with the fields of comrope-bench-engine: model, pe,
resolution, batch, threads, kernel, median_s, min_s, max_s, images_per_s.
"""
import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))


def default_shim():
    return os.environ.get("COMROPE_OFFICIAL_SHIM", os.path.join(REPO, "..", "shared", "official-shim"))


def find_official(shim, model_py, repo):
    """-> (shim, model_py, None) or (None, None, reason). model.py is taken from
    --model-py or $COMROPE_OFFICIAL_MODEL_PY, else extracted from the official
    repository (--official-repo or $COMROPE_OFFICIAL_REPO) into a temporary
    folder outside this repository (it must not be copied into the project)."""
    if not os.path.isdir(os.path.join(shim, "transformers")):
        return None, None, f"no official shim at {os.path.abspath(shim)} (set COMROPE_OFFICIAL_SHIM)"
    model_py = model_py or os.environ.get("COMROPE_OFFICIAL_MODEL_PY", "")
    if model_py:
        if os.path.isfile(model_py):
            return shim, model_py, None
        return None, None, f"no official model.py at {model_py}"
    repo = repo or os.environ.get("COMROPE_OFFICIAL_REPO", "")
    if repo and os.path.isdir(repo):
        out_dir = os.path.join(tempfile.gettempdir(), "comrope-official")
        os.makedirs(out_dir, exist_ok=True)
        out = os.path.join(out_dir, "model.py")
        try:
            git_dir = os.path.join(repo, ".git") if os.path.isdir(os.path.join(repo, ".git")) else repo
            text = subprocess.run(["git", f"--git-dir={git_dir}", "show", "HEAD:model.py"],
                                  check=True, capture_output=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            return None, None, f"cannot read model.py from {repo}: {e}"
        with open(out, "wb") as f:
            f.write(text)
        return shim, out, None
    if repo:
        return None, None, f"no official repository at {repo}"
    return None, None, ("no official model.py: give --model-py FILE or --official-repo DIR (or set "
                        "COMROPE_OFFICIAL_MODEL_PY / COMROPE_OFFICIAL_REPO) after "
                        "`git clone https://github.com/Longin-Yu/ComRoPE`")


def import_official(shim, model_py):
    sys.path.insert(0, os.path.abspath(shim))
    spec = importlib.util.spec_from_file_location("official_model", model_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_resolution(text, default):
    if text is None:
        return default, default
    parts = text.lower().split("x")
    return (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))


def pixels(batch, C, h, w):
    """The engine bench's inputs: its LCG s = s * 1103515245 + 12345 (mod 2^32)
    from s = 1, pixel = ((s >> 8) & 0xffff) / 32768 - 1, uniform in [-1, 1).
    Vectorized by jumping k states at once: s_{i+j+1} = A_j s_i + C_j."""
    import numpy as np
    n = batch * C * h * w
    out = np.empty(n, dtype=np.float32)
    k, mask = 4096, np.uint64(0xFFFFFFFF)
    A = np.empty(k, dtype=np.uint64)
    Cc = np.empty(k, dtype=np.uint64)
    a, c = 1103515245, 12345
    A[0], Cc[0] = a, c
    for j in range(1, k):
        A[j] = (int(A[j - 1]) * a) & 0xFFFFFFFF
        Cc[j] = (int(Cc[j - 1]) * a + c) & 0xFFFFFFFF
    st = np.uint64(1)
    for start in range(0, n, k):
        m = min(k, n - start)
        s = (A[:m] * st + Cc[:m]) & mask  # < 2^64: no overflow
        out[start:start + m] = ((s >> np.uint64(8)) & np.uint64(0xFFFF)).astype(np.float32) / 32768.0 - 1.0
        st = s[m - 1]
    return out.reshape(batch, C, h, w)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--resolution")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--bf16-autocast", action="store_true",
                    help="run under torch.autocast('cpu', dtype=torch.bfloat16)")
    ap.add_argument("--official", action="store_true", help="time the paper's model.py instead")
    ap.add_argument("--shim", default=default_shim())
    ap.add_argument("--model-py", help="the official model.py (default: $COMROPE_OFFICIAL_MODEL_PY)")
    ap.add_argument("--official-repo", help="a clone of github.com/Longin-Yu/ComRoPE whose HEAD model.py "
                                            "is used (default: $COMROPE_OFFICIAL_REPO)")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.threads < 1 or args.reps < 1 or args.warmup < 0:
        ap.error("--batch, --threads and --reps must be >= 1, --warmup >= 0")

    official = None
    if args.official:
        shim, model_py, reason = find_official(args.shim, args.model_py, args.official_repo)
        if reason:
            print(f"torch_bench: official model.py skipped: {reason}", file=sys.stderr)
            print(json.dumps({"model": args.model, "skipped": reason}))
            return 0

    import torch
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    import reference
    import safetensors_io
    import torch_model

    cfg_path = os.path.join(args.model, "config.json")
    with open(cfg_path, "r", encoding="utf-8") as f:
        cfg = reference.config_from_dict(json.load(f))
    h, w = parse_resolution(args.resolution, cfg["image_size"] // cfg["patch_size"] * cfg["patch_size"])
    x = torch.from_numpy(pixels(args.batch, cfg["num_channels"], h, w))

    if args.official:
        official = import_official(shim, model_py)
        ocfg = official.CustomVITForClassificationConfig.from_json_file(cfg_path)
        model = official.CustomVITForClassification(ocfg).eval()
        arrays, _, _ = safetensors_io.read_file(os.path.join(args.model, "model.safetensors"))
        model.load_state_dict({k: torch.from_numpy(v).float() for k, v in arrays.items()}, strict=True)
        del arrays
        if h == w:  # as the official users do: the grid of a config at that resolution
            pos = official.CustomVITForClassificationConfig.from_json_file(
                cfg_path, image_size=h).get_positions(0, 0)
        else:  # the official code knows square grids only: the spec's per-axis grid
            pos = reference.positions(cfg, h, w).float()
        pos = pos.unsqueeze(0).expand(args.batch, -1, -1)
        run = lambda: model(pixel_values=x, positions=pos).logits  # noqa: E731
        kernel = f"official model.py, torch {torch.__version__} eager"
        mode = torch.no_grad()
    else:
        model = torch_model.load(args.model)
        run = lambda: model(x)  # noqa: E731
        kernel = f"tools/torch_model.py, torch {torch.__version__} eager"
        mode = torch.inference_mode()
    if args.bf16_autocast:
        kernel += ", bf16 autocast"
        inner = mode
        mode = contextlib.ExitStack()
        mode.enter_context(inner)
        mode.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))

    secs = []
    with mode:
        for r in range(args.warmup + args.reps):
            t0 = time.perf_counter()
            out = run()
            dt = time.perf_counter() - t0
            if r >= args.warmup:
                secs.append(dt)
            print(f"  rep {r + 1}/{args.warmup + args.reps}: {dt:.3f} s", file=sys.stderr, flush=True)
    secs.sort()
    med = secs[args.reps // 2]
    result = {"model": args.model, "pe": cfg["custom_pe_type"], "resolution": [h, w],
              "batch": args.batch, "threads": args.threads, "kernel": kernel,
              "median_s": round(med, 6), "min_s": round(secs[0], 6), "max_s": round(secs[-1], 6),
              "images_per_s": round(args.batch / med, 3)}
    if args.bf16_autocast:  # what bf16 cost on this batch, against float32
        with torch.inference_mode():
            ref = run().float()
        out = out.float()
        result["precision"] = "bf16-autocast"
        result["check_max_abs_diff"] = float((out - ref).abs().max())
        result["top1_agreement"] = float((out.argmax(-1) == ref.argmax(-1)).float().mean())
    if args.official:
        with torch.inference_mode(), contextlib.suppress(Exception):
            ours = torch_model.load(args.model)(x)
            result["check_max_abs_diff"] = float((out - ours).abs().max())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
