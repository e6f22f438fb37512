#!/usr/bin/python3
"""Independent float64 reference forward of a ComRoPE ViT checkpoint.

Written from docs/spec (shared/spec/model.md), not from the official
model.py, so that it can check both the official code and the C engine.
Everything is computed in float64 from the weights as stored (an F16/BF16
checkpoint is used with its rounded values). Rotations use a direct
torch.matrix_exp of every block (no Schur decomposition: the engine uses one,
this must stay an independent check).

CLI:
    /usr/bin/python3 tools/reference.py MODEL_DIR input.npy [--out logits.npy]
input.npy holds pixels [N, C, h, w] (or [C, h, w]), already normalized;
h and w must be multiples of patch_size. Prints the logits, one row per image.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

DTYPE = torch.float64

# config.json defaults: the CLIP vision ones, then the ComRoPE ones
DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
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
    "num_class": 1000,
    "mlp_intermediate": 0,
}
PE_TYPES = ("raw", "none", "vanilla-rope", "liere", "comrope-ap", "comrope-ld")
ROPE_TYPES = ("vanilla-rope", "liere", "comrope-ap", "comrope-ld")
ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
VM = "vision_model."


# --------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------

def config_from_dict(raw):
    """Merge defaults, check the rules of the spec, add derived fields."""
    cfg = dict(DEFAULTS)
    for key in DEFAULTS:
        if key in raw:
            cfg[key] = raw[key]
    if cfg["custom_pe_type"] not in PE_TYPES:
        raise ValueError(f"custom_pe_type: unknown value {cfg['custom_pe_type']!r}")
    if cfg["hidden_act"] not in ACTIVATIONS:
        raise ValueError(f"hidden_act: unsupported value {cfg['hidden_act']!r}")
    if cfg["num_axes"] != 2:
        raise ValueError("num_axes: only 2 (images) is supported")
    if not cfg["prepend_cls"]:
        raise ValueError("prepend_cls: false is not supported")
    D, H, b = cfg["hidden_size"], cfg["num_attention_heads"], cfg["block_size"]
    if D % H:
        raise ValueError("num_attention_heads: does not divide hidden_size")
    hd = D // H
    pe = cfg["custom_pe_type"]
    if pe in ROPE_TYPES and hd % b:
        raise ValueError("block_size: does not divide head_dim")
    if pe == "vanilla-rope" and (b != 2 or hd % (2 * cfg["num_axes"])):
        raise ValueError("vanilla-rope needs block_size 2 and head_dim divisible by 2*num_axes")
    if pe == "comrope-ap" and (hd % cfg["num_axes"] or (hd // cfg["num_axes"]) % b):
        raise ValueError("comrope-ap needs head_dim/num_axes divisible by block_size")
    cfg["head_dim"] = hd
    # the official naming is inverted: keep_ape=true means there is NO table
    cfg["has_ape"] = pe == "raw" or not cfg["keep_ape"]
    cfg["ape_side"] = cfg["image_size"] // cfg["patch_size"]
    if "id2label" in raw:
        cfg["id2label"] = raw["id2label"]
    return cfg


def load_model(model_dir):
    """-> (cfg, weights): weights maps tensor names to float64 torch tensors."""
    with open(os.path.join(model_dir, "config.json"), "r", encoding="utf-8") as f:
        cfg = config_from_dict(json.load(f))
    arrays, _, _ = safetensors_io.read_file(os.path.join(model_dir, "model.safetensors"))
    weights = {}
    for name, a in arrays.items():
        if not np.all(np.isfinite(a)):
            raise ValueError(f"tensor {name} holds a NaN or an infinity")
        weights[name] = torch.from_numpy(a).to(DTYPE)
    return cfg, weights


# --------------------------------------------------------------------------
# positions, APE, rotations
# --------------------------------------------------------------------------

def positions(cfg, h, w):
    """[T, 2] float64: token 0 the class token, then patches row-major.

    Axis 0 is the row, axis 1 the column. With axis_scale a patch (r, c)
    sits at ((r+0.5)/Ph, (c+0.5)/Pw); without, at (r, c). The class token
    sits at (cls_position, cls_position) either way.
    """
    p = cfg["patch_size"]
    if h % p or w % p:
        raise ValueError(f"resolution {h}x{w} is not a multiple of patch_size {p}")
    Ph, Pw = h // p, w // p
    r = torch.arange(Ph, dtype=DTYPE)
    c = torch.arange(Pw, dtype=DTYPE)
    if cfg["axis_scale"]:
        r = (r + 0.5) / Ph
        c = (c + 0.5) / Pw
    grid = torch.stack(torch.meshgrid(r, c, indexing="ij"), dim=-1).reshape(-1, 2)
    cls = torch.full((1, 2), float(cfg["cls_position"]), dtype=DTYPE)
    return torch.cat([cls, grid], dim=0)


def sample_ape(table, pos):
    """Sample the APE table [1, P0, P0, D] at positions [T, 2] -> [T, D].

    The official code's grid_sample(align_corners=True, border) reduces to
    (closed form, see the spec): the row coordinate y = pos_0 * (P0-1),
    clamped to [0, P0-1], interpolated linearly between table rows; the
    column is always the middle x = (P0-1)/2 (for even P0 the average of the
    two middle columns); pos_1 is not used at all.
    """
    P0 = table.shape[1]
    # the middle column of every row: [P0, D]
    if P0 % 2 == 1:
        mid = table[0, :, (P0 - 1) // 2, :]
    else:
        mid = 0.5 * (table[0, :, P0 // 2 - 1, :] + table[0, :, P0 // 2, :])
    y = torch.clamp(pos[:, 0] * (P0 - 1), 0.0, float(P0 - 1))
    i0 = torch.floor(y).long()
    i1 = torch.clamp(i0 + 1, max=P0 - 1)
    t = (y - i0.to(DTYPE)).unsqueeze(1)
    return (1.0 - t) * mid[i0] + t * mid[i1]


def skew(F):
    """F - F^T over the last two dims."""
    return F - F.transpose(-1, -2)


def angle_matrices(cfg, weights, layer):
    """The generators A of one layer: [H or 1, num_axes, head_dim/b, b, b].

    R_j(pos) = expm(sum_a pos_a * A[:, a, j]).
    """
    pe = cfg["custom_pe_type"]
    hd, b, na = cfg["head_dim"], cfg["block_size"], cfg["num_axes"]
    nb = hd // b
    prefix = f"{VM}encoder.layers.{layer}.self_attn."
    if pe == "vanilla-rope":
        # pair k of axis a (k = 0..n-1) is block a*n + k, frequency theta^k
        n = hd // (2 * na)
        A = torch.zeros(1, na, nb, 2, 2, dtype=DTYPE)
        for a in range(na):
            for k in range(n):
                t = float(cfg["theta_base"]) ** k
                A[0, a, a * n + k] = torch.tensor([[0.0, -t], [t, 0.0]], dtype=DTYPE)
        return A
    F = weights[prefix + "freqs"]
    if pe == "liere":
        # [H, num_axes, nb, b, b]: one generator per axis, not commuting
        return skew(F) / float(cfg["scale_factor"])
    if pe == "comrope-ap":
        # [H, 1, nb, b, b]: block j rotates with axis j mod num_axes only
        S = skew(F)[:, 0]
        A = torch.zeros(S.shape[0], na, nb, b, b, dtype=DTYPE)
        for j in range(nb):
            A[:, j % na, j] = S[:, j]
        return A
    if pe == "comrope-ld":
        # every axis uses the same block, scaled by multiplier[0, a, j]
        S = skew(F)  # [H, 1, nb, b, b]
        m = weights[prefix + "multiplier"]  # [1, num_axes, nb, 1, 1]
        return S * m
    raise ValueError(f"no rotation for custom_pe_type {pe!r}")


def rotation(cfg, A, pos):
    """Full block-diagonal rotations [T, H', head_dim, head_dim] (H' = A's heads).

    Block j of token t: expm(sum_a pos[t, a] * A[h, a, j]), by torch.matrix_exp
    in float64 on every block directly.
    """
    hd, b = cfg["head_dim"], cfg["block_size"]
    # [T, 1, num_axes, 1, 1, 1] * [H', num_axes, nb, b, b] summed over the axes
    gen = (pos[:, None, :, None, None, None] * A[None]).sum(dim=2)  # [T, H', nb, b, b]
    blocks = torch.matrix_exp(gen)
    T, Hh, nb = blocks.shape[:3]
    R = torch.zeros(T, Hh, hd, hd, dtype=DTYPE)
    for j in range(nb):
        R[:, :, j * b:(j + 1) * b, j * b:(j + 1) * b] = blocks[:, :, j]
    return R


# --------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------

def layer_norm(x, weight, bias, eps):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased, as LayerNorm
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def activation(name, x):
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if name == "relu":
        return torch.clamp(x, min=0.0)
    raise ValueError(f"hidden_act: unsupported value {name!r}")


def linear(x, weights, name):
    """y = x W^T + b with W stored [out, in]."""
    return x @ weights[name + ".weight"].T + weights[name + ".bias"]


def patch_tokens(cfg, weights, pixels):
    """[N, C, h, w] -> [N, Ph*Pw, D]; token order row-major over the grid."""
    p = cfg["patch_size"]
    N, C, h, w = pixels.shape
    Ph, Pw = h // p, w // p
    W = weights[VM + "embeddings.patch_embedding.weight"]  # [D, C, p, p]
    patches = pixels.reshape(N, C, Ph, p, Pw, p).permute(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(N, Ph * Pw, C * p * p)
    return patches @ W.reshape(W.shape[0], -1).T


def attention(cfg, weights, layer, x, R):
    """Multi-head self-attention with q and k rotated by R [T, H or 1, hd, hd]."""
    N, T, D = x.shape
    H, hd = cfg["num_attention_heads"], cfg["head_dim"]
    prefix = f"{VM}encoder.layers.{layer}.self_attn."
    q = linear(x, weights, prefix + "q_proj") * hd ** -0.5
    k = linear(x, weights, prefix + "k_proj")
    v = linear(x, weights, prefix + "v_proj")
    q, k, v = (t.reshape(N, T, H, hd) for t in (q, k, v))
    if R is not None:
        R = R.expand(T, H, hd, hd)
        q = torch.einsum("thij,nthj->nthi", R, q)  # q' = R q (column vectors)
        k = torch.einsum("thij,nthj->nthi", R, k)
    scores = torch.einsum("nthd,nshd->nhts", q, k)
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("nhts,nshd->nthd", probs, v).reshape(N, T, D)
    return linear(out, weights, prefix + "out_proj")


def forward(cfg, weights, pixels, stages=None):
    """pixels [N, C, h, w] (any float) -> logits [N, num_class] float64.
    stages (a list, or None): gets the residual stream x [N, T, D] after the
    embeddings and pre_layrnorm (stage 0) and after each layer l (stage l+1),
    the engine's stages (vit.h, vit_observer)."""
    pixels = torch.as_tensor(np.asarray(pixels)).to(DTYPE)
    N, C, h, w = pixels.shape
    if C != cfg["num_channels"]:
        raise ValueError(f"input has {C} channels, the model wants {cfg['num_channels']}")
    eps = float(cfg["layer_norm_eps"])
    pos = positions(cfg, h, w)

    cls = weights[VM + "embeddings.class_embedding"].expand(N, 1, -1)
    x = torch.cat([cls, patch_tokens(cfg, weights, pixels)], dim=1)  # [N, T, D]
    if cfg["has_ape"]:
        x = x + sample_ape(weights[VM + "embeddings.position_embedding"], pos)
    x = layer_norm(x, weights[VM + "pre_layrnorm.weight"], weights[VM + "pre_layrnorm.bias"], eps)
    if stages is not None:
        stages.append(x.clone())

    for i in range(cfg["num_hidden_layers"]):
        lp = f"{VM}encoder.layers.{i}."
        R = None
        if cfg["custom_pe_type"] in ROPE_TYPES:
            R = rotation(cfg, angle_matrices(cfg, weights, i), pos)
        hN = layer_norm(x, weights[lp + "layer_norm1.weight"], weights[lp + "layer_norm1.bias"], eps)
        x = x + attention(cfg, weights, i, hN, R)
        hN = layer_norm(x, weights[lp + "layer_norm2.weight"], weights[lp + "layer_norm2.bias"], eps)
        x = x + linear(activation(cfg["hidden_act"], linear(hN, weights, lp + "mlp.fc1")),
                       weights, lp + "mlp.fc2")
        if stages is not None:
            stages.append(x.clone())

    pooled = layer_norm(x[:, 0], weights[VM + "post_layernorm.weight"],
                        weights[VM + "post_layernorm.bias"], eps)
    if cfg["mlp_intermediate"] > 0:
        hidden = torch.clamp(linear(pooled, weights, "classification_head.0"), min=0.0)
        return linear(hidden, weights, "classification_head.2")
    return linear(pooled, weights, "classification_head")


def logits_for_dir(model_dir, pixels):
    cfg, weights = load_model(model_dir)
    return forward(cfg, weights, pixels).numpy()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("input", help=".npy with pixels [N, C, h, w] or [C, h, w]")
    ap.add_argument("--out", help="also save the logits (float64) to this .npy")
    ap.add_argument("--stages-out", help="also save the residual stream after every stage (float64, "
                                         "[stages, N, T, D]: the embeddings, then each layer) to this .npy")
    args = ap.parse_args(argv)
    pixels = np.load(args.input)
    if pixels.ndim == 3:
        pixels = pixels[None]
    cfg, weights = load_model(args.model_dir)
    stages = [] if args.stages_out else None
    logits = forward(cfg, weights, pixels, stages).numpy()
    if args.stages_out:
        np.save(args.stages_out, torch.stack(stages).numpy())
    np.set_printoptions(precision=10, linewidth=200, suppress=False)
    for row in logits:
        print(" ".join(f"{v:.12g}" for v in row))
    if args.out:
        np.save(args.out, logits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
