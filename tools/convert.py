#!/usr/bin/python3
"""Convert a ComRoPE ViT checkpoint saved as a PyTorch pickle to our format.

    /usr/bin/python3 tools/convert.py CHECKPOINT --out DIR [--config config.json]
        [--custom-pe-type comrope-ld --hidden-size 96 ...] [--dtype F32|F16|BF16]
        [--classify build/comrope-classify] [--no-validate] [--unsafe-pickle]
    /usr/bin/python3 tools/convert.py --self-test

CHECKPOINT is a `pytorch_model.bin`, `.pth`, `.pt` or `.ckpt` file (or a
directory holding `pytorch_model.bin`) containing one of:
  - a plain state dict (the official model's `state_dict()`, or
    `save_pretrained(..., safe_serialization=False)`);
  - a training wrapper: {"state_dict": {...}} (PyTorch Lightning; its keys
    usually carry a "model." prefix), {"model_state_dict": ...},
    {"model": ...} or {"module": ...};
  - keys prefixed by "module." (DataParallel / DistributedDataParallel),
    "model." (Lightning) or "_orig_mod." (torch.compile), in any nesting.
Tensors outside the model (a Lightning loss module's buffers, say) are
dropped with a message, and so are the non-persistent buffers of the
official code that some saves still carry (`block_diag_selector`,
`exponent_matrix`, `mask`, `position_ids`): the engine computes those.

The configuration comes from --config FILE, else the `config.json` next to
the checkpoint, else from the command-line flags (one per config.json key:
--hidden-size, --num-attention-heads, --custom-pe-type, ...); flags given
with a config file override its keys. Without a config file, the shapes of
the tensors fill in hidden_size, intermediate_size, num_hidden_layers,
num_channels, patch_size, num_class, mlp_intermediate, block_size, the PE
type (multiplier: comrope-ld; freqs [H, 1, ...]: comrope-ap; freqs [H, 2,
...]: liere), num_attention_heads (from freqs), keep_ape and image_size
(from the APE table). custom_pe_type, num_attention_heads, hidden_act and
image_size must come from a flag when the shapes do not tell them; any
other key that no flag, file or shape gives takes the official default,
which is printed. A shape that contradicts the config is
an error naming the key.

Writes DIR/config.json and DIR/model.safetensors (tools/safetensors_io.py;
a `preprocessor_config.json` next to the checkpoint is copied too), then
validates: the written file reads back equal to the source tensors, and
build/comrope-classify on a random normalized input (.npy) at the training
resolution and at a non-square one gives logits within 1e-4 of
tools/reference.py (float64). Exit status 0 when valid, 1 when the
validation fails, 2 for an unusable input.

A pickle can run code. By default the file is read by torch.load with a
restricted unpickler: tensors, OrderedDict and plain builtins are rebuilt,
every other class or function the pickle names (Lightning's hyper-parameter
objects, optimizer entries) becomes an inert placeholder, so nothing is
imported or called. (torch 1.13's own weights_only=True refuses even the
floats of a Lightning checkpoint.) --unsafe-pickle uses the plain
torch.load: only for files you trust, e.g. a whole pickled nn.Module.

--self-test saves tests/fixtures/parity/comrope_ld_b2 with torch.save as a
pytorch_model.bin (with saved buffers), a Lightning checkpoint, a
DataParallel .pth and a Lightning-around-DataParallel .pt, converts each
(the last with its config from flags) and checks that every
model.safetensors comes out byte-identical to the fixture's (needs torch and
build/comrope-classify, so it is not part of ctest).
"""
import argparse
import builtins
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402
import safetensors_io  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
PREFIXES = ("module.", "model.", "_orig_mod.")
ROOTS = ("vision_model.", "classification_head.")
# buffers the official model.py registers with persistent=False (and CLIP's
# position_ids, persistent in older transformers): not weights
BUFFERS = ("block_diag_selector", "exponent_matrix", "mask", "position_ids")
VM = "vision_model."
# without a config file, keys whose official default would silently give
# another model: a flag must give them when the shapes do not
MUST_GIVE = ("custom_pe_type", "num_attention_heads", "hidden_act", "image_size")


class ConvertError(Exception):
    pass


def say(msg):
    print(f"convert: {msg}", flush=True)


# --------------------------------------------------------------------------
# reading the pickle
# --------------------------------------------------------------------------

