"""bench/flops.py: the arithmetic of one ViT forward, from a checkpoint's config.json.

Counted as the engine's vit_gflop (engine/vit.c) counts it: multiply-adds x 2
of the patch embedding, of each layer's Q/K/V, output and two MLP products,
of attention's QK^T and PV over all tokens, and of the head. ViT-B/16: 35.1
GFLOP at 224, 111.0 at 384, as the performance issue counts them.
bench/run.py turns images/s into a share of the CPU's FMA peak with it;
bench/profile.py the GEMM micro-kernel's and attention's CPU time into rates.
"""
import json
import os


def vit_gflop(model_dir, h, w=None):
    """{"gemm", "attention", "head", "total"} in GFLOP for one h x w image
    ("gemm": what goes through the engine's GEMM micro-kernel: patch
    embedding, Q/K/V, output, MLP), or None if config.json cannot be read
    or lacks a key."""
    w = w or h
    try:
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
            c = json.load(f)
        D, inter, L, P = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["patch_size"]
        C, classes, mlp = c.get("num_channels", 3), c.get("num_class", 1000), c.get("mlp_intermediate", 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    patches = (h // P) * (w // P)
    T = patches + 1  # and the class token
    gemm = 2.0 * (patches * C * P * P * D + L * T * (4 * D * D + 2 * D * inter))
    attention = 2.0 * L * 2 * T * T * D
    head = 2.0 * (D * mlp + mlp * classes if mlp else D * classes)
    return {"gemm": gemm / 1e9, "attention": attention / 1e9, "head": head / 1e9,
            "total": (gemm + attention + head) / 1e9}
