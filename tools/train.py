#!/usr/bin/python3
"""Train a small ComRoPE Vision Transformer on Fashion-MNIST (CPU, float32).

The network is the official ComRoPE architecture (the HuggingFace CLIP
vision tower with rotated attention, shared/spec/model.md), written here
from the spec, and the checkpoint comes out in the official format:
config.json with the official keys (plus id2label/label2id) and
model.safetensors with the `vision_model.` tensor names, written by
tools/safetensors_io.py. The engine and tools/reference.py load it as is.

    /usr/bin/python3 tools/train.py --pe comrope-ld --out models/fashion-comrope-ld \
        --epochs 12 --seed 0 [--resume]

--pe picks custom_pe_type: raw (learned APE table, no rotation),
vanilla-rope, liere, comrope-ap, comrope-ld. The rotary ones are trained
without an APE table (config keep_ape=true, the official, inverted, naming),
as the paper compares them; --ape adds the table to them.

Input pipeline (what the engine does without a preprocessor_config.json):
grey PIL image -> Resize((r, r)) bilinear antialiased (identity at the
native 28x28) -> ToTensor -> Normalize(0.5, 0.5). At the native resolution
that is exactly (u8 / 255 - 0.5) / 0.5 in float32, which training computes
on whole uint8 batches. Augmentation: random horizontal flip and a random
translation by up to --shift pixels (zero padding, the background value).

Multi-resolution training (--sizes 16-84): each batch is trained at one
h x w drawn from the listed sides (multiples of the patch) with
probability ~ tokens^-(--size-power), and with probability --nonsquare a
width drawn apart from the height; the augmented 28x28 uint8 images are
resized to it by torch's antialiased bilinear, rounded to uint8 (PIL's
serving resize within one grey level). The checkpoint stays the same
(image_size 28: the rotations need no table, and the step costs of the
sides differ by ~25x, hence the cost-aware draw). Large sides are split
into chunks of --chunk-scores attention scores, the gradients summed,
the rotations computed once per batch.

Rotations: for block_size 2 every variant reduces to an angle per pair of
channels (cos/sin, no matrices); for larger blocks the b x b block
exponentials are computed per token in float64 (torch.matrix_exp, tiny) and
applied blockwise. Positions and the APE follow the spec (axis_scale grid,
class token at cls_position, the official APE row-sampling quirk).

Each epoch, and every --save-every seconds within one, writes a resumable
training state (model, optimizer, position in the epoch, the epoch
generator's state) to --state-dir (default /tmp/comrope-train/<out dir
name>); data order, sizes and augmentation are drawn from per-epoch
generators seeded from --seed, so a resumed run (--resume, the same
arguments) ends bit-identical to an uninterrupted one, also when stopped
mid-epoch. --export-state writes the weights of a run in progress as a
checkpoint. At the end: the
checkpoint in --out, <out>/metrics.json (test top-1 at the training
resolution, wall time, the command, the reference-parity numbers), after a
check that tools/reference.py gives the same logits as the trained model.
"""
import argparse
import json
import math
import os
import shlex
import sys
import time

# Debian's torch calls a pthread OpenBLAS that starts its own threads besides
# torch's OpenMP ones: on 2 cores that oversubscription halves the speed.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fashion_mnist  # noqa: E402
import reference  # noqa: E402
import safetensors_io  # noqa: E402
import torch_model  # noqa: E402

PE_TYPES = ("raw", "vanilla-rope", "liere", "comrope-ap", "comrope-ld")
ROPE_TYPES = ("vanilla-rope", "liere", "comrope-ap", "comrope-ld")
NUM_AXES = 2


# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------

def make_config(args):
    """The official config keys (CLIP vision + ComRoPE + classification)."""
    pe = args.pe
    keep_ape = pe != "raw" and not args.ape  # keep_ape=true means NO table
    return {
        "hidden_size": args.hidden,
        "intermediate_size": args.intermediate,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_channels": 1,
        "image_size": args.image_size,
        "patch_size": args.patch,
        "hidden_act": args.act,
        "layer_norm_eps": 1e-5,
        "custom_pe_type": pe,
        "keep_ape": keep_ape,
        "block_size": 2 if pe == "vanilla-rope" else args.block_size,
        "num_axes": NUM_AXES,
        "axis_scale": True,
        "prepend_cls": True,
        "cls_position": 0.5,
        "theta_base": float(args.theta_base) if pe == "vanilla-rope" else 1e-100,
        "scale_factor": float(args.scale_factor) if pe == "liere" else 1e100,
        "num_class": len(fashion_mnist.CLASSES),
        "mlp_intermediate": args.mlp_head,
        "init_std": float(args.init_std),
    }


def config_json(cfg):
    """config.json as the official save_pretrained writes it (sorted, indent 2)."""
    out = {
        "_attn_implementation_autoset": True,
        "architectures": ["CustomVITForClassification"],
        "attention_dropout": 0.0,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "model_type": "clip_vision_model",
        "num_frames": 16,
        "projection_dim": 512,
        "torch_dtype": "float32",
        "transformers_version": "4.46.2",
    }
    out.update(cfg)
    for key in ("cls_position", "theta_base", "scale_factor", "layer_norm_eps", "init_std"):
        out[key] = float(out[key])
    out["id2label"] = {str(i): name for i, name in enumerate(fashion_mnist.CLASSES)}
    out["label2id"] = {name: i for i, name in enumerate(fashion_mnist.CLASSES)}
    return json.dumps(out, indent=2, sort_keys=True) + "\n"


