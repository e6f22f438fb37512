#!/usr/bin/python3
"""Check the parity fixtures and tools/reference.py against the official code.

The paper's official model.py (github.com/Longin-Yu/ComRoPE) needs
`transformers`; it runs here unmodified on top of the stand-in in
shared/official-shim. Neither is part of this project: give their paths.

Part 1, for every fixture case: build the official CustomVITForClassification
from the case's config.json, load model.safetensors, run it in float64 and
compare with the committed logits.
  * square resolutions R: positions from the config with image_size=R,
    cfg_R.get_positions(0, 0), as the official users do. get_positions
    builds the grid in float32 (dtype=torch.float), so it is run twice: with
    that float32 grid (informational) and with the same grid in float64
    (the gated number; the grid itself is checked against get_positions).
  * non-square resolutions: the official code has no grid for them; the
    spec's per-axis positions are fed to its forward (which accepts any
    positions), so everything but the positions convention is still checked.
  Also compared per resolution: the sampled APE (official embeddings module)
  and the layer-0 rotations (official get_rotation_matrix) with the
  reference's, and with the extras files where the manifest lists them.
Part 2, per variant: save a randomly initialized official model with the
official save_pretrained (float32, plus one F16 and one BF16 save), reload it
with the official from_pretrained in float64 and compare its logits with
tools/reference.py reading the same directory.

With --checkpoint DIR (a trained model, e.g. models/fashion-comrope-ld)
only this: the official from_pretrained loads DIR in float64 and its logits
for the first 8 Fashion-MNIST test images (the serving pipeline) at several
resolutions are compared with tools/reference.py reading the same DIR.

Exit status 1 if any gated difference exceeds --tol (default 1e-6).

Usage:
    git --git-dir=/work/.mirror/Longin-Yu+ComRoPE/repo show HEAD:model.py > /tmp/official/model.py
    /usr/bin/python3 tools/check_official.py [--shim DIR] [--model-py FILE] [--checkpoint DIR]
"""
import argparse
import contextlib
import importlib.util
import json
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402
import safetensors_io  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SHIM = os.environ.get("COMROPE_OFFICIAL_SHIM",
                              os.path.join(REPO, "..", "shared", "official-shim"))
DEFAULT_MODEL_PY = os.environ.get("COMROPE_OFFICIAL_MODEL_PY", "/tmp/official/model.py")
DEFAULT_FIXTURES = os.path.join(REPO, "tests", "fixtures", "parity")


