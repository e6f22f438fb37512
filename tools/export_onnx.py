#!/usr/bin/python3
"""Export a ComRoPE ViT checkpoint to ONNX at one fixed resolution.

What a user who serves the model with ONNX Runtime does: one export per
resolution, every position-dependent quantity (the rotation cos / sin
tables, or LieRE's block matrices, and the sampled APE) baked in as
constants. The graph is tools/torch_model.py's efficient model (fused QKV,
Schur-folded pairwise rotation), float32, batch dimension dynamic.

    /usr/bin/python3 tools/export_onnx.py MODEL_DIR --resolution 224 --out vit-224.onnx
        [--opset 17] [--static-batch B] [--sample-dir DIR]

--resolution is N or HxW (multiples of patch_size). Input "pixel_values"
float32 [batch, C, h, w] (already normalized), output "logits" float32
[batch, num_class]. The file is checked with onnx.checker. --sample-dir
writes sample_input.f32 (2 images, raw little-endian float32, C order) and
sample_logits.f32 (the PyTorch model's logits for them) so that a runtime
can be checked against it (bench/ort_bench.js --check-dir DIR).
"""
import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import onnx
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_model  # noqa: E402


def parse_resolution(text):
    parts = text.lower().split("x")
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    if len(parts) == 2:
        return int(parts[0]), int(parts[1])
    raise ValueError(f"--resolution: expected N or HxW, got {text!r}")


def export(model_dir, h, w, out, opset=17, static_batch=0, sample_dir=None, log=print):
    t0 = time.time()
    model = torch_model.load(model_dir)
    cfg = model.cfg
    if h % cfg["patch_size"] or w % cfg["patch_size"]:
        raise ValueError(f"resolution {h}x{w} is not a multiple of patch_size {cfg['patch_size']}")
    fixed = model.fixed_resolution(h, w).eval()
    C = cfg["num_channels"]
    dummy = torch.from_numpy(np.random.default_rng(0).standard_normal(
        (static_batch or 1, C, h, w)).astype(np.float32))
    dynamic = None if static_batch else {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}
    log(f"export_onnx: {cfg['custom_pe_type']} D={cfg['hidden_size']} L={cfg['num_hidden_layers']} "
        f"at {h}x{w} -> {out} (opset {opset}, batch {static_batch or 'dynamic'})")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(fixed, (dummy,), out, input_names=["pixel_values"],
                          output_names=["logits"], dynamic_axes=dynamic, opset_version=opset,
                          do_constant_folding=True)
    proto = onnx.load(out)
    meta = {"source": os.path.abspath(model_dir), "custom_pe_type": cfg["custom_pe_type"],
            "resolution": f"{h}x{w}", "exporter": "tools/export_onnx.py"}
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, out)
    onnx.checker.check_model(out)
    size = os.path.getsize(out)
    log(f"export_onnx: onnx.checker ok, {len(proto.graph.node)} nodes, {size / 1e6:.1f} MB, "
        f"{time.time() - t0:.1f} s")
    if sample_dir:
        os.makedirs(sample_dir, exist_ok=True)
        x = np.random.default_rng([h, w]).standard_normal((2, C, h, w)).astype(np.float32)
        with torch.inference_mode():
            y = model(torch.from_numpy(x)).numpy().astype(np.float32)
        x.tofile(os.path.join(sample_dir, "sample_input.f32"))
        y.tofile(os.path.join(sample_dir, "sample_logits.f32"))
        with open(os.path.join(sample_dir, "sample.json"), "w", encoding="utf-8") as f:
            json.dump({"input_shape": list(x.shape), "logits_shape": list(y.shape)}, f)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--resolution", required=True, help="N or HxW")
    ap.add_argument("--out", required=True)
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--static-batch", type=int, default=0, help="fixed batch size (default: dynamic)")
    ap.add_argument("--sample-dir", help="also write a sample input and its PyTorch logits here")
    args = ap.parse_args(argv)
    h, w = parse_resolution(args.resolution)
    export(args.model_dir, h, w, args.out, args.opset, args.static_batch, args.sample_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