def check_config(cfg):
    """The spec's shape rules (the reference's checks), plus what training needs."""
    try:
        reference.config_from_dict(cfg)
    except ValueError as e:
        raise SystemExit(f"bad model config: {e}")
    if cfg["image_size"] % cfg["patch_size"]:
        raise SystemExit("--image-size must be a multiple of --patch")


# --------------------------------------------------------------------------
# the network (names as the official CustomVITForClassification)
# --------------------------------------------------------------------------

def positions(cfg, h, w):
    """[T, 2] float64: class token at (cls, cls), then patch (r, c) row-major at
    ((r+0.5)/Ph, (c+0.5)/Pw) (axis_scale) or (r, c)."""
    p = cfg["patch_size"]
    Ph, Pw = h // p, w // p
    r = torch.arange(Ph, dtype=torch.float64)
    c = torch.arange(Pw, dtype=torch.float64)
    if cfg["axis_scale"]:
        r = (r + 0.5) / Ph
        c = (c + 0.5) / Pw
    grid = torch.stack(torch.meshgrid(r, c, indexing="ij"), dim=-1).reshape(-1, 2)
    cls = torch.full((1, 2), float(cfg["cls_position"]), dtype=torch.float64)
    return torch.cat([cls, grid], dim=0)



class Embeddings(nn.Module):
    """patch_embedding (conv, no bias), class_embedding, optional APE table."""

    def __init__(self, cfg, has_ape):
        super().__init__()
        D, p = cfg["hidden_size"], cfg["patch_size"]
        self.patch_embedding = nn.Conv2d(cfg["num_channels"], D, p, stride=p, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(D) * 0.02)
        self.has_ape = has_ape
        if has_ape:
            P0 = cfg["image_size"] // p
            self.position_embedding = nn.Parameter(torch.randn(1, P0, P0, D) * 0.02)

    def sample_ape(self, pos):
        """The official grid_sample quirk in closed form: row y = pos_0*(P0-1)
        (clamped), interpolated between table rows, always in the middle
        column (mean of the two middle ones for even P0); pos_1 unused."""
        table = self.position_embedding
        P0 = table.shape[1]
        if P0 % 2:
            mid = table[0, :, (P0 - 1) // 2, :]
        else:
            mid = 0.5 * (table[0, :, P0 // 2 - 1, :] + table[0, :, P0 // 2, :])
        y = torch.clamp(pos[:, 0] * (P0 - 1), 0.0, float(P0 - 1))
        i0 = torch.floor(y).long()
        i1 = torch.clamp(i0 + 1, max=P0 - 1)
        t = (y - i0.to(y.dtype)).to(table.dtype).unsqueeze(1)
        return (1.0 - t) * mid[i0] + t * mid[i1]

    def forward(self, pixels, pos):
        N = pixels.shape[0]
        x = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # [N, Ph*Pw, D]
        cls = self.class_embedding.expand(N, 1, -1)
        x = torch.cat([cls, x], dim=1)  # [N, T, D]
        if self.has_ape:
            x = x + self.sample_ape(pos)
        return x


def small_matmul(a, b):
    """[..., n, k] @ [..., k, m] by broadcasting (fast for tiny blocks)."""
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)


def expm_small(G, degree=12):
    """Matrix exponential of many tiny blocks [..., b, b] (float64):
    scaling and squaring with a Taylor polynomial (Horner form). After the
    scaling every block has an inf-norm <= 0.5, where degree 12 leaves a
    relative error below 1e-15. Differentiable; avoids torch.matrix_exp,
    whose backward in torch 1.13 costs thousands of separate small GEMMs."""
    norm = G.abs().sum(-1).amax().item() if G.numel() else 0.0
    squarings = max(0, math.ceil(math.log2(norm / 0.5))) if norm > 0.5 else 0
    X = G / (2.0 ** squarings)
    eye = torch.eye(G.shape[-1], dtype=G.dtype)
    E = eye + X / degree
    for k in range(degree - 1, 0, -1):
        E = eye + small_matmul(X, E) / k
    for _ in range(squarings):
        E = small_matmul(E, E)
    return E


class RotaryAttention(nn.Module):
    """CLIP attention; q and k rotated per token by block-diagonal R(pos)."""

    def __init__(self, cfg):
        super().__init__()
        D, H = cfg["hidden_size"], cfg["num_attention_heads"]
        self.H, self.hd, self.b = H, D // H, cfg["block_size"]
        self.pe = cfg["custom_pe_type"]
        self.scale = self.hd ** -0.5
        self.q_proj = nn.Linear(D, D)
        self.k_proj = nn.Linear(D, D)
        self.v_proj = nn.Linear(D, D)
        self.out_proj = nn.Linear(D, D)
        nb, b, std = self.hd // self.b, self.b, float(cfg["init_std"])
        self.sf = float(cfg["scale_factor"])
        if self.pe == "liere":
            # the official parameterization: freqs = scale_factor * F, used as F
            self.freqs = nn.Parameter(torch.randn(H, NUM_AXES, nb, b, b) * (std * self.sf))
        elif self.pe in ("comrope-ap", "comrope-ld"):
            self.freqs = nn.Parameter(torch.randn(H, 1, nb, b, b) * std)
            if self.pe == "comrope-ld":
                self.multiplier = nn.Parameter(torch.randn(1, NUM_AXES, nb, 1, 1))
            else:
                mask = torch.zeros(1, NUM_AXES, nb, 1, 1)
                for a in range(NUM_AXES):
                    mask[0, a, a::NUM_AXES] = 1.0
                self.register_buffer("ap_mask", mask, persistent=False)
        elif self.pe == "vanilla-rope":
            # axis a owns pairs a*n .. a*n+n-1 with frequencies theta^k
            n = self.hd // (2 * NUM_AXES)
            t = float(cfg["theta_base"]) ** torch.arange(n, dtype=torch.float32)
            A = torch.zeros(1, NUM_AXES, self.hd // 2, 2, 2)
            for a in range(NUM_AXES):
                A[0, a, a * n:(a + 1) * n, 1, 0] = t
                A[0, a, a * n:(a + 1) * n, 0, 1] = -t
            self.register_buffer("vanilla_A", A, persistent=False)

    def generators(self):
        """[H or 1, num_axes, nb, b, b]: R_j(pos) = expm(sum_a pos_a A[:, a, j])."""
        if self.pe == "vanilla-rope":
            return self.vanilla_A
        S = self.freqs - self.freqs.transpose(-1, -2)
        if self.pe == "liere":
            return S / self.sf
        if self.pe == "comrope-ld":
            return S * self.multiplier
        return S * self.ap_mask  # comrope-ap: block j follows axis j mod 2

    def rotation(self, pos):
        """b == 2: (cos, sin) [H', T, nb]; b > 2: R [H', T, head_dim, head_dim]."""
        A = self.generators()
        p = pos.to(A.dtype)
        gen = torch.einsum("ta,hajxy->htjxy", p, A)  # [H', T, nb, b, b]
        if self.b == 2:
            theta = gen[..., 1, 0]  # skew: [[0, -theta], [theta, 0]]
            return torch.cos(theta), torch.sin(theta)
        R = expm_small(gen.double()).to(A.dtype)  # [H', T, nb, b, b]
        Hh, T, nb, b, _ = R.shape
        eye = torch.eye(nb, dtype=R.dtype)
        # block diagonal: full[h, t, j*b + x, k*b + y] = R[h, t, j, x, y] if j == k
        full = R.unsqueeze(3) * eye[:, :, None, None]  # [H', T, nb, nb, b, b]
        return full.permute(0, 1, 2, 4, 3, 5).reshape(Hh, T, nb * b, nb * b)

    def rotate(self, x, rot):
        """x [N, H, T, hd] -> R x per token and head."""
        N, H, T, hd = x.shape
        if self.b == 2:
            c, s = rot
            xp = x.reshape(N, H, T, hd // 2, 2)
            x0, x1 = xp[..., 0], xp[..., 1]
            return torch.stack([c * x0 - s * x1, s * x0 + c * x1], dim=-1).reshape(N, H, T, hd)
        # rot is the full block-diagonal R [H', T, hd, hd]: one GEMM per
        # (head, token) over the batch beats H*T*nb tiny block products
        xt = x.permute(1, 2, 0, 3)  # [H, T, N, hd]
        return (xt @ rot.transpose(-1, -2)).permute(2, 0, 1, 3)

    def forward(self, x, rot):
        N, T, D = x.shape
        H, hd = self.H, self.hd
        q = (self.q_proj(x) * self.scale).view(N, T, H, hd).transpose(1, 2)
        k = self.k_proj(x).view(N, T, H, hd).transpose(1, 2)
        v = self.v_proj(x).view(N, T, H, hd).transpose(1, 2)
        if rot is not None:
            q = self.rotate(q, rot)
            k = self.rotate(k, rot)
        probs = torch.softmax(q @ k.transpose(-1, -2), dim=-1)  # [N, H, T, T]
        out = (probs @ v).transpose(1, 2).reshape(N, T, D)
        return self.out_proj(out)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.fc1 = nn.Linear(cfg["hidden_size"], cfg["intermediate_size"])
        self.fc2 = nn.Linear(cfg["intermediate_size"], cfg["hidden_size"])
        self.act = torch_model.activation_fn(cfg["hidden_act"])

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        eps = cfg["layer_norm_eps"]
        self.layer_norm1 = nn.LayerNorm(cfg["hidden_size"], eps=eps)
        self.self_attn = RotaryAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg["hidden_size"], eps=eps)
        self.mlp = MLP(cfg)

    def forward(self, x, rot):
        x = x + self.self_attn(self.layer_norm1(x), rot)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg["num_hidden_layers"]))


class VisionModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        has_ape = cfg["custom_pe_type"] == "raw" or not cfg["keep_ape"]
        eps = cfg["layer_norm_eps"]
        self.embeddings = Embeddings(cfg, has_ape)
        self.pre_layrnorm = nn.LayerNorm(cfg["hidden_size"], eps=eps)  # sic
        self.encoder = Encoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg["hidden_size"], eps=eps)


