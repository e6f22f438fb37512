#!/usr/bin/python3
"""Build the parity fixtures of tests/fixtures/parity.

For every case below: a tiny random checkpoint in the official layout
(config.json with the keys transformers 4.46 writes for the official
CustomVITForClassificationConfig, model.safetensors by tools/safetensors_io),
seeded inputs at four resolutions (the training grid, a smaller, a larger
and a non-square one) and the logits of tools/reference.py, computed from the
weights as stored (F16/BF16 cases from their rounded values).

A few cases also get unit-test arrays at one non-square resolution:
positions, the layer-0 rotations and the sampled APE.

Usage: /usr/bin/python3 tools/make_fixtures.py [--out tests/fixtures/parity]
Deterministic: the same tree comes out on every run.
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402
import safetensors_io  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "parity")
BATCH = 2

# Settings shared by every case unless the case overrides them.
BASE = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_channels": 3,
    "image_size": 16,
    "patch_size": 4,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "custom_pe_type": "raw",
    "keep_ape": False,
    "block_size": 2,
    "num_axes": 2,
    "axis_scale": True,
    "prepend_cls": True,
    "cls_position": 0.5,
    "theta_base": 1e-100,
    "scale_factor": 1e100,
    "num_class": 7,
    "mlp_intermediate": 0,
}

# name, seed, config overrides, storage dtype, resolutions [(h, w)], extras
# resolution (or None). The first resolution is the training grid
# (P0 * patch_size), then a smaller, a larger and a non-square one.
# Reminder: keep_ape=True means *no* APE table (official naming).
CASES = [
    ("raw_p0even", 1, {"custom_pe_type": "raw"}, "F32",
     [(16, 16), (8, 8), (24, 24), (8, 16)], None),
    ("raw_p0odd", 2, {"custom_pe_type": "raw", "image_size": 20, "hidden_size": 24,
                      "intermediate_size": 96, "hidden_act": "gelu", "num_class": 5}, "F32",
     [(20, 20), (12, 12), (28, 28), (20, 12)], (20, 12)),
    # image_size not a multiple of the patch: P0 = 18 // 4 = 4, training grid 16
    ("raw_floor", 3, {"custom_pe_type": "raw", "image_size": 18, "hidden_size": 16,
                      "num_attention_heads": 1, "intermediate_size": 48, "hidden_act": "relu",
                      "num_class": 6, "layer_norm_eps": 1e-6}, "F32",
     [(16, 16), (8, 8), (24, 24), (12, 20)], None),
    ("none", 4, {"custom_pe_type": "none", "keep_ape": True, "hidden_act": "gelu_new"}, "F32",
     [(16, 16), (8, 8), (24, 24), (16, 8)], None),
    ("vanilla_ape", 5, {"custom_pe_type": "vanilla-rope", "keep_ape": False, "theta_base": 0.3,
                        "hidden_act": "gelu_pytorch_tanh"}, "F32",
     [(16, 16), (8, 8), (24, 24), (8, 16)], None),
    ("vanilla_noscale", 6, {"custom_pe_type": "vanilla-rope", "keep_ape": True, "theta_base": 0.3,
                            "axis_scale": False}, "F32",
     [(16, 16), (12, 12), (20, 20), (12, 16)], None),
    ("liere_b2", 7, {"custom_pe_type": "liere", "keep_ape": True, "block_size": 2,
                     "scale_factor": 10.0}, "F32",
     [(16, 16), (8, 8), (24, 24), (16, 8)], None),
    ("liere_b3", 8, {"custom_pe_type": "liere", "keep_ape": True, "block_size": 3,
                     "scale_factor": 1.0, "hidden_size": 24, "intermediate_size": 72,
                     "image_size": 12, "hidden_act": "gelu"}, "F32",
     [(12, 12), (8, 8), (20, 20), (8, 16)], (8, 16)),
    ("comrope_ap_b2", 9, {"custom_pe_type": "comrope-ap", "keep_ape": True, "block_size": 2}, "F32",
     [(16, 16), (8, 8), (24, 24), (8, 16)], None),
    ("comrope_ap_b4", 10, {"custom_pe_type": "comrope-ap", "keep_ape": False, "block_size": 4,
                           "hidden_act": "gelu_new"}, "F32",
     [(16, 16), (12, 12), (24, 24), (16, 8)], (16, 8)),
    ("comrope_ld_b2", 11, {"custom_pe_type": "comrope-ld", "keep_ape": True, "block_size": 2}, "F32",
     [(16, 16), (8, 8), (24, 24), (8, 16)], None),
    ("comrope_ld_b3", 12, {"custom_pe_type": "comrope-ld", "keep_ape": True, "block_size": 3,
                           "hidden_size": 24, "intermediate_size": 96, "image_size": 24,
                           "num_class": 10}, "F32",
     [(24, 24), (16, 16), (32, 32), (20, 12)], (20, 12)),
    # axis_scale off: positions are (r, c) in patch units, APE rows clamp at P0-1
    ("comrope_ld_noscale_cls0", 13, {"custom_pe_type": "comrope-ld", "keep_ape": False,
                                     "axis_scale": False, "cls_position": 0.0,
                                     "hidden_act": "relu"}, "F32",
     [(16, 16), (8, 8), (24, 24), (12, 20)], None),
    ("gray_ld", 14, {"custom_pe_type": "comrope-ld", "keep_ape": False, "num_channels": 1,
                     "hidden_act": "gelu", "num_class": 5}, "F32",
     [(16, 16), (8, 8), (24, 24), (8, 16)], None),
    ("mlp_head_ap", 15, {"custom_pe_type": "comrope-ap", "keep_ape": False, "mlp_intermediate": 24,
                         "hidden_act": "relu", "num_class": 5,
                         "id2label": {"0": "cat", "1": "dog", "2": "bird", "3": "fish", "4": "frog"}},
     "F32", [(16, 16), (8, 8), (24, 24), (16, 8)], None),
    ("f16_ld", 16, {"custom_pe_type": "comrope-ld", "keep_ape": False,
                    "hidden_act": "gelu_pytorch_tanh"}, "F16",
     [(16, 16), (8, 8), (24, 24), (8, 16)], None),
    ("bf16_liere", 17, {"custom_pe_type": "liere", "keep_ape": False, "scale_factor": 10.0}, "BF16",
     [(16, 16), (8, 8), (24, 24), (16, 8)], None),
]

# Scales of the random weights: large enough that the position encoding
# changes the logits clearly (see the "PE effect" column printed per case).
FREQ_STD = 2.0        # entries of F in F - F^T (LieRE: times scale_factor)
MULTIPLIER_STD = 1.5  # comrope-ld multipliers
APE_STD = 1.0
QK_GAIN = 1.5         # q/k projections: std QK_GAIN / sqrt(D), peaked attention

TORCH_DTYPE_NAME = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def hf_config_json(cfg, storage_dtype):
    """config.json as the official save_pretrained (transformers 4.46) writes it:
    the diff dict, i.e. every CLIP and ComRoPE key, sorted, indent 2."""
    out = {
        "_attn_implementation_autoset": True,
        "architectures": ["CustomVITForClassification"],
        "attention_dropout": 0.0,
        "init_std": 1.0,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "model_type": "clip_vision_model",
        "num_frames": 16,
        "projection_dim": 512,
        "torch_dtype": TORCH_DTYPE_NAME[storage_dtype],
        "transformers_version": "4.46.2",
    }
    for key in BASE:
        out[key] = cfg[key]
    for key in ("cls_position", "theta_base", "scale_factor", "layer_norm_eps"):
        out[key] = float(out[key])
    if "id2label" in cfg:
        out["id2label"] = {str(k): v for k, v in cfg["id2label"].items()}
        out["label2id"] = {v: int(k) for k, v in cfg["id2label"].items()}
    return json.dumps(out, indent=2, sort_keys=True) + "\n"


def random_weights(cfg, rng):
    """name -> float64 ndarray, the tensor set of the official model."""
    D, I, C, p = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_channels"], cfg["patch_size"]
    H, hd, b = cfg["num_attention_heads"], cfg["head_dim"], cfg["block_size"]
    pe, K = cfg["custom_pe_type"], cfg["num_class"]
    vm = reference.VM
    w = {}

    def normal(shape, std):
        return rng.standard_normal(shape) * std

    def add_norm(name):
        w[name + ".weight"] = 1.0 + normal((D,), 0.1)
        w[name + ".bias"] = normal((D,), 0.1)

    def add_linear(name, n_out, n_in, std):
        w[name + ".weight"] = normal((n_out, n_in), std)
        w[name + ".bias"] = normal((n_out,), 0.1)

    w[vm + "embeddings.patch_embedding.weight"] = normal((D, C, p, p), (C * p * p) ** -0.5)
    w[vm + "embeddings.class_embedding"] = normal((D,), 1.0)
    if cfg["has_ape"]:
        P0 = cfg["ape_side"]
        w[vm + "embeddings.position_embedding"] = normal((1, P0, P0, D), APE_STD)
    add_norm(vm + "pre_layrnorm")
    for i in range(cfg["num_hidden_layers"]):
        lp = f"{vm}encoder.layers.{i}."
        add_norm(lp + "layer_norm1")
        add_linear(lp + "self_attn.q_proj", D, D, QK_GAIN * D ** -0.5)
        add_linear(lp + "self_attn.k_proj", D, D, QK_GAIN * D ** -0.5)
        add_linear(lp + "self_attn.v_proj", D, D, D ** -0.5)
        add_linear(lp + "self_attn.out_proj", D, D, D ** -0.5)
        nb = hd // b
        if pe == "liere":
            # stored values are scale_factor times the generator entries
            w[lp + "self_attn.freqs"] = normal((H, 2, nb, b, b), FREQ_STD * cfg["scale_factor"])
        elif pe in ("comrope-ap", "comrope-ld"):
            w[lp + "self_attn.freqs"] = normal((H, 1, nb, b, b), FREQ_STD)
        if pe == "comrope-ld":
            w[lp + "self_attn.multiplier"] = normal((1, 2, nb, 1, 1), MULTIPLIER_STD)
        add_norm(lp + "layer_norm2")
        add_linear(lp + "mlp.fc1", I, D, D ** -0.5)
        add_linear(lp + "mlp.fc2", D, I, I ** -0.5)
    add_norm(vm + "post_layernorm")
    if cfg["mlp_intermediate"] > 0:
        M = cfg["mlp_intermediate"]
        add_linear("classification_head.0", M, D, D ** -0.5)
        add_linear("classification_head.2", K, M, M ** -0.5)
    else:
        add_linear("classification_head", K, D, D ** -0.5)
    return w


def save_npy(path, array, dtype):
    np.save(path, np.ascontiguousarray(array, dtype=dtype))


def pe_effect(cfg, weights, pixels, logits):
    """Largest logit change when all position information is removed, relative
    to the largest logit: a check that the fixture exercises the PE."""
    bare = dict(cfg, custom_pe_type="none", has_ape=False)
    plain = reference.forward(bare, weights, pixels).numpy()
    return np.abs(plain - logits).max() / np.abs(logits).max()


def build_case(out_dir, case):
    name, seed, overrides, storage, resolutions, extras_res = case
    raw_cfg = dict(BASE, **overrides)
    cfg = reference.config_from_dict(raw_cfg)
    case_dir = os.path.join(out_dir, name)
    os.makedirs(case_dir)

    rng = np.random.default_rng(seed)
    safetensors_io.write_file(os.path.join(case_dir, "model.safetensors"),
                              random_weights(cfg, rng), dtype=storage)
    with open(os.path.join(case_dir, "config.json"), "w", encoding="utf-8") as f:
        f.write(hf_config_json(raw_cfg, storage))

    # From here on, everything is computed from the files just written.
    cfg, weights = reference.load_model(case_dir)
    entries, extras = [], []
    for (h, w) in resolutions:
        irng = np.random.default_rng([seed, h, w])
        pixels = irng.standard_normal((BATCH, cfg["num_channels"], h, w)).astype(np.float32)
        logits = reference.forward(cfg, weights, pixels).numpy()
        tag = f"{h}x{w}"
        save_npy(os.path.join(case_dir, f"input_{tag}.npy"), pixels, "<f4")
        save_npy(os.path.join(case_dir, f"logits_{tag}.npy"), logits, "<f8")
        entries.append({"model": name, "pe": cfg["custom_pe_type"], "height": h, "width": w,
                        "input": f"{name}/input_{tag}.npy", "logits": f"{name}/logits_{tag}.npy"})
        print(f"  {name:24s} {tag:>6s}  |logits|max {np.abs(logits).max():8.4f}"
              f"  PE effect {pe_effect(cfg, weights, pixels, logits):6.3f}")

    if extras_res is not None:
        h, w = extras_res
        tag = f"{h}x{w}"
        pos = reference.positions(cfg, h, w)
        save_npy(os.path.join(case_dir, f"positions_{tag}.npy"), pos.numpy(), "<f8")
        entry = {"model": name, "height": h, "width": w,
                 "positions": f"{name}/positions_{tag}.npy", "rotation_l0": None, "ape": None}
        if cfg["custom_pe_type"] in reference.ROPE_TYPES:
            R = reference.rotation(cfg, reference.angle_matrices(cfg, weights, 0), pos)
            R = R.expand(-1, cfg["num_attention_heads"], -1, -1)
            save_npy(os.path.join(case_dir, f"rotation_l0_{tag}.npy"), R.numpy(), "<f8")
            entry["rotation_l0"] = f"{name}/rotation_l0_{tag}.npy"
        if cfg["has_ape"]:
            ape = reference.sample_ape(weights[reference.VM + "embeddings.position_embedding"], pos)
            save_npy(os.path.join(case_dir, f"ape_{tag}.npy"), ape.numpy(), "<f8")
            entry["ape"] = f"{name}/ape_{tag}.npy"
        extras.append(entry)
        print(f"  {name:24s} {tag:>6s}  extras: " +
              ", ".join(k for k in ("positions", "rotation_l0", "ape") if entry[k]))
    return entries, extras


def tree_size(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    args = ap.parse_args(argv)
    out_dir = os.path.abspath(args.out)

    # Start from an empty tree so that no stale file survives a regeneration;
    # only a folder that this tool made (it has a manifest) is removed.
    if os.path.exists(out_dir):
        if not os.path.exists(os.path.join(out_dir, "manifest.json")):
            sys.exit(f"{out_dir} exists and has no manifest.json; not deleting it")
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    torch.set_num_threads(1)  # identical float64 sums on every machine

    manifest = {"cases": [], "extras": []}
    for case in CASES:
        print(f"case {case[0]} ({case[2]['custom_pe_type']}, {case[3]})")
        entries, extras = build_case(out_dir, case)
        manifest["cases"].extend(entries)
        manifest["extras"].extend(extras)
    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"wrote {len(manifest['cases'])} cases, {len(manifest['extras'])} extras,"
          f" {tree_size(out_dir) / 1e6:.2f} MB in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
