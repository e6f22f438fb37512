#!/usr/bin/python3
"""Efficient float32 PyTorch inference model of a ComRoPE ViT checkpoint.

The "PyTorch eager" side of the benchmark (bench/torch_bench.py) and the
model that tools/export_onnx.py exports. It reads a checkpoint directory in
the official format (config.json + model.safetensors, via safetensors_io)
and computes the forward of shared/spec/model.md, inference only:

  * q, k and v projections fused into one [3D, D] linear; q's head_dim^-0.5
    folded into its weights.
  * comrope-ap / comrope-ld: every b x b block's skew-symmetric angle matrix
    is put in real Schur form (float64, at load) and its orthogonal basis
    folded into the q and k rows of the fused projection, together with a
    channel permutation that puts each head's rotation pairs in halves:
    [first of every pair | second of every pair | unpaired (odd b)]. The
    rotation is then elementwise: x * C + rot_half(x) * S with cos / sin
    tables [T, H, head_dim] built once per resolution (float64, rounded
    once). vanilla-rope is the same with b = 2 and fixed frequencies.
  * liere (no commuting shortcut): exact per-token block matrices R
    [T, H, nb, b, b] (torch.matrix_exp in float64, cached per resolution),
    applied blockwise; never a dense [head_dim, head_dim] matrix per token.
  * APE: the official grid_sample quirk in closed form (reference.sample_ape),
    per resolution, added to the patch tokens; the class token's row is
    folded into the class embedding.

    model = torch_model.load("tests/fixtures/parity/comrope_ap_b2")
    logits = model(pixels)                  # [N, C, h, w] -> [N, num_class]
    fixed = model.fixed_resolution(224, 224)  # tables as buffers (ONNX export)

CLI (parity check against the float64 reference, tools/reference.py):
    /usr/bin/python3 tools/torch_model.py --check [FIXTURES_DIR] [--tol 1e-4] [--dtype float64]
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402
import safetensors_io  # noqa: E402

VM = reference.VM
PAIR_TYPES = ("vanilla-rope", "comrope-ap", "comrope-ld")


# --------------------------------------------------------------------------
# the Schur fold (float64, at load)
# --------------------------------------------------------------------------

def real_schur_skew(S, tol=1e-12):
    """Real Schur form of one real skew-symmetric b x b matrix S.

    Returns (Q, w): Q orthogonal [b, b] and w [b // 2] such that
    Q^T S Q = blockdiag([0, -w_0; w_0, 0], ..., [0] if b is odd), the pair m
    on columns (2m, 2m+1) and a lone zero last. From the Hermitian matrix
    iS: for an eigenvalue lam > 0 with eigenvector u = x + iy, S x = lam y
    and S y = -lam x, and |x| = |y|, x . y = 0 (u is orthogonal to its
    conjugate, the eigenvector of -lam); so (sqrt(2) x, sqrt(2) y) is an
    orthonormal pair on which S acts as [0, -lam; lam, 0]. Eigenvalues
    below tol (times the norm) count as zero; their space is completed by
    an SVD and rotates by angle 0.
    """
    b = S.shape[0]
    npair = b // 2
    scale = max(1.0, float(np.abs(S).max()))
    if b == 2:
        return np.eye(2), np.array([S[1, 0]])
    lam, U = np.linalg.eigh(1j * S)  # ascending; pairs +-lam
    cols, w = [], []
    for idx in range(b - 1, b - 1 - npair, -1):
        if lam[idx] <= tol * scale:
            break
        u = U[:, idx]
        cols += [math.sqrt(2.0) * u.real, math.sqrt(2.0) * u.imag]
        w.append(lam[idx])
    if len(cols) < b:  # zero eigenvalues: any orthonormal completion
        Qp = np.stack(cols, axis=1) if cols else np.zeros((b, 0))
        proj = np.eye(b) - Qp @ Qp.T
        u, sv, _ = np.linalg.svd(proj)
        rest = u[:, : b - len(cols)]
        cols += list(rest.T)
        w += [0.0] * (npair - len(w))
    Q = np.stack(cols, axis=1)
    w = np.array(w)
    # check: Q orthogonal and Q^T S Q in the promised form
    T = np.zeros((b, b))
    for m in range(npair):
        T[2 * m + 1, 2 * m], T[2 * m, 2 * m + 1] = w[m], -w[m]
    err = max(np.abs(Q.T @ Q - np.eye(b)).max(), np.abs(Q.T @ S @ Q - T).max() / scale)
    if err > 1e-9:
        raise ValueError(f"real Schur form of a {b}x{b} block failed (error {err:.2e})")
    return Q, w


def pair_fold(cfg, weights, layer):
    """For a pairwise-rotation layer: (M [H', hd, hd], Wf [H', num_axes, P]).

    M maps a head's q (or k) to the rotation basis in halves layout; the
    angle of pair m of head h for a token at pos is sum_a pos_a Wf[h, a, m].
    H' is 1 for vanilla-rope (shared by every head).
    """
    pe, hd, b, na = cfg["custom_pe_type"], cfg["head_dim"], cfg["block_size"], cfg["num_axes"]
    nb = hd // b
    P = nb * (b // 2)  # pairs per head
    if pe == "vanilla-rope":
        n = hd // (2 * na)
        Wf = np.zeros((1, na, P))
        for j in range(P):
            Wf[0, j // n, j] = float(cfg["theta_base"]) ** (j % n)
        blocks_Q = np.broadcast_to(np.eye(2), (1, nb, 2, 2))
        Hh = 1
    else:
        prefix = f"{VM}encoder.layers.{layer}.self_attn."
        Fr = weights[prefix + "freqs"].numpy()  # [H, 1, nb, b, b]
        S = Fr - np.swapaxes(Fr, -1, -2)
        Hh = S.shape[0]
        if pe == "comrope-ap":
            coef = np.zeros((na, nb))  # block j follows axis j mod num_axes
            for j in range(nb):
                coef[j % na, j] = 1.0
        else:  # comrope-ld: s_j = sum_a pos_a * multiplier[a, j]
            coef = weights[prefix + "multiplier"].numpy().reshape(na, nb)
        blocks_Q = np.zeros((Hh, nb, b, b))
        Wf = np.zeros((Hh, na, P))
        for h in range(Hh):
            for j in range(nb):
                Q, w = real_schur_skew(S[h, 0, j])
                blocks_Q[h, j] = Q
                for m in range(b // 2):
                    Wf[h, :, j * (b // 2) + m] = coef[:, j] * w[m]
    # M = Perm @ blockdiag(Q_j^T): rotation-basis channel c of block j is
    # (Q_j^T x)[c]; pair m of block j -> halves position p = j*(b//2)+m
    M = np.zeros((Hh, hd, hd))
    U = nb * (b % 2)
    for h in range(Hh):
        for j in range(nb):
            QT = blocks_Q[h, j].T
            for m in range(b // 2):
                p = j * (b // 2) + m
                M[h, p, j * b:(j + 1) * b] = QT[2 * m]
                M[h, P + p, j * b:(j + 1) * b] = QT[2 * m + 1]
            if b % 2:
                M[h, 2 * P + j, j * b:(j + 1) * b] = QT[b - 1]
    assert 2 * P + U == hd
    return M, Wf


def fold_rows(W, b, M, H):
    """Apply M [H' or 1, hd, hd] per head to the rows of W [H*hd, D] / b [H*hd]."""
    hd = W.shape[0] // H
    Wh = W.reshape(H, hd, -1)
    bh = b.reshape(H, hd)
    Mf = np.broadcast_to(M, (H, hd, hd))
    return (Mf @ Wh).reshape(H * hd, -1), np.einsum("hij,hj->hi", Mf, bh).reshape(-1)


# --------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------

def activation_fn(name):
    """hidden_act -> the function (tools/train.py uses it too)."""
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"hidden_act: unsupported value {name!r}")


class Layer(nn.Module):
    def __init__(self, cfg, weights, i, dtype):
        super().__init__()
        D, H, hd = cfg["hidden_size"], cfg["num_attention_heads"], cfg["head_dim"]
        lp = f"{VM}encoder.layers.{i}."
        g = lambda n: weights[lp + n].numpy()  # noqa: E731
        Wq, bq = g("self_attn.q_proj.weight") * hd ** -0.5, g("self_attn.q_proj.bias") * hd ** -0.5
        Wk, bk = g("self_attn.k_proj.weight"), g("self_attn.k_proj.bias")
        self.pe = cfg["custom_pe_type"]
        self.Wf = None
        if self.pe in PAIR_TYPES:
            M, Wf = pair_fold(cfg, weights, i)
            Wq, bq = fold_rows(Wq, bq, M, H)
            Wk, bk = fold_rows(Wk, bk, M, H)
            self.Wf = Wf  # [H', num_axes, P] float64
        elif self.pe == "liere":
            self.A = reference.angle_matrices(cfg, weights, i)  # [H, na, nb, b, b] float64
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dtype)  # noqa: E731
        self.register_buffer("ln1_w", t(g("layer_norm1.weight")))
        self.register_buffer("ln1_b", t(g("layer_norm1.bias")))
        self.register_buffer("qkv_w", t(np.concatenate([Wq, Wk, g("self_attn.v_proj.weight")])))
        self.register_buffer("qkv_b", t(np.concatenate([bq, bk, g("self_attn.v_proj.bias")])))
        self.register_buffer("out_w", t(g("self_attn.out_proj.weight")))
        self.register_buffer("out_b", t(g("self_attn.out_proj.bias")))
        self.register_buffer("ln2_w", t(g("layer_norm2.weight")))
        self.register_buffer("ln2_b", t(g("layer_norm2.bias")))
        self.register_buffer("fc1_w", t(g("mlp.fc1.weight")))
        self.register_buffer("fc1_b", t(g("mlp.fc1.bias")))
        self.register_buffer("fc2_w", t(g("mlp.fc2.weight")))
        self.register_buffer("fc2_b", t(g("mlp.fc2.bias")))
        self.D, self.H, self.hd, self.eps = D, H, hd, float(cfg["layer_norm_eps"])
        self.P = self.Wf.shape[2] if self.Wf is not None else 0
        self.act = activation_fn(cfg["hidden_act"])

    def tables(self, pos, dtype):
        """Rotation tables for positions [T, 2] float64 (None without rotation).

        pairwise: (C, S) [T, H', hd] with x' = x * C + rot_half(x) * S;
        liere: R [T, H, nb, b, b]."""
        hd, P = self.hd, self.P
        if self.Wf is not None:
            theta = torch.einsum("ta,hap->thp", pos, torch.from_numpy(self.Wf))  # [T, H', P]
            c, s = torch.cos(theta), torch.sin(theta)
            one = torch.ones(*theta.shape[:2], hd - 2 * P, dtype=theta.dtype)
            C = torch.cat([c, c, one], dim=-1)
            S = torch.cat([-s, s, 0 * one], dim=-1)
            return C.to(dtype).contiguous(), S.to(dtype).contiguous()
        if self.pe == "liere":
            gen = torch.einsum("ta,hajxy->thjxy", pos, self.A)  # [T, H, nb, b, b]
            return (torch.matrix_exp(gen).to(dtype).contiguous(),)
        return None

    def rotate(self, x, tab):
        """x [N, T, 2, H, hd] (q and k together) -> rotated."""
        if len(tab) == 2:
            C, S = tab  # [T, H', hd] -> broadcast over N and q/k
            P = self.P
            if 2 * P == self.hd:
                half = torch.cat([x[..., P:], x[..., :P]], dim=-1)
            else:
                half = torch.cat([x[..., P:2 * P], x[..., :P], x[..., 2 * P:]], dim=-1)
            return x * C.unsqueeze(1) + half * S.unsqueeze(1)
        (R,) = tab  # [T, H, nb, b, b]
        N, T, two, H, hd = x.shape
        b = R.shape[-1]
        xb = x.reshape(N, T, two, H, hd // b, 1, b)
        return (R.unsqueeze(1) * xb).sum(-1).reshape(N, T, two, H, hd)

    def forward(self, x, tab):
        N, T = x.shape[0], x.shape[1]
        D, H, hd = self.D, self.H, self.hd
        h = F.layer_norm(x, (D,), self.ln1_w, self.ln1_b, self.eps)
        qkv = F.linear(h, self.qkv_w, self.qkv_b).reshape(N, T, 3, H, hd)
        qk, v = qkv[:, :, :2], qkv[:, :, 2]
        if tab is not None:
            qk = self.rotate(qk, tab)
        q = qk[:, :, 0].transpose(1, 2)  # [N, H, T, hd]
        k = qk[:, :, 1].transpose(1, 2)
        v = v.transpose(1, 2)
        probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1)  # [N, H, T, T]
        o = torch.matmul(probs, v).transpose(1, 2).reshape(N, T, D)
        x = x + F.linear(o, self.out_w, self.out_b)
        h = F.layer_norm(x, (D,), self.ln2_w, self.ln2_b, self.eps)
        return x + F.linear(self.act(F.linear(h, self.fc1_w, self.fc1_b)), self.fc2_w, self.fc2_b)


