#!/usr/bin/python3
"""Accuracy-parity fixture of the default model (tests/fixtures/accuracy).

    /usr/bin/python3 tools/make_accuracy_fixture.py [--model models/fashion-comrope-ld]
        [--count 300] [--resolutions 16x16,20x20,40x40,56x56,84x84,28x40]
        [--out tests/fixtures/accuracy]

For the first --count Fashion-MNIST test images, at the model's training
resolution and at each of --resolutions (the sizes the default model is
promised to be good at), through the serving pipeline (PIL Resize((h, w))
bilinear antialiased, the identity at 28x28, ToTensor, Normalize(0.5, 0.5)):
  - the reference logits, tools/reference.py in float64;
  - the training model's logits (tools/train.py's network in float32, eval
    mode, loaded from the same checkpoint): what "PyTorch gives"; its top-1
    on these images is the figure the daemon must reproduce;
and checks that the two agree within 1e-5 and pick the same classes.

Writes (about 320 KB):
  images.npy  uint8 [N, 28, 28]   the test images as stored in the idx file
  labels.npy  uint8 [N]           their classes
  logits.npy  float32 [N, K]      reference logits at the training resolution
                                  (rounded from float64)
  logits_HxW.npy                  the same at each of --resolutions
  meta.json   model, resolution, counts, the PyTorch top-1 on these N images,
              the full-test-set top-1 from the model's metrics.json, the
              checkpoint's sha256 (a retrained model needs a new fixture);
              under "resolutions" one entry per size: [h, w], its logits
              file, the PyTorch and reference counts of correct answers
Read by tests/test_accuracy.c (the engine, through image_prepare, as the
daemon prepares an upload) and tests/integration/sweep.sh (the daemon
through HTTP, via bench/resolution_sweep.py).
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fashion_mnist  # noqa: E402
import reference  # noqa: E402
import train  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def classify(model, ref_cfg, ref_w, images, labels, h, w, tolerance):
    """The training model (float32) and tools/reference.py (float64) on the
    images at h x w: a dict of the counts and the reference logits, or None
    (said on stderr) if the two disagree."""
    count = len(labels)
    if (h, w) == images.shape[1:]:
        pixels = train.normalize_u8(torch.from_numpy(images))
    else:
        pixels = train.pil_batch(images, h, w)
    with torch.no_grad():
        ours = model(pixels).double().numpy()
    ref = reference.forward(ref_cfg, ref_w, pixels.numpy()).numpy()
    diff = float(np.abs(ours - ref).max())
    torch_pred, ref_pred = ours.argmax(1), ref.argmax(1)
    torch_correct = int((torch_pred == labels).sum())
    ref_correct = int((ref_pred == labels).sum())
    agree = int((torch_pred == ref_pred).sum())
    print(f"{count} images at {h}x{w}: PyTorch (training model, float32) top-1 "
          f"{100.0 * torch_correct / count:.2f}% ({torch_correct}); reference float64 "
          f"{100.0 * ref_correct / count:.2f}% ({ref_correct}); max |logit diff| {diff:.3g}; "
          f"same class {agree}/{count}", flush=True)
    if diff > tolerance or agree != count:
        print(f"ERROR: at {h}x{w} the training model and tools/reference.py differ ({diff:.3g} > "
              f"{tolerance} or {count - agree} classes differ)", file=sys.stderr)
        return None
    return {"h": h, "w": w, "ref": ref, "torch_correct": torch_correct, "ref_correct": ref_correct,
            "diff": diff}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "fashion-comrope-ld"))
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--resolutions", default="16x16,20x20,40x40,56x56,84x84,28x40",
                    help="sizes HxW besides the training one ('' for none)")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "accuracy"))
    ap.add_argument("--tolerance", type=float, default=1e-5,
                    help="largest |training model - reference| logit difference accepted")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    images, labels = fashion_mnist.load("test")
    images, labels = images[:args.count], labels[:args.count]
    cfg, model = train.load_checkpoint(args.model)
    r = cfg["image_size"]
    ref_cfg, ref_w = reference.load_model(args.model)
    sizes = [(r, r)]
    for item in filter(None, args.resolutions.split(",")):
        h, w = (int(v) for v in item.lower().split("x"))
        if (h, w) not in sizes:
            sizes.append((h, w))
    runs = []
    for h, w in sizes:
        run = classify(model, ref_cfg, ref_w, images, labels, h, w, args.tolerance)
        if run is None:
            return 1
        runs.append(run)

    metrics = {}
    mpath = os.path.join(args.model, "metrics.json")
    if os.path.exists(mpath):
        with open(mpath, "r", encoding="utf-8") as f:
            metrics = json.load(f)
    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, "images.npy"), np.ascontiguousarray(images, dtype=np.uint8))
    np.save(os.path.join(args.out, "labels.npy"), labels.astype(np.uint8))
    entries = []
    for i, run in enumerate(runs):
        name = "logits.npy" if i == 0 else f"logits_{run['h']}x{run['w']}.npy"
        np.save(os.path.join(args.out, name), run["ref"].astype(np.float32))
        entries.append({"resolution": [run["h"], run["w"]], "logits": name,
                        "pytorch_correct": run["torch_correct"],
                        "pytorch_top1": round(100.0 * run["torch_correct"] / args.count, 4),
                        "reference_correct": run["ref_correct"],
                        "train_model_vs_reference_max_abs_diff": run["diff"]})
    full = metrics.get("test_top1_by_resolution", {})
    for e in entries:
        key = f"{e['resolution'][0]}x{e['resolution'][1]}"
        e["full_test_top1"] = metrics.get("test_top1") if e is entries[0] else full.get(key)
    first = runs[0]
    meta = {
        "generated_by": "tools/make_accuracy_fixture.py",
        "model": os.path.relpath(os.path.abspath(args.model), ROOT),
        "model_sha256": sha256(os.path.join(args.model, "model.safetensors")),
        "pe_type": cfg["custom_pe_type"],
        "dataset": "Fashion-MNIST test set, images 0 .. count-1",
        "count": args.count,
        "resolution": [r, r],
        "num_class": int(first["ref"].shape[1]),
        "pytorch_correct": first["torch_correct"],
        "pytorch_top1": round(100.0 * first["torch_correct"] / args.count, 4),
        "reference_correct": first["ref_correct"],
        "train_model_vs_reference_max_abs_diff": first["diff"],
        "full_test_top1": metrics.get("test_top1"),
        "full_test_correct": metrics.get("test_correct"),
        "logits": "tools/reference.py float64, stored as float32",
        "resolutions": entries,
    }
    with open(os.path.join(args.out, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}: images.npy, labels.npy, {', '.join(e['logits'] for e in entries)}, meta.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