class ViTClassifier(nn.Module):
    """state_dict names = the official checkpoint's tensor names."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.vision_model = VisionModel(cfg)
        D, C, m = cfg["hidden_size"], cfg["num_class"], cfg["mlp_intermediate"]
        if m == 0:
            self.classification_head = nn.Linear(D, C)
        else:
            self.classification_head = nn.Sequential(nn.Linear(D, m), nn.ReLU(), nn.Linear(m, C))
        self._pos_cache = {}
        self._init_weights()

    def _init_weights(self):
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.trunc_normal_(mod.weight, std=0.02)
                nn.init.zeros_(mod.bias)

    def positions(self, h, w):
        key = (h, w)
        if key not in self._pos_cache:
            self._pos_cache[key] = positions(self.cfg, h, w)
        return self._pos_cache[key]

    def rotations(self, h, w):
        """Per layer: the rotation of every token at h x w (see
        RotaryAttention.rotation), or None without rotary attention."""
        pos = self.positions(h, w)
        return [layer.self_attn.rotation(pos) if layer.self_attn.pe in ROPE_TYPES else None
                for layer in self.vision_model.encoder.layers]

    def forward(self, pixels, rots=None):
        """pixels [N, C, h, w] normalized -> logits [N, num_class]. rots:
        self.rotations(h, w), when the caller shares them between batches."""
        h, w = pixels.shape[-2:]
        p = self.cfg["patch_size"]
        if h % p or w % p:
            raise ValueError(f"{h}x{w} is not a multiple of the patch {p}")
        pos = self.positions(h, w)
        if rots is None:
            rots = self.rotations(h, w)
        vm = self.vision_model
        x = vm.pre_layrnorm(vm.embeddings(pixels, pos))
        for layer, rot in zip(vm.encoder.layers, rots):
            x = layer(x, rot)
        return self.classification_head(vm.post_layernorm(x[:, 0]))


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------

def normalize_u8(x):
    """uint8 [N, h, w] -> float32 [N, 1, h, w]: ToTensor then Normalize(0.5, 0.5)."""
    return x.to(torch.float32).div(255).sub(0.5).div(0.5).unsqueeze(1)


def pil_u8(images_u8, h, w):
    """uint8 [N, h0, w0] -> uint8 [N, h, w] by PIL's Resize((h, w)) bilinear
    antialiased, the serving pipeline's resize (identity at the native size)."""
    from PIL import Image
    out = [np.asarray(Image.fromarray(np.asarray(a), mode="L").resize((w, h), Image.BILINEAR))
           for a in images_u8]
    return torch.from_numpy(np.stack(out))