class ComRopeViT(nn.Module):
    """Inference model; forward(pixels [N, C, h, w]) -> logits [N, num_class]."""

    def __init__(self, cfg, weights, dtype=torch.float32):
        super().__init__()
        self.cfg, self.dtype = cfg, dtype
        D, p = cfg["hidden_size"], cfg["patch_size"]
        t = lambda a: a.to(dtype).contiguous()  # noqa: E731
        self.register_buffer("patch_w", t(weights[VM + "embeddings.patch_embedding.weight"]))
        self.cls64 = weights[VM + "embeddings.class_embedding"]
        self.ape_table = weights.get(VM + "embeddings.position_embedding") if cfg["has_ape"] else None
        self.register_buffer("pre_w", t(weights[VM + "pre_layrnorm.weight"]))
        self.register_buffer("pre_b", t(weights[VM + "pre_layrnorm.bias"]))
        self.register_buffer("post_w", t(weights[VM + "post_layernorm.weight"]))
        self.register_buffer("post_b", t(weights[VM + "post_layernorm.bias"]))
        if cfg["mlp_intermediate"] > 0:
            names = ["classification_head.0", "classification_head.2"]
        else:
            names = ["classification_head"]
        self.head = [(t(weights[n + ".weight"]), t(weights[n + ".bias"])) for n in names]
        for i, (w, b) in enumerate(self.head):
            self.register_buffer(f"head{i}_w", w)
            self.register_buffer(f"head{i}_b", b)
        self.layers = nn.ModuleList(Layer(cfg, weights, i, dtype) for i in range(cfg["num_hidden_layers"]))
        self.eps, self.D, self.p = float(cfg["layer_norm_eps"]), D, p
        self._cache = {}

    def resolution_tables(self, h, w):
        """Per-resolution constants: (cls_row [1, 1, D], ape_patches [Tp, D] or None,
        per-layer rotation tables). Built in float64, cached."""
        key = (h, w)
        if key not in self._cache:
            pos = reference.positions(self.cfg, h, w)  # [T, 2] float64
            cls = self.cls64.clone()
            ape = None
            if self.ape_table is not None:
                a = reference.sample_ape(self.ape_table, pos)  # [T, D]
                cls = cls + a[0]
                ape = a[1:].to(self.dtype).contiguous()
            tabs = [layer.tables(pos, self.dtype) for layer in self.layers]
            self._cache[key] = (cls.to(self.dtype).reshape(1, 1, -1), ape, tabs)
        return self._cache[key]

    def run(self, pixels, cls_row, ape, tabs):
        N = pixels.shape[0]
        x = F.conv2d(pixels, self.patch_w, stride=self.p).flatten(2).transpose(1, 2)  # [N, Tp, D]
        if ape is not None:
            x = x + ape
        x = torch.cat([cls_row.expand(N, 1, self.D), x], dim=1)  # [N, T, D]
        x = F.layer_norm(x, (self.D,), self.pre_w, self.pre_b, self.eps)
        for layer, tab in zip(self.layers, tabs):
            x = layer(x, tab)
        y = F.layer_norm(x[:, 0], (self.D,), self.post_w, self.post_b, self.eps)
        if len(self.head) == 2:
            y = F.relu(F.linear(y, self.head0_w, self.head0_b))
            return F.linear(y, self.head1_w, self.head1_b)
        return F.linear(y, self.head0_w, self.head0_b)

    def forward(self, pixels):
        h, w = pixels.shape[-2:]
        if h % self.p or w % self.p:
            raise ValueError(f"resolution {h}x{w} is not a multiple of patch_size {self.p}")
        return self.run(pixels.to(self.dtype), *self.resolution_tables(int(h), int(w)))

    def fixed_resolution(self, h, w):
        """A module for one resolution whose tables are buffers (for ONNX export)."""
        return FixedResolution(self, h, w)


