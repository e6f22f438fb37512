#!/usr/bin/python3
"""bench/bf16_agreement.py: does opt-in bf16 compute pick the same class as fp32?

    bench/bf16_agreement.py [--classify build-bench/comrope-classify] [--model models/fashion-comrope-ld]
                            [--count 10000] [--threads 2] [--out bench/out/bf16_agreement.json]

The bundled default model on the Fashion-MNIST test set (Debian's
dataset-fashion-mnist, read by tools/fashion_mnist.py), normalized as the
model was trained (ToTensor, Normalize(0.5, 0.5)) and written as .npy
files [1000, 1, 28, 28] (a file is one forward: the arena grows to the
largest) that comrope-classify runs at their own size, once with
--precision fp32 and once with bf16. Prints and writes (JSON): top-1
agreement of bf16 with fp32, and each precision's accuracy against the
labels. The issue's target: agreement >= 99%. Numpy only (no torch).
Exits 2 (with {"skipped": ...}) where the CPU has no AVX512-BF16; any
other failure is an error (exit 1).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import fashion_mnist  # noqa: E402


def cpu_has_bf16():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return any(ln.startswith("flags") and "avx512_bf16" in ln.split() for ln in f)
    except OSError:
        return False


def classify(a, files, precision):
    """Top-1 class per image, in file order, or (None, error)."""
    cmd = [a.classify, "--model", a.model, "--top-k", "1", "--threads", str(a.threads),
           "--precision", precision] + files
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        return None, p.stderr.strip() or p.stdout.strip()[-500:]
    top = {}
    for line in p.stdout.splitlines():
        rec = json.loads(line)
        if "error" in rec:
            return None, f"{rec.get('file')}: {rec['error']}"
        top[(files.index(rec["file"]), rec["index"])] = rec["top"][0]["index"]
    print(f"bf16_agreement: {precision}: {len(top)} images in {time.time() - t0:.1f} s", flush=True)
    return np.array([top[k] for k in sorted(top)]), None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classify", default=os.path.join(ROOT, "build-bench", "comrope-classify"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "fashion-comrope-ld"))
    ap.add_argument("--count", type=int, default=10000, help="first COUNT test images (default all 10000)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "bf16_agreement.json"))
    a = ap.parse_args()
    if a.count < 1:
        sys.exit("bf16_agreement: --count must be at least 1")
    images, labels = fashion_mnist.load("test")
    images, labels = images[:a.count], labels[:a.count]
    x = ((images.astype(np.float32) / 255.0 - 0.5) / 0.5)[:, None, :, :]
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    if not cpu_has_bf16():
        doc = {"skipped": "this CPU has no AVX512-BF16"}
        print(json.dumps(doc))
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
        return 2
    base, files = os.path.splitext(a.out)[0], []
    for i in range(0, len(x), 1000):
        files.append(f"{base}.inputs-{i // 1000:02d}.npy")
        np.save(files[-1], x[i:i + 1000])
    fp32, err = classify(a, files, "fp32")
    if fp32 is None:
        sys.exit(f"bf16_agreement: the fp32 run failed: {err}")
    bf16, err = classify(a, files, "bf16")
    if bf16 is None:
        sys.exit(f"bf16_agreement: the bf16 run failed: {err}")
    n = len(labels)
    if len(fp32) != n or len(bf16) != n:
        sys.exit(f"bf16_agreement: {len(fp32)} fp32 and {len(bf16)} bf16 results for {n} images")
    doc = {"model": os.path.relpath(a.model, ROOT), "images": n,
           "agreement": float(np.mean(fp32 == bf16)), "disagree": int(np.sum(fp32 != bf16)),
           "fp32_top1": float(np.mean(fp32 == labels)), "bf16_top1": float(np.mean(bf16 == labels))}
    print(json.dumps(doc))
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
