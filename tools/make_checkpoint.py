#!/usr/bin/env python3
"""Write a random-weight checkpoint of a real model size, in the official format.

For benchmarks and smoke tests of full-size models (e.g. ViT-B/16 at 224),
not for parity fixtures (tools/make_fixtures.py makes those). Reuses the
fixture generator's weight initialization and config writer, so the result
is exactly what the official save_pretrained writes.

    /usr/bin/python3 tools/make_checkpoint.py --preset vit-b16 --pe comrope-ap \
        --image-size 224 --out /tmp/vitb16-ap [--seed 0] [--keep-ape]

The checkpoint is large (about 350 MB for ViT-B in F32): do not commit it.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures  # noqa: E402
import reference  # noqa: E402
import safetensors_io  # noqa: E402

PRESETS = {
    # name: hidden, intermediate, layers, heads, patch
    "vit-ti16": (192, 768, 12, 3, 16),
    "vit-s16": (384, 1536, 12, 6, 16),
    "vit-b16": (768, 3072, 12, 12, 16),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="vit-b16")
    ap.add_argument("--pe", choices=sorted(reference.PE_TYPES), default="comrope-ap")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--block-size", type=int, default=2)
    ap.add_argument("--num-class", type=int, default=1000)
    ap.add_argument("--keep-ape", action="store_true",
                    help="official meaning: no APE table (ignored for raw)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["F32", "F16", "BF16"], default="F32")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    D, I, L, H, p = PRESETS[args.preset]
    raw_cfg = dict(make_fixtures.BASE, hidden_size=D, intermediate_size=I, num_hidden_layers=L,
                   num_attention_heads=H, patch_size=p, image_size=args.image_size,
                   custom_pe_type=args.pe, keep_ape=args.keep_ape, block_size=args.block_size,
                   num_class=args.num_class, theta_base=1e-4 if args.pe == "vanilla-rope" else 1e-100,
                   scale_factor=1.0 if args.pe == "liere" else 1e100)
    cfg = reference.config_from_dict(raw_cfg)
    os.makedirs(args.out, exist_ok=True)
    print(f"make_checkpoint: {args.preset} {args.pe} at {args.image_size}: random weights ...",
          flush=True)
    weights = make_fixtures.random_weights(cfg, np.random.default_rng(args.seed))
    n = sum(v.size for v in weights.values())
    print(f"make_checkpoint: {n / 1e6:.1f} M parameters, writing {args.out}", flush=True)
    safetensors_io.write_file(os.path.join(args.out, "model.safetensors"), weights,
                              dtype=args.dtype)
    with open(os.path.join(args.out, "config.json"), "w", encoding="utf-8") as f:
        f.write(make_fixtures.hf_config_json(raw_cfg, args.dtype))
    print("make_checkpoint: done", flush=True)


if __name__ == "__main__":
    main()