@contextlib.contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def import_official(shim, model_py):
    if not os.path.isdir(os.path.join(shim, "transformers")):
        sys.exit(f"no official shim at {shim} (use --shim or COMROPE_OFFICIAL_SHIM)")
    if not os.path.isfile(model_py):
        sys.exit(f"no official model.py at {model_py} (use --model-py or COMROPE_OFFICIAL_MODEL_PY);\n"
                 "get it with: git --git-dir=/work/.mirror/Longin-Yu+ComRoPE/repo show HEAD:model.py"
                 f" > {model_py}")
    sys.path.insert(0, os.path.abspath(shim))
    spec = importlib.util.spec_from_file_location("official_model", model_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_logits(official, model, pixels, pos):
    """Official forward; pos [T, 2] expanded to the batch."""
    pos_b = pos.unsqueeze(0).expand(pixels.shape[0], -1, -1)
    with torch.no_grad():
        return model(pixel_values=pixels, positions=pos_b).logits


def official_ape(official, model, pixels, pos):
    """The position embedding the official embeddings module adds: [T, D]."""
    emb = model.vision_model.embeddings
    pos_b = pos.unsqueeze(0).expand(pixels.shape[0], -1, -1)
    with torch.no_grad():
        emb.set_positions(pos_b)
        full = emb(pixels)
        emb.unset_positions()
        bare = official.CustomCLIPVisionEmbeddingsWithoutPE.forward(emb, pixels)
    return (full - bare)[0]


def official_rotation(model, pos):
    """Layer-0 rotations from the official get_rotation_matrix: [T, H', hd, hd]."""
    attn = model.vision_model.encoder.layers[0].self_attn
    with torch.no_grad():
        attn.set_positions(pos.unsqueeze(0))
        R = attn.get_rotation_matrix()[0]
        attn.unset_positions()
    return R


def maxdiff(a, b):
    a = a.detach().numpy() if torch.is_tensor(a) else np.asarray(a)
    b = b.detach().numpy() if torch.is_tensor(b) else np.asarray(b)
    if a.shape != b.shape:
        raise AssertionError(f"shape mismatch {a.shape} vs {b.shape}")
    return float(np.abs(a - b).max())


class Gate:
    """Collects the gated differences."""

    def __init__(self, tol):
        self.tol, self.failures, self.worst = tol, [], 0.0

    def check(self, what, diff, tol=None):
        """Gate `diff` on the tolerance (or on `tol` for non-logit quantities)."""
        if tol is None:
            tol = self.tol
            self.worst = max(self.worst, diff)
        if not diff <= tol:
            self.failures.append(f"{what}: {diff:.3e} > {tol:g}")
        return "ok" if diff <= tol else "FAIL"


def check_fixtures(official, fixtures, gate):
    with open(os.path.join(fixtures, "manifest.json"), "r", encoding="utf-8") as f:
        manifest = json.load(f)
    extras = {(e["model"], e["height"], e["width"]): e for e in manifest["extras"]}
    models = []
    for entry in manifest["cases"]:
        if entry["model"] not in models:
            models.append(entry["model"])

    print("Part 1: fixtures vs the official forward (float64)")
    print(f"  {'case':24s} {'res':>6s} {'logits diff':>11s} {'(f32 grid)':>11s}"
          f" {'APE diff':>9s} {'rot diff':>9s}")
    for name in models:
        case_dir = os.path.join(fixtures, name)
        cfg_path = os.path.join(case_dir, "config.json")
        with default_dtype(torch.float64):
            ocfg = official.CustomVITForClassificationConfig.from_json_file(cfg_path)
            # our config.json must be exactly what the official save_pretrained writes
            with open(cfg_path, "r", encoding="utf-8") as f:
                ours = f.read()
            if ocfg.to_json_string() != ours:
                gate.failures.append(f"{name}: config.json differs from the official serialization")
            # float64 default dtype: the official get_rotation_matrix allocates
            # its output with torch.zeros(...) in the default dtype, and the
            # vanilla-rope theta_base**k buffer is computed in it too
            model = official.CustomVITForClassification(ocfg).double().eval()
            arrays, _, _ = safetensors_io.read_file(os.path.join(case_dir, "model.safetensors"))
            state = {k: torch.from_numpy(v) for k, v in arrays.items()}
            model.load_state_dict(state, strict=True)  # non-persistent buffers are not in it

        rcfg, weights = reference.load_model(case_dir)
        for entry in [e for e in manifest["cases"] if e["model"] == name]:
            h, w = entry["height"], entry["width"]
            pixels = torch.from_numpy(np.load(os.path.join(fixtures, entry["input"]))).double()
            want = np.load(os.path.join(fixtures, entry["logits"]))
            pos = reference.positions(rcfg, h, w)
            tag = f"{h}x{w}"
            with default_dtype(torch.float64):
                got = official_logits(official, model, pixels, pos)
                f32_note = "      n/a"
                if h == w:
                    cfg_r = official.CustomVITForClassificationConfig.from_json_file(cfg_path, image_size=h)
                    pos_official = cfg_r.get_positions(0, 0)
                    # the same grid, up to get_positions' float32 rounding
                    gate.check(f"{name} {tag} grid vs get_positions",
                               maxdiff(pos_official.double(), pos), tol=1e-7)
                    got32 = official_logits(official, model, pixels, pos_official.double())
                    f32_note = f"{maxdiff(got32, want):11.2e}"
                d = maxdiff(got, want)
                status = gate.check(f"{name} {tag} logits", d)
                ape_d = rot_d = float("nan")
                if rcfg["has_ape"]:
                    ape_ref = reference.sample_ape(weights[reference.VM + "embeddings.position_embedding"], pos)
                    ape_d = maxdiff(official_ape(official, model, pixels, pos), ape_ref)
                    gate.check(f"{name} {tag} APE", ape_d)
                if rcfg["custom_pe_type"] in reference.ROPE_TYPES:
                    R_ref = reference.rotation(rcfg, reference.angle_matrices(rcfg, weights, 0), pos)
                    R_off = official_rotation(model, pos)
                    rot_d = maxdiff(R_off, R_ref)
                    gate.check(f"{name} {tag} rotation", rot_d)
                ex = extras.get((name, h, w))
                if ex is not None:
                    gate.check(f"{name} {tag} positions file",
                               maxdiff(np.load(os.path.join(fixtures, ex["positions"])), pos))
                    if ex["ape"]:
                        gate.check(f"{name} {tag} ape file",
                                   maxdiff(np.load(os.path.join(fixtures, ex["ape"])),
                                           official_ape(official, model, pixels, pos)))
                    if ex["rotation_l0"]:
                        R_off = official_rotation(model, pos).expand(-1, rcfg["num_attention_heads"], -1, -1)
                        gate.check(f"{name} {tag} rotation file",
                                   maxdiff(np.load(os.path.join(fixtures, ex["rotation_l0"])), R_off))
            kind = "" if h == w else "  (non-square: spec positions fed to the official forward)"
            print(f"  {name:24s} {tag:>6s} {d:11.2e} {f32_note:>11s} {ape_d:9.1e} {rot_d:9.1e}"
                  f"  {status}{kind}")


# Part 2: official save_pretrained -> tools/reference.py
SAVE_VARIANTS = [
    ("raw", {"custom_pe_type": "raw", "hidden_act": "gelu"}, torch.float32),
    ("none+ape", {"custom_pe_type": "none", "keep_ape": False, "image_size": 20}, torch.float32),
    ("vanilla-rope", {"custom_pe_type": "vanilla-rope", "theta_base": 0.5, "keep_ape": True,
                      "hidden_act": "gelu_new"}, torch.float32),
    ("liere-b3", {"custom_pe_type": "liere", "block_size": 3, "hidden_size": 24, "scale_factor": 10.0,
                  "init_std": 2.0, "keep_ape": True, "hidden_act": "relu"}, torch.float32),
    ("comrope-ap-b4", {"custom_pe_type": "comrope-ap", "block_size": 4, "init_std": 2.0,
                       "mlp_intermediate": 12, "layer_norm_eps": 1e-6}, torch.float32),
    ("comrope-ld-b3", {"custom_pe_type": "comrope-ld", "block_size": 3, "hidden_size": 24,
                       "axis_scale": False, "cls_position": 0.25, "keep_ape": True,
                       "num_channels": 1, "hidden_act": "gelu_pytorch_tanh"}, torch.float32),
    ("comrope-ld-f16", {"custom_pe_type": "comrope-ld", "init_std": 2.0}, torch.float16),
    ("liere-bf16", {"custom_pe_type": "liere", "scale_factor": 1.0, "init_std": 2.0}, torch.bfloat16),
]
SAVE_BASE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "image_size": 16, "patch_size": 4, "num_class": 6}