def pil_batch(images_u8, h, w):
    """The serving pipeline on PIL: Resize((h, w)) bilinear antialiased,
    ToTensor, Normalize(0.5, 0.5)."""
    return normalize_u8(pil_u8(images_u8, h, w))


def resize_u8(x, h, w):
    """uint8 [B, h0, w0] -> uint8 [B, h, w] for training batches: torch's
    antialiased bilinear, rounded to uint8 as PIL rounds. Equal to pil_u8
    within one grey level (about 10 % of the pixels differ by 1), at a
    fraction of the cost."""
    if x.shape[-2:] == (h, w):
        return x
    y = F.interpolate(x.unsqueeze(1).to(torch.float32), size=(h, w), mode="bilinear",
                      align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8)[:, 0]


def augment(x, gen, shift):
    """uint8 [B, 28, 28]: random horizontal flip, random translation by up to
    `shift` pixels per axis (zero padding)."""
    B, h, w = x.shape
    flip = torch.rand(B, generator=gen) < 0.5
    x = torch.where(flip[:, None, None], x.flip(-1), x)
    if shift > 0:
        padded = F.pad(x, (shift, shift, shift, shift))
        dy = torch.randint(0, 2 * shift + 1, (B,), generator=gen)
        dx = torch.randint(0, 2 * shift + 1, (B,), generator=gen)
        rows = (dy[:, None] + torch.arange(h))[:, :, None]  # [B, h, 1]
        cols = (dx[:, None] + torch.arange(w))[:, None, :]  # [B, 1, w]
        x = padded[torch.arange(B)[:, None, None], rows, cols]
    return x


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------