class _Opaque:
    """Stands in for any class or function a pickle names that is not on the
    allowlist (Lightning's AttributeDict, a numpy scalar in the
    hyper-parameters, an optimizer's class...): it records its arguments and
    state and runs nothing. The state dict itself never needs one."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    # a dict or list subclass is filled item by item after it is made
    def __setitem__(self, key, value):
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value):
        self.__dict__.setdefault("elements", []).append(value)

    def extend(self, values):
        self.__dict__.setdefault("elements", []).extend(values)

    def __repr__(self):
        return f"<opaque {type(self).__qualname__}>"


# what a state dict is made of: the tensor rebuilders torch.save uses,
# OrderedDict, and harmless builtins
_ALLOWED = {
    ("collections", "OrderedDict"): lambda: __import__("collections").OrderedDict,
    ("torch._utils", "_rebuild_tensor"): lambda: torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): lambda: torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): lambda: torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"):
        lambda: torch._utils._rebuild_parameter_with_state,
    ("torch", "Size"): lambda: torch.Size,
    ("torch", "device"): lambda: torch.device,
    ("_codecs", "encode"): lambda: __import__("_codecs").encode,
}
_BUILTINS = ("set", "frozenset", "tuple", "list", "dict", "int", "float", "complex", "bool",
             "str", "bytes", "bytearray", "slice", "range")


class _RestrictedUnpickler(pickle.Unpickler):
    """Loads tensors and plain containers; every other global becomes an
    _Opaque subclass, so nothing in the file is imported or called."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]()
        if module == "builtins" and name in _BUILTINS:
            return getattr(builtins, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return type(f"{module}.{name}", (_Opaque,), {})


def _restricted_pickle_module():
    mod = types.ModuleType("comrope_restricted_pickle")
    mod.Unpickler = _RestrictedUnpickler
    mod.load = lambda f, **kw: _RestrictedUnpickler(f, **kw).load()
    return mod


def torch_load(path, unsafe):
    """torch.load with the restricted unpickler (default), or plain
    torch.load with --unsafe-pickle (a pickled nn.Module needs its classes)."""
    try:
        if unsafe:
            return torch.load(path, map_location="cpu")
        mod = _restricted_pickle_module()
        ser = torch.serialization
        if not all(hasattr(ser, f) for f in ("_open_file_like", "_is_zipfile",
                                              "_open_zipfile_reader", "_load", "_legacy_load")):
            return torch.load(path, map_location="cpu", pickle_module=mod)
        # torch.load itself: Debian's 1.13 replaces any pickle_module by pickle
        # unless weights_only, so call what it calls
        with ser._open_file_like(path, "rb") as f:
            if ser._is_zipfile(f):
                with ser._open_zipfile_reader(f) as zf:
                    return ser._load(zf, "cpu", mod, encoding="utf-8")
            return ser._legacy_load(f, "cpu", mod, encoding="utf-8")
    except Exception as e:
        raise ConvertError(f"{path}: torch.load failed: {type(e).__name__}: {e}")


def is_state_dict(obj):
    return isinstance(obj, dict) and obj and any(torch.is_tensor(v) for v in obj.values())


def unwrap(obj, where="checkpoint"):
    """The state dict inside a training wrapper (Lightning, custom dicts, a
    whole nn.Module). -> (dict name -> tensor, description of the path)."""
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict(), f"{where} (an nn.Module: its state_dict())"
    if isinstance(obj, _Opaque):
        raise ConvertError(f"{where}: a pickled {type(obj).__qualname__} object, not a state dict; "
                           "if you trust the file, --unsafe-pickle loads it with its classes")
    if not isinstance(obj, dict):
        raise ConvertError(f"{where}: a {type(obj).__name__}, not a state dict")
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, (dict, torch.nn.Module)) and inner is not obj:
            try:
                return unwrap(inner, f"{where}[{key!r}]")
            except ConvertError:
                pass
    if is_state_dict(obj):
        return obj, where
    raise ConvertError(f"{where}: no state dict found (keys: {sorted(map(str, obj))[:10]})")