class FixedResolution(nn.Module):
    def __init__(self, model, h, w):
        super().__init__()
        self.model, self.h, self.w = model, h, w
        cls_row, ape, tabs = model.resolution_tables(h, w)
        self.register_buffer("cls_row", cls_row)
        self.register_buffer("ape", ape if ape is not None else torch.zeros(0))
        self.has_ape = ape is not None
        self.ntab = [0 if t is None else len(t) for t in tabs]
        for i, t in enumerate(tabs):
            for j, a in enumerate(t or ()):
                self.register_buffer(f"rot{i}_{j}", a)

    def forward(self, pixel_values):
        tabs = [tuple(getattr(self, f"rot{i}_{j}") for j in range(n)) if n else None
                for i, n in enumerate(self.ntab)]
        return self.model.run(pixel_values, self.cls_row, self.ape if self.has_ape else None, tabs)


def load(model_dir, dtype=torch.float32):
    """Read a checkpoint directory -> ComRopeViT in eval mode."""
    with open(os.path.join(model_dir, "config.json"), "r", encoding="utf-8") as f:
        cfg = reference.config_from_dict(json.load(f))
    arrays, _, _ = safetensors_io.read_file(os.path.join(model_dir, "model.safetensors"))
    weights = {}
    for name, a in arrays.items():
        if not np.all(np.isfinite(a)):
            raise ValueError(f"tensor {name} holds a NaN or an infinity")
        weights[name] = torch.from_numpy(a)  # float64
    model = ComRopeViT(cfg, weights, dtype)
    return model.eval()