def param_groups(model, wd):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim <= 1 or name.endswith(("freqs", "multiplier", "position_embedding")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def detached(rots):
    """Per-layer rotations (a tensor, a (cos, sin) pair or None) -> (leaf
    copies in the same structure, [(rotation tensor, its copy)])."""
    shared, pairs = [], []
    for rot in rots:
        if rot is None:
            shared.append(None)
            continue
        parts = rot if isinstance(rot, tuple) else (rot,)
        leaves = tuple(t.detach().requires_grad_() if t.requires_grad else t for t in parts)
        pairs += [(t, leaf) for t, leaf in zip(parts, leaves) if t.requires_grad]  # vanilla: fixed
        shared.append(leaves if isinstance(rot, tuple) else leaves[0])
    return shared, pairs


def lr_at(step, total, warmup, peak, final_frac=0.01):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def evaluate(model, images, labels, scores=1280000):
    """Top-1 accuracy (%) of float32 [N, 1, h, w] pixels (or uint8 [N, h, w],
    normalized here), in batches of at most 500 images and `scores` images x
    tokens^2 (attention scores per head, to stay in cache)."""
    model.eval()
    correct = 0
    batch = max(1, min(500, scores // tokens(model.cfg, *images.shape[-2:]) ** 2))
    for i in range(0, images.shape[0], batch):
        x = images[i:i + batch]
        logits = model(normalize_u8(x) if x.dtype == torch.uint8 else x)
        correct += (logits.argmax(-1) == labels[i:i + batch]).sum().item()
    model.train()
    return 100.0 * correct / images.shape[0]


def tokens(cfg, h, w):
    """Sequence length at h x w: the patch grid plus the class token."""
    return (h // cfg["patch_size"]) * (w // cfg["patch_size"]) + 1


def parse_sizes(text, patch):
    """--sizes: "16-84" (every multiple of the patch in the range) or a list
    "16,20,28" -> sorted sides."""
    if "-" in text:
        lo, hi = (int(v) for v in text.split("-"))
        sizes = list(range(-(-lo // patch) * patch, hi + 1, patch))
    else:
        sizes = sorted({int(v) for v in text.split(",")})
    if not sizes or any(s <= 0 or s % patch for s in sizes):
        raise SystemExit(f"--sizes {text}: need sides that are positive multiples of the patch {patch}")
    return sizes


def size_weights(cfg, sizes, power):
    """Probability of drawing each side for a batch: proportional to
    tokens^-power. A step's cost grows about linearly with the tokens at
    these widths (attention's T^2 is under 40 % of the FLOPs even at 84 px),
    so power 0 spends most of the time on the largest sides, power 1 gives
    every side the same compute (and the small ones many more steps)."""
    w = torch.tensor([float(tokens(cfg, s, s)) ** -power for s in sizes], dtype=torch.float64)
    return w / w.sum()


def draw_size(sizes, weights, nonsquare, gen):
    """(h, w) of one batch from the epoch generator: h by weight; w = h, or
    with probability `nonsquare` an independent draw within a factor 2 of h."""
    h = sizes[torch.multinomial(weights, 1, generator=gen).item()]
    w = h
    if torch.rand(1, generator=gen).item() < nonsquare:
        near = torch.tensor([h / 2 <= s <= 2 * h for s in sizes], dtype=torch.float64)
        w = sizes[torch.multinomial(weights * near, 1, generator=gen).item()]
    return h, w


def save_checkpoint(model, cfg, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    tensors = {name: t.detach().cpu().numpy().astype(np.float32)
               for name, t in model.state_dict().items()}
    safetensors_io.write_file(os.path.join(out_dir, "model.safetensors"), tensors, dtype="F32")
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config_json(cfg))
    return tensors


CONFIG_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps",
               "custom_pe_type", "keep_ape", "block_size", "num_axes", "axis_scale",
               "prepend_cls", "cls_position", "theta_base", "scale_factor", "num_class",
               "mlp_intermediate", "init_std")


def load_checkpoint(out_dir):
    """A checkpoint written by save_checkpoint -> (cfg, model in eval mode)."""
    with open(os.path.join(out_dir, "config.json"), "r", encoding="utf-8") as f:
        raw = json.load(f)
    cfg = {key: raw[key] for key in CONFIG_KEYS}
    model = ViTClassifier(cfg)
    arrays, _, _ = safetensors_io.read_file(os.path.join(out_dir, "model.safetensors"))
    model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items()})
    return cfg, model.eval()


def eval_resolutions(args):
    """--eval-only: test top-1 of the checkpoint in --out at --eval-res, each
    through the serving pipeline (PIL resize, ToTensor, Normalize); stored in
    <out>/metrics.json under test_top1_by_resolution."""
    cfg, model = load_checkpoint(args.out)
    test_x, test_y = fashion_mnist.load("test")
    labels = torch.from_numpy(test_y)
    result = {}
    for (h, w) in parse_res(args.eval_res):
        t = time.time()
        acc = evaluate(model, pil_batch(test_x, h, w), labels)
        result[f"{h}x{w}"] = round(acc, 2)
        print(f"test top-1 at {h}x{w}: {acc:.2f}% ({time.time() - t:.0f} s)", flush=True)
    path = os.path.join(args.out, "metrics.json")
    metrics = {}
    if os.path.exists(path):
        with open(path, "r", encoding="utf-8") as f:
            metrics = json.load(f)
    metrics["test_top1_by_resolution"] = result
    with open(path, "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    return 0


def export_state(args):
    """--export-state: the model of a run in progress as a checkpoint in --out;
    its metrics.json says where the run stands (no test figures of its own)."""
    state_path = os.path.join(args.state_dir or default_state_dir(args.out), "state.pt")
    if not os.path.exists(state_path):
        raise SystemExit(f"--export-state: no training state at {state_path}")
    st = torch.load(state_path)
    model = ViTClassifier(st["cfg"])
    model.load_state_dict(st["model"])
    save_checkpoint(model, st["cfg"], args.out)
    metrics = {"exported_from_state": state_path, "epoch": st["epoch"],
               "step_in_epoch": st["step_in_epoch"], "recipe": st["recipe"],
               "elapsed_s": round(st["elapsed"], 1), "history": st["history"]}
    with open(os.path.join(args.out, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    print(f"{args.out}: weights of {state_path} (epoch {st['epoch'] + 1}, step {st['step_in_epoch']})",
          flush=True)
    return 0


def reference_parity(model, out_dir, test_u8, resolutions, count=8):
    """Logits of the saved checkpoint by tools/reference.py (float64) against
    the trained model's float32 eval logits. -> {"HxW": max abs diff}."""
    import reference
    ref_cfg, ref_w = reference.load_model(out_dir)
    model.eval()
    result = {}
    for (h, w) in resolutions:
        pix = pil_batch(test_u8[:count], h, w)
        with torch.no_grad():
            ours = model(pix).double()
        theirs = reference.forward(ref_cfg, ref_w, pix.numpy())
        diff = (ours - theirs).abs().max().item()
        result[f"{h}x{w}"] = diff
        print(f"parity {h}x{w}: max |logit(train model) - logit(reference.py)| = {diff:.3g} "
              f"(logit scale {theirs.abs().max().item():.3g})", flush=True)
    model.train()
    return result


def default_state_dir(out_dir):
    name = os.path.basename(os.path.normpath(os.path.abspath(out_dir)))
    return os.path.join("/tmp/comrope-train", name)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pe", choices=PE_TYPES, default="comrope-ld", help="custom_pe_type")
    ap.add_argument("--out", required=True, help="checkpoint directory to write")
    ap.add_argument("--epochs", type=int, default=18)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue from the training state")
    ap.add_argument("--init-from", metavar="DIR",
                    help="start from the weights of this checkpoint (same architecture; fine-tuning: "
                         "e.g. --warmup 0 --lr 3e-4); its metrics.json is kept in ours as init_from")
    ap.add_argument("--state-dir", help="training state directory (default /tmp/comrope-train/<out name>)")
    # architecture
    ap.add_argument("--image-size", type=int, default=28, help="training resolution (square)")
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=96)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=192)
    ap.add_argument("--act", default="gelu")
    ap.add_argument("--mlp-head", type=int, default=0, help="mlp_intermediate (0: linear head)")
    ap.add_argument("--block-size", type=int, default=4, help="rotation block side b")
    ap.add_argument("--init-std", type=float, default=1.0, help="std of the rotation parameters")
    ap.add_argument("--theta-base", type=float, default=1.6, help="vanilla-rope frequency base")
    ap.add_argument("--scale-factor", type=float, default=1.0, help="liere scale_factor")
    ap.add_argument("--ape", action="store_true", help="rotary variants: also learn an APE table")
    # optimisation
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--warmup", type=float, default=1.0, help="warmup in epochs")
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0, help="gradient norm clip (0: off)")
    ap.add_argument("--shift", type=int, default=1, help="max random translation in pixels (0: off)")
    ap.add_argument("--threads", type=int, default=2)
    # multi-resolution training
    ap.add_argument("--sizes", help="train each batch at a side drawn from these: \"16-84\" (every "
                                    "multiple of the patch) or \"16,28,40\" (default: --image-size only)")
    ap.add_argument("--size-power", type=float, default=1.0,
                    help="P(side) ~ tokens^-power: 1 = equal compute per side, 0 = equal batches")
    ap.add_argument("--nonsquare", type=float, default=0.0,
                    help="fraction of batches whose width is drawn apart from the height (within 2x)")
    ap.add_argument("--chunk-scores", type=int, default=320000,
                    help="split a batch into chunks of at most this many images x tokens^2 (the "
                         "attention scores per head; default: one 28x28 batch of 128), gradients "
                         "accumulated: large sides stay in cache")
    ap.add_argument("--train-eval-res", default="",
                    help="test top-1 at these resolutions after every epoch too (H or HxW, comma-separated)")
    ap.add_argument("--save-every", type=float, default=300.0,
                    help="also save the training state every this many seconds within an epoch")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--max-steps", type=int, default=0,
                    help="stop after this many steps (throughput probe; saves only the periodic state)")
    ap.add_argument("--parity-res", default="28x28,40x40,20x36",
                    help="resolutions of the reference parity check")
    ap.add_argument("--self-test", action="store_true",
                    help="only this: check that a multi-resolution run resumed mid-epoch is bit-identical")
    ap.add_argument("--export-state", action="store_true",
                    help="no training: write the weights of the training state in --state-dir to --out "
                         "as a checkpoint (to evaluate a run in progress)")
    ap.add_argument("--eval-only", action="store_true",
                    help="no training: test top-1 of the checkpoint in --out at --eval-res")
    ap.add_argument("--eval-res", default="28,20,24,32,36,40,56,28x40",
                    help="resolutions for --eval-only (H or HxW, comma-separated)")
    return ap.parse_args(argv)


def parse_res(text):
    out = []
    for item in text.split(","):
        h, _, w = item.strip().partition("x")
        out.append((int(h), int(w or h)))
    return out


def self_test():
    """--self-test: a tiny multi-resolution run stopped twice mid-epoch and
    resumed ends with the same bytes as an uninterrupted one; a resume with
    another recipe is refused. About a minute on 2 quiet cores."""
    import hashlib
    import tempfile
    tiny = ["--hidden", "16", "--heads", "2", "--layers", "1", "--intermediate", "32",
            "--sizes", "16-24", "--nonsquare", "0.5", "--batch", "2048", "--epochs", "2", "--seed", "3",
            "--threads", "1", "--log-every", "1000", "--train-eval-res", "20", "--parity-res", "20x20"]
    with tempfile.TemporaryDirectory() as tmp:
        def run(name, *extra):
            return main(tiny + ["--out", os.path.join(tmp, name), "--state-dir", os.path.join(tmp, name + "-state")]
                        + list(extra))

        def digest(name):
            with open(os.path.join(tmp, name, "model.safetensors"), "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        ok = run("whole") == 0
        ok &= run("parts", "--max-steps", "10", "--save-every", "1e-9") == 0
        ok &= run("parts", "--max-steps", "40", "--save-every", "1e-9", "--resume") == 0
        try:
            run("parts", "--resume", "--size-power", "0.5")
            refused = False
        except SystemExit as e:
            refused = "size_power" in str(e)
        ok &= run("parts", "--resume") == 0
        same = ok and digest("whole") == digest("parts")
    print(f"self-test: resumed twice mid-epoch {'==' if same else '!='} uninterrupted; "
          f"other recipe {'refused' if refused else 'NOT refused'}", flush=True)
    return 0 if same and refused else 1


def main(argv=None):
    if argv is None and sys.argv[1:] == ["--self-test"]:
        return self_test()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.eval_only:
        return eval_resolutions(args)
    if args.export_state:
        return export_state(args)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    cfg = make_config(args)
    check_config(cfg)
    command = "/usr/bin/python3 tools/train.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    train_x, train_y = fashion_mnist.load("train")
    test_x, test_y = fashion_mnist.load("test")
    r = args.image_size
    train_u8 = torch.from_numpy(train_x)
    train_y = torch.from_numpy(train_y)
    test_y_t = torch.from_numpy(test_y)
    test_pix = pil_u8(test_x, r, r)
    if r != 28:
        if args.sizes:
            raise SystemExit("--sizes resizes the native 28x28 images: leave --image-size at 28")
        # training images go through the same resize, once
        train_u8 = pil_u8(train_x, r, r)
        print("note: training images pre-resized to", r, flush=True)
    sizes = parse_sizes(args.sizes, cfg["patch_size"]) if args.sizes else [r]
    weights = size_weights(cfg, sizes, args.size_power)
    if len(sizes) > 1:
        print("sizes (side: P): " + " ".join(f"{s}:{p:.3f}" for s, p in zip(sizes, weights.tolist()))
              + f"; nonsquare {args.nonsquare}", flush=True)
    eval_res = [(h, w) for (h, w) in parse_res(args.train_eval_res) if (h, w) != (r, r)] \
        if args.train_eval_res else []
    test_extra = {(h, w): pil_u8(test_x, h, w) for (h, w) in eval_res}

    model = ViTClassifier(cfg)
    parent = None
    if args.init_from:
        init_cfg, init_model = load_checkpoint(args.init_from)
        if any(init_cfg[k] != cfg[k] for k in init_cfg):
            diff = [k for k in init_cfg if init_cfg[k] != cfg[k]]
            raise SystemExit(f"--init-from {args.init_from}: another architecture ({', '.join(diff)})")
        model.load_state_dict(init_model.state_dict())
        parent = {"dir": args.init_from}
        mpath = os.path.join(args.init_from, "metrics.json")
        if os.path.exists(mpath):
            with open(mpath, "r", encoding="utf-8") as f:
                pm = json.load(f)
            parent.update({k: pm[k] for k in ("command", "epochs", "seed", "test_top1", "wall_time_s", "init_from")
                           if k in pm})
        print(f"initialized from {args.init_from} (test top-1 {parent.get('test_top1', '?')}%)", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"config: pe={cfg['custom_pe_type']} keep_ape={cfg['keep_ape']} D={cfg['hidden_size']} "
          f"L={cfg['num_hidden_layers']} H={cfg['num_attention_heads']} I={cfg['intermediate_size']} "
          f"b={cfg['block_size']} {r}x{r}/p{cfg['patch_size']} params={n_params}", flush=True)
    opt = torch.optim.AdamW(param_groups(model, args.wd), lr=args.lr, betas=(0.9, 0.999))

    N = train_u8.shape[0]
    steps_per_epoch = N // args.batch
    total_steps = steps_per_epoch * args.epochs
    warmup = int(args.warmup * steps_per_epoch)
    state_dir = args.state_dir or default_state_dir(args.out)
    state_path = os.path.join(state_dir, "state.pt")
    # everything that shapes the trajectory: a resumed run must use the same
    # (init_from only as provenance: a resumed run takes its weights from the state)
    recipe = {"epochs": args.epochs, "seed": args.seed, "batch": args.batch, "lr": args.lr,
              "wd": args.wd, "warmup": args.warmup, "label_smoothing": args.label_smoothing,
              "clip": args.clip, "shift": args.shift, "sizes": sizes, "size_power": args.size_power,
              "nonsquare": args.nonsquare, "chunk_scores": args.chunk_scores, "init_from": args.init_from}
    start_epoch, start_i, gen_state, history, elapsed_before = 0, 0, None, [], 0.0
    if args.resume:
        if not os.path.exists(state_path):
            raise SystemExit(f"--resume: no training state at {state_path}")
        st = torch.load(state_path)
        diff = [k for k in recipe if k != "init_from" and st["recipe"].get(k) != recipe[k]]
        if st["cfg"] != cfg or diff:
            raise SystemExit(f"--resume: the saved state was made with other settings ({', '.join(diff) or 'cfg'})")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        start_epoch, start_i, gen_state = st["epoch"], st["step_in_epoch"], st["gen"]
        history, elapsed_before = st["history"], st["elapsed"]
        print(f"resumed at epoch {start_epoch + 1} step {start_i} from {state_path}", flush=True)

    def save_state(epoch, i, gen, elapsed):
        """Resume point: before step i of epoch (i == steps_per_epoch: epoch done)."""
        if i == steps_per_epoch:
            epoch, i, gen = epoch + 1, 0, None
        os.makedirs(state_dir, exist_ok=True)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch,
                    "step_in_epoch": i, "gen": gen.get_state() if gen is not None else None,
                    "cfg": cfg, "recipe": recipe, "history": history, "elapsed": elapsed},
                   state_path + ".tmp")
        os.replace(state_path + ".tmp", state_path)

    t_start = time.time()
    t_saved = t_start
    model.train()
    for epoch in range(start_epoch, args.epochs):
        gen = torch.Generator().manual_seed(args.seed * 100003 + epoch)
        perm = torch.randperm(N, generator=gen)
        first = 0
        if epoch == start_epoch and start_i:
            gen.set_state(gen_state)  # the draws of steps 0 .. start_i-1 already made
            first = start_i
        t_epoch = time.time()
        t_log, seen, tok_seen, loss_sum, correct, count = time.time(), 0, 0, 0.0, 0, 0
        for i in range(first, steps_per_epoch):
            step = epoch * steps_per_epoch + i
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total_steps, warmup, args.lr)
            idx = perm[i * args.batch:(i + 1) * args.batch]
            h, w = draw_size(sizes, weights, args.nonsquare, gen) if len(sizes) > 1 else (sizes[0], sizes[0])
            xb = normalize_u8(resize_u8(augment(train_u8[idx], gen, args.shift), h, w))
            yb = train_y[idx]
            B, T = yb.shape[0], tokens(cfg, h, w)
            chunk = max(1, args.chunk_scores // (T * T))
            opt.zero_grad(set_to_none=True)
            # the rotations (a large part of a step) once per batch, not per
            # chunk: the chunks backpropagate into detached copies, whose
            # gradients go through the rotations' graph once at the end
            shared, rot_pairs = detached(model.rotations(h, w))
            for c in range(0, B, chunk):
                logits = model(xb[c:c + chunk], shared)
                loss = F.cross_entropy(logits, yb[c:c + chunk], label_smoothing=args.label_smoothing,
                                       reduction="sum") / B
                loss.backward()
                loss_sum += loss.item() * B
                correct += (logits.argmax(-1) == yb[c:c + chunk]).sum().item()
            if rot_pairs:
                torch.autograd.backward([r for r, _ in rot_pairs], [leaf.grad for _, leaf in rot_pairs])
            if args.clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            count += B
            seen += B
            tok_seen += B * T
            if (i + 1) % args.log_every == 0:
                now = time.time()
                print(f"epoch {epoch + 1}/{args.epochs} step {i + 1}/{steps_per_epoch} "
                      f"loss {loss_sum / count:.4f} acc {100.0 * correct / count:.2f}% "
                      f"lr {opt.param_groups[0]['lr']:.2e} {seen / (now - t_log):.0f} img/s "
                      f"{tok_seen / (now - t_log):.0f} tok/s", flush=True)
                t_log, seen, tok_seen, loss_sum, correct, count = now, 0, 0, 0.0, 0, 0
            if args.save_every > 0 and time.time() - t_saved >= args.save_every and i + 1 < steps_per_epoch:
                save_state(epoch, i + 1, gen, elapsed_before + time.time() - t_start)
                t_saved = time.time()
            if args.max_steps and step + 1 >= args.max_steps:
                print(f"--max-steps reached after {time.time() - t_start:.1f} s", flush=True)
                return 0
        train_time = time.time() - t_epoch
        acc = evaluate(model, test_pix, test_y_t)
        entry = {"epoch": epoch + 1, "test_top1": acc, "epoch_s": round(train_time, 1)}
        if test_extra:
            entry["test_top1_by_resolution"] = {f"{h}x{w}": round(evaluate(model, pix, test_y_t), 2)
                                                for (h, w), pix in test_extra.items()}
        history.append(entry)
        elapsed = elapsed_before + time.time() - t_start
        extra = "".join(f", {k} {v:.2f}%" for k, v in entry.get("test_top1_by_resolution", {}).items())
        print(f"== epoch {epoch + 1}/{args.epochs}: test top-1 {acc:.2f}% at {r}x{r}{extra} "
              f"(epoch {train_time:.0f} s, total {elapsed:.0f} s)", flush=True)
        save_state(epoch, steps_per_epoch, gen, elapsed)
        t_saved = time.time()

    wall = elapsed_before + time.time() - t_start
    final_acc = evaluate(model, test_pix, test_y_t)
    save_checkpoint(model, cfg, args.out)
    parity = reference_parity(model, args.out, test_x, parse_res(args.parity_res))
    worst = max(parity.values())
    metrics = {
        "dataset": "Fashion-MNIST (60000 train / 10000 test)",
        "custom_pe_type": cfg["custom_pe_type"],
        "resolution": [r, r],
        "test_top1": round(final_acc, 2),
        "test_correct": int(round(final_acc * test_x.shape[0] / 100)),
        "epochs": args.epochs,
        "seed": args.seed,
        "parameters": n_params,
        "wall_time_s": round(wall, 1),
        "threads": args.threads,
        "command": command,
        "train_sizes": sizes,
        "size_power": args.size_power,
        "nonsquare": args.nonsquare,
        "history": history,
        "reference_parity_max_abs_diff": parity,
    }
    if test_extra:
        metrics["test_top1_by_resolution"] = {f"{r}x{r}": round(final_acc, 2),
                                              **history[-1]["test_top1_by_resolution"]}
    if parent:
        metrics["init_from"] = parent
        metrics["total_wall_time_s"] = round(wall + parent.get("wall_time_s", 0.0)
                                             + parent.get("init_from", {}).get("wall_time_s", 0.0), 1)
    with open(os.path.join(args.out, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    print(f"final test top-1 {final_acc:.2f}% at {r}x{r}; wall time {wall:.0f} s "
          f"({wall / 60:.1f} min); checkpoint in {args.out}", flush=True)
    if worst >= 1e-4:
        print(f"ERROR: reference parity {worst:.3g} >= 1e-4", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