def check_saved(official, gate):
    print("Part 2: official save_pretrained -> tools/reference.py (float64 both sides)")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides, save_dtype in SAVE_VARIANTS:
            kw = dict(SAVE_BASE, **overrides)
            out_dir = os.path.join(tmp, name)
            # as a user would: built and trained in float32, saved in save_dtype
            with default_dtype(torch.float32):
                cfg = official.CustomVITForClassificationConfig(**kw)
                model = official.CustomVITForClassification(cfg)
                model.to(save_dtype).save_pretrained(out_dir)
            with default_dtype(torch.float64):
                reloaded = official.CustomVITForClassification.from_pretrained(out_dir).double().eval()
            rcfg, weights = reference.load_model(out_dir)
            _, _, dtypes = safetensors_io.read_file(os.path.join(out_dir, "model.safetensors"))
            C, R = kw.get("num_channels", 3), kw["image_size"] // kw["patch_size"] * kw["patch_size"]
            for (h, w) in [(R, R), (R - 4, R - 4), (R + 8, R + 8), (R, R - 8)]:
                pixels = torch.from_numpy(np.random.default_rng([h, w]).standard_normal((2, C, h, w)))
                pos = reference.positions(rcfg, h, w)
                with default_dtype(torch.float64):
                    got = official_logits(official, reloaded, pixels, pos)
                ref = reference.forward(rcfg, weights, pixels)
                d = maxdiff(got, ref)
                status = gate.check(f"saved {name} {h}x{w}", d)
                print(f"  {name:16s} {sorted(set(dtypes.values()))[0]:>4s} {h:2d}x{w:<2d}"
                      f" |logits|max {float(ref.abs().max()):.3f}  diff {d:.2e}  {status}")


def check_checkpoint(official, ckpt_dir, gate, resolutions=((28, 28), (16, 16), (40, 40), (84, 84), (28, 40))):
    """A trained checkpoint: official from_pretrained vs tools/reference.py."""
    import fashion_mnist
    import train
    with default_dtype(torch.float64):
        model = official.CustomVITForClassification.from_pretrained(ckpt_dir).double().eval()
    rcfg, weights = reference.load_model(ckpt_dir)
    images, _ = fashion_mnist.load("test")
    print(f"checkpoint {ckpt_dir}: official from_pretrained -> tools/reference.py (float64 both sides)")
    for (h, w) in resolutions:
        pixels = train.pil_batch(images[:8], h, w).double()
        pos = reference.positions(rcfg, h, w)
        with default_dtype(torch.float64):
            got = official_logits(official, model, pixels, pos)
        ref = reference.forward(rcfg, weights, pixels.numpy())
        d = maxdiff(got, ref)
        status = gate.check(f"{ckpt_dir} {h}x{w}", d)
        print(f"  {h:2d}x{w:<2d} |logits|max {float(np.abs(np.asarray(ref)).max()):.3f}  diff {d:.2e}  {status}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shim", default=DEFAULT_SHIM, help="official-shim folder (default: %(default)s)")
    ap.add_argument("--model-py", default=DEFAULT_MODEL_PY, help="the official model.py (default: %(default)s)")
    ap.add_argument("--fixtures", default=DEFAULT_FIXTURES, help="parity fixtures (default: %(default)s)")
    ap.add_argument("--tol", type=float, default=1e-6, help="gate on max abs difference (default: %(default)s)")
    ap.add_argument("--checkpoint", metavar="DIR", help="only check this trained checkpoint (see above)")
    args = ap.parse_args(argv)

    official = import_official(args.shim, args.model_py)
    gate = Gate(args.tol)
    if args.checkpoint:
        check_checkpoint(official, args.checkpoint, gate)
    else:
        check_fixtures(official, args.fixtures, gate)
        check_saved(official, gate)
    print(f"worst gated difference: {gate.worst:.3e} (tolerance {args.tol:g})")
    if gate.failures:
        print("FAILED:")
        for f in gate.failures:
            print("  " + f)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