# --------------------------------------------------------------------------
# parity check against the committed float64 reference logits
# --------------------------------------------------------------------------

def check(fixtures, tol, dtype=torch.float32):
    with open(os.path.join(fixtures, "manifest.json"), "r", encoding="utf-8") as f:
        manifest = json.load(f)
    worst, failed, models = 0.0, [], {}
    for entry in manifest["cases"]:
        name = entry["model"]
        if name not in models:
            models[name] = load(os.path.join(fixtures, name), dtype)
        pixels = torch.from_numpy(np.load(os.path.join(fixtures, entry["input"]))).to(dtype)
        want = np.load(os.path.join(fixtures, entry["logits"]))
        with torch.inference_mode():
            got = models[name](pixels).double().numpy()
            fixed = models[name].fixed_resolution(entry["height"], entry["width"])(pixels).double().numpy()
        d = max(float(np.abs(got - want).max()), float(np.abs(fixed - want).max()))
        worst = max(worst, d)
        status = "ok" if d <= tol else "FAIL"
        if d > tol:
            failed.append(f"{name} {entry['height']}x{entry['width']}")
        print(f"  {name:24s} {entry['pe']:12s} {entry['height']:3d}x{entry['width']:<3d} "
              f"max |diff| {d:.2e}  {status}")
    print(f"torch_model: worst {worst:.2e} over {len(manifest['cases'])} cases (tolerance {tol:g})")
    if failed:
        print("FAILED: " + ", ".join(failed))
        return 1
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", nargs="?", const=os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures", "parity"),
        metavar="FIXTURES", help="compare with the parity fixtures' float64 logits")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                    help="compute dtype of the check (float64: the fold's own error, about 1e-10)")
    args = ap.parse_args(argv)
    if args.check:
        return check(args.check, args.tol, getattr(torch, args.dtype))
    ap.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