def strip_prefixes(sd):
    """Removes wrapper prefixes ("module.", "model.", "_orig_mod.") from the
    front of each name until it starts with a model root. Non-tensors and
    names that never reach a root are returned apart."""
    out, outside, stripped = {}, [], {}
    for name, value in sd.items():
        if not torch.is_tensor(value):
            outside.append(f"{name} (not a tensor)")
            continue
        n, removed = name, ""
        while not n.startswith(ROOTS):
            for p in PREFIXES:
                if n.startswith(p):
                    n, removed = n[len(p):], removed + p
                    break
            else:
                break
        if not n.startswith(ROOTS):
            outside.append(name)
            continue
        if n in out:
            raise ConvertError(f"two tensors map to {n} after removing prefixes")
        if removed:
            stripped[removed] = stripped.get(removed, 0) + 1
        out[n] = value
    return out, outside, stripped


def load_state_dict(path, unsafe):
    if os.path.isdir(path):
        for name in ("pytorch_model.bin", "model.pth", "model.pt", "model.ckpt"):
            if os.path.exists(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise ConvertError(f"{path}: no pytorch_model.bin (or model.pth/.pt/.ckpt) in it")
    if not os.path.isfile(path):
        raise ConvertError(f"{path}: no such file")
    obj = torch_load(path, unsafe)
    sd, where = unwrap(obj)
    say(f"read {path}: state dict at {where}, {len(sd)} entries")
    tensors, outside, stripped = strip_prefixes(sd)
    for prefix, count in stripped.items():
        say(f"removed the prefix {prefix!r} from {count} names")
    if outside:
        say(f"dropped {len(outside)} entries outside the model: " + ", ".join(outside[:8])
            + (" ..." if len(outside) > 8 else ""))
    dropped = sorted(n for n in tensors if n.rsplit(".", 1)[-1] in BUFFERS)
    if dropped:
        say(f"dropped {len(dropped)} non-persistent buffers the engine computes itself: "
            + ", ".join(sorted({n.rsplit('.', 1)[-1] for n in dropped}))
            + f" ({dropped[0]}{', ...' if len(dropped) > 1 else ''})")
    for n in dropped:
        del tensors[n]
    if not tensors:
        raise ConvertError("no model tensors (names under vision_model. or classification_head.)")
    arrays = {}
    for n, t in tensors.items():
        if not t.is_floating_point():
            raise ConvertError(f"tensor {n}: dtype {t.dtype}, not floating point")
        arrays[n] = t.detach().to(torch.float64).cpu().numpy()
    return os.path.dirname(os.path.abspath(path)), arrays


# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------

def layer_count(arrays):
    idx = {int(n.split(".")[3]) for n in arrays if n.startswith(VM + "encoder.layers.")}
    return max(idx) + 1 if idx else 0


def infer_from_shapes(arrays):
    """config keys that the tensor shapes determine -> value."""
    got = {}
    pe = arrays.get(VM + "embeddings.patch_embedding.weight")
    if pe is not None and pe.ndim == 4:
        got["hidden_size"], got["num_channels"], got["patch_size"] = pe.shape[0], pe.shape[1], pe.shape[2]
    L = layer_count(arrays)
    if L:
        got["num_hidden_layers"] = L
    fc1 = arrays.get(VM + "encoder.layers.0.mlp.fc1.weight")
    if fc1 is not None:
        got["intermediate_size"] = fc1.shape[0]
    if "classification_head.weight" in arrays:
        got["num_class"] = arrays["classification_head.weight"].shape[0]
        got["mlp_intermediate"] = 0
    elif "classification_head.2.weight" in arrays:
        got["num_class"] = arrays["classification_head.2.weight"].shape[0]
        got["mlp_intermediate"] = arrays["classification_head.0.weight"].shape[0]
    freqs = arrays.get(VM + "encoder.layers.0.self_attn.freqs")
    has_mult = VM + "encoder.layers.0.self_attn.multiplier" in arrays
    if freqs is not None and freqs.ndim == 5:
        got["num_attention_heads"] = freqs.shape[0]
        got["block_size"] = freqs.shape[3]
        got["custom_pe_type"] = ("comrope-ld" if has_mult else
                                 "liere" if freqs.shape[1] > 1 else "comrope-ap")
    ape = arrays.get(VM + "embeddings.position_embedding")
    if ape is not None and ape.ndim == 4 and "patch_size" in got:
        got["image_size"] = ape.shape[1] * got["patch_size"]
    if "custom_pe_type" in got:
        got["keep_ape"] = ape is None  # the official, inverted meaning
    return got


def flag_name(key):
    return "--" + key.replace("_", "-")


def add_config_flags(ap):
    g = ap.add_argument_group("config.json keys (override the config file; needed without one)")
    for key, default in reference.DEFAULTS.items():
        if isinstance(default, bool):
            g.add_argument(flag_name(key), dest="cfg_" + key, metavar="true|false",
                           type=lambda s: {"true": True, "false": False}[s.lower()])
        else:
            g.add_argument(flag_name(key), dest="cfg_" + key, type=type(default),
                           metavar=type(default).__name__.upper())
    g.add_argument("--labels", help="class names, one per line (written as id2label/label2id)")


def build_config(args, src_dir, arrays):
    """-> (config dict to write, where it came from)."""
    path = args.config
    if path is None and os.path.exists(os.path.join(src_dir, "config.json")):
        path = os.path.join(src_dir, "config.json")
    if path:
        with open(path, "r", encoding="utf-8") as f:
            cfg = json.load(f)
        origin = path
    else:
        cfg = {"architectures": ["CustomVITForClassification"], "model_type": "clip_vision_model",
               "torch_dtype": "float32"}
        origin = "flags"
    flags = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
    cfg.update(flags)
    shapes = infer_from_shapes(arrays)
    for key, value in shapes.items():
        if key not in cfg:
            cfg[key] = value
            continue
        if key == "image_size":  # the table has image_size // patch_size rows
            same = cfg[key] // shapes["patch_size"] == value // shapes["patch_size"]
        else:
            same = cfg[key] == value
        if not same:
            raise ConvertError(f"config key {key} = {cfg[key]!r} (from "
                               f"{'the flag' if key in flags else origin}) but the tensors say {value!r}")
    if origin == "flags":
        filled = sorted(set(shapes) - set(flags))
        if filled:
            say("from the tensor shapes: " + ", ".join(f"{k}={shapes[k]}" for k in filled))
        unknown = [k for k in MUST_GIVE if k not in cfg]
        if unknown:
            raise ConvertError("without a config.json the tensors do not tell "
                               + ", ".join(unknown) + ": pass " + " ".join(flag_name(k) for k in unknown))
        defaulted = sorted(k for k in reference.DEFAULTS if k not in cfg)
        if defaulted:
            say("not given, official defaults: "
                + ", ".join(f"{k}={reference.DEFAULTS[k]!r}" for k in defaulted))
        for k in defaulted:
            cfg[k] = reference.DEFAULTS[k]
    if args.labels:
        with open(args.labels, "r", encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        cfg["id2label"] = {str(i): n for i, n in enumerate(names)}
        cfg["label2id"] = {n: i for i, n in enumerate(names)}
    n_class = cfg.get("num_class", reference.DEFAULTS["num_class"])
    if "id2label" in cfg and len(cfg["id2label"]) != n_class:
        raise ConvertError(f"{len(cfg['id2label'])} labels for num_class {n_class}")
    try:
        reference.config_from_dict(cfg)
    except ValueError as e:
        raise ConvertError(f"config: {e}")
    return cfg, origin


def expected_names(cfg):
    """The tensor names the engine loads for this config."""
    c = reference.config_from_dict(cfg)
    names = [VM + "embeddings.class_embedding", VM + "embeddings.patch_embedding.weight",
             VM + "pre_layrnorm.weight", VM + "pre_layrnorm.bias",
             VM + "post_layernorm.weight", VM + "post_layernorm.bias"]
    if c["has_ape"]:
        names.append(VM + "embeddings.position_embedding")
    for i in range(c["num_hidden_layers"]):
        lp = f"{VM}encoder.layers.{i}."
        for part in ("layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2", "self_attn.q_proj",
                     "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"):
            names += [lp + part + ".weight", lp + part + ".bias"]
        if c["custom_pe_type"] in ("liere", "comrope-ap", "comrope-ld"):
            names.append(lp + "self_attn.freqs")
        if c["custom_pe_type"] == "comrope-ld":
            names.append(lp + "self_attn.multiplier")
    if c["mlp_intermediate"] > 0:
        for k in ("0", "2"):
            names += [f"classification_head.{k}.weight", f"classification_head.{k}.bias"]
    else:
        names += ["classification_head.weight", "classification_head.bias"]
    return names


def check_names(cfg, arrays):
    want = set(expected_names(cfg))
    missing = sorted(want - set(arrays))
    extra = sorted(set(arrays) - want)
    if missing:
        raise ConvertError(f"{len(missing)} tensors missing for custom_pe_type "
                           f"{cfg.get('custom_pe_type')}: " + ", ".join(missing[:6]))
    if extra:
        raise ConvertError(f"{len(extra)} tensors that a {cfg.get('custom_pe_type')} model does not "
                           "have (wrong config?): " + ", ".join(extra[:6]))


# --------------------------------------------------------------------------
# writing and validating
# --------------------------------------------------------------------------

def write_checkpoint(out_dir, cfg, arrays, dtype, src_dir):
    os.makedirs(out_dir, exist_ok=True)
    for name, a in arrays.items():
        if not np.all(np.isfinite(a)):
            raise ConvertError(f"tensor {name} holds a NaN or an infinity")
    safetensors_io.write_file(os.path.join(out_dir, "model.safetensors"), arrays, dtype=dtype)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    pre = os.path.join(src_dir, "preprocessor_config.json")
    if os.path.exists(pre) and os.path.abspath(src_dir) != os.path.abspath(out_dir):
        shutil.copyfile(pre, os.path.join(out_dir, "preprocessor_config.json"))
        say("copied preprocessor_config.json")


def classify_logits(classify, model_dir, npy_path):
    proc = subprocess.run([classify, "--model", model_dir, "--logits", "--top-k", "1", npy_path],
                          capture_output=True, text=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    errors = [r["error"] for r in rows if "error" in r]
    if proc.returncode != 0 or errors or not rows:
        raise ConvertError(f"{classify} failed (exit {proc.returncode}): "
                           + ("; ".join(errors) or proc.stderr.strip()[-500:]))
    return np.array([r["logits"] for r in rows], dtype=np.float64)


def validate(out_dir, arrays, dtype, classify, tol):
    """-> True when the engine's logits match the reference's."""
    back, _, dtypes = safetensors_io.read_file(os.path.join(out_dir, "model.safetensors"))
    for name, a in arrays.items():
        want = safetensors_io.decode(safetensors_io.encode(a, dtype), dtype)
        if name not in back or back[name].shape != a.shape or not np.array_equal(back[name], want):
            raise ConvertError(f"{name}: the written tensor does not read back as written")
    say(f"read back: {len(back)} tensors, {dtype}, equal to the source "
        f"({'exactly' if dtype == 'F32' else 'after rounding to ' + dtype})")
    cfg = reference.config_from_dict(json.load(open(os.path.join(out_dir, "config.json"))))
    p, C = cfg["patch_size"], cfg["num_channels"]
    T = max(p, cfg["image_size"] // p * p)
    rng = np.random.default_rng(0)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for (h, w) in ((T, T), (T, 2 * T)):
            x = rng.standard_normal((2, C, h, w)).astype(np.float32)
            path = os.path.join(tmp, f"input_{h}x{w}.npy")
            np.save(path, x)
            ours = classify_logits(classify, out_dir, path)
            ref = reference.logits_for_dir(out_dir, x)
            diff = float(np.abs(ours - ref).max())
            good = diff <= tol
            ok = ok and good
            say(f"engine vs tools/reference.py at {h}x{w}: max |logit diff| = {diff:.3g} "
                f"(logits up to {np.abs(ref).max():.3g}) {'ok' if good else 'FAIL > %g' % tol}")
    return ok


def self_test():
    """The manual check of tools/README.md: tests/fixtures/parity/comrope_ld_b2
    saved by torch.save in the wrappings this tool reads, each converted
    and validated, each output byte-identical to the fixture's file."""
    fixture = os.path.join(ROOT, "tests", "fixtures", "parity", "comrope_ld_b2")
    arrays, _, _ = safetensors_io.read_file(os.path.join(fixture, "model.safetensors"))
    sd = {k: torch.from_numpy(v).to(torch.float32) for k, v in sorted(arrays.items())}
    with open(os.path.join(fixture, "model.safetensors"), "rb") as f:
        want = f.read()
    config = os.path.join(fixture, "config.json")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        hf = os.path.join(tmp, "hf")
        os.makedirs(hf)
        plain = dict(sd)  # with the official non-persistent buffers, as some saves hold them
        plain[VM + "encoder.layers.0.self_attn.block_diag_selector"] = torch.ones(8, 2, 2)
        plain[VM + "encoder.layers.1.self_attn.exponent_matrix"] = torch.ones(4, 2)
        plain[VM + "encoder.layers.1.self_attn.mask"] = torch.ones(1, 2, 8, 1, 1)
        plain[VM + "embeddings.position_ids"] = torch.arange(17)[None]
        torch.save(plain, os.path.join(hf, "pytorch_model.bin"))
        shutil.copyfile(config, os.path.join(hf, "config.json"))
        lightning = {  # what PyTorch Lightning's Trainer.save_checkpoint writes
            "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "2.1.0",
            "state_dict": {**{"model." + k: v for k, v in sd.items()},
                           "criterion.weight": torch.ones(7)},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]}],
            "lr_schedulers": [], "hparams_name": "kwargs",
            "hyper_parameters": argparse.Namespace(lr=1e-3, pe="comrope-ld"),
        }
        torch.save(lightning, os.path.join(tmp, "last.ckpt"))
        torch.save({"module." + k: v for k, v in sd.items()}, os.path.join(tmp, "dp.pth"))
        torch.save({"state_dict": {"model.module." + k: v for k, v in sd.items()}},
                   os.path.join(tmp, "nested.pt"))
        cases = [
            ("pytorch_model.bin + config.json + saved buffers", [hf]),
            ("Lightning .ckpt", [os.path.join(tmp, "last.ckpt"), "--config", config]),
            ("DataParallel .pth", [os.path.join(tmp, "dp.pth"), "--config", config]),
            ("Lightning around DataParallel .pt, config from flags",
             [os.path.join(tmp, "nested.pt"), "--image-size", "16", "--hidden-act", "quick_gelu"]),
        ]
        for k, (what, argv) in enumerate(cases):
            out = os.path.join(tmp, f"out{k}")
            print(f"== {what}", flush=True)
            rc = main(argv + ["--out", out])
            path = os.path.join(out, "model.safetensors")
            same = False
            if os.path.exists(path):
                with open(path, "rb") as f:
                    same = f.read() == want
            ok = rc == 0 and same
            failures += not ok
            print(f"{'ok' if ok else 'FAIL'} {what}: exit {rc}, model.safetensors "
                  f"{'identical to' if same else 'DIFFERS from'} the fixture's", flush=True)
    print("self-test passed" if not failures else f"self-test: {failures} FAILED")
    return 1 if failures else 0


def main(argv=None):
    if argv is None and sys.argv[1:] == ["--self-test"]:
        return self_test()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="pytorch_model.bin / .pth / .pt / .ckpt, or a directory")
    ap.add_argument("--out", required=True, help="directory to write config.json and model.safetensors")
    ap.add_argument("--config", help="config.json to use (default: the one next to the checkpoint)")
    ap.add_argument("--dtype", choices=("F32", "F16", "BF16"), default="F32",
                    help="storage dtype of model.safetensors (default %(default)s)")
    ap.add_argument("--classify", default=os.path.join(ROOT, "build", "comrope-classify"),
                    help="the engine's CLI used to validate (default %(default)s)")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="largest logit difference (1e-4)")
    ap.add_argument("--no-validate", action="store_true", help="write only")
    ap.add_argument("--unsafe-pickle", action="store_true",
                    help="unpickle arbitrary objects (only for files you trust)")
    add_config_flags(ap)
    args = ap.parse_args(argv)
    try:
        src_dir, arrays = load_state_dict(args.checkpoint, args.unsafe_pickle)
        cfg, origin = build_config(args, src_dir, arrays)
        check_names(cfg, arrays)
        write_checkpoint(args.out, cfg, arrays, args.dtype, src_dir)
        say(f"wrote {args.out}/config.json (from {origin}) and model.safetensors "
            f"({len(arrays)} tensors, {sum(a.size for a in arrays.values())} parameters, {args.dtype})")
        if args.no_validate:
            return 0
        if not os.access(args.classify, os.X_OK):
            raise ConvertError(f"{args.classify} not found: build it (cmake --build build) or pass "
                               "--classify, or --no-validate")
        if not validate(args.out, arrays, args.dtype, args.classify, args.tolerance):
            say("VALIDATION FAILED")
            return 1
        say("valid: the engine loads it and agrees with the reference")
        return 0
    except ConvertError as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
