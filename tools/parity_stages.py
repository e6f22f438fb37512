#!/usr/bin/python3
"""parity_stages.py: which layer of the engine leaves the reference first?

    /usr/bin/python3 tools/parity_stages.py --model DIR --input PIXELS.npy
        [--classify build/comrope-classify] [--tol 1e-4] [-- CLI options...]

Runs comrope-classify --dump-stages on PIXELS.npy ([N, C, h, w] or
[C, h, w], normalized) and tools/reference.py's forward on the same
pixels, then compares the residual stream after every stage (stage 0: the
embeddings and pre_layrnorm; stage l + 1: after layer l), image by image,
as llm.c's test_gpt2 checks each tensor by name. Prints the largest
difference of every stage and names the first one past --tol; exit 1 then.
Options after -- go to comrope-classify (--isa avx2, --threads 1, ...).
tests/test_parity.c runs the same check in CI on committed stage fixtures
(reference.py --stages-out).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--classify", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                                       "build", "comrope-classify"))
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args(argv)
    pixels = np.load(a.input)
    if pixels.ndim == 3:
        pixels = pixels[None]
    with tempfile.TemporaryDirectory() as d:
        p = subprocess.run([a.classify, "--model", a.model, "--dump-stages", d] + extra + [a.input],
                           capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"parity_stages: comrope-classify failed:\n{p.stderr}")
        cfg, weights = reference.load_model(a.model)
        stages = []
        reference.forward(cfg, weights, pixels, stages)
        first_bad = None
        for s, ref in enumerate(stages):
            worst, where = 0.0, ""
            for i in range(pixels.shape[0]):
                got = np.load(os.path.join(d, f"image{i}_stage{s}.npy")).astype(np.float64)
                diff = np.abs(got - ref[i].numpy())
                t, c = np.unravel_index(np.argmax(diff), diff.shape)
                if diff[t, c] > worst or not np.isfinite(diff[t, c]):
                    worst, where = float(diff[t, c]), f"image {i} token {t} channel {c}"
            name = "embeddings + pre_layrnorm" if s == 0 else f"after layer {s - 1}"
            bad = not (worst <= a.tol)
            print(f"stage {s:2d} ({name}): max |engine - reference| = {worst:.3g} at {where}"
                  f"{'  <-- past ' + str(a.tol) if bad else ''}")
            if bad and first_bad is None:
                first_bad = (s, name)
    if first_bad:
        print(f"parity_stages: first divergent stage: {first_bad[0]} ({first_bad[1]})")
        return 1
    print("parity_stages: every stage within", a.tol)
    return 0


if __name__ == "__main__":
    sys.exit(main())
