#!/usr/bin/python3
"""Test top-1 per epoch of a training run, one line per resolution, as a PNG.

    /usr/bin/python3 tools/plot_training.py models/fashion-comrope-ld/metrics.json \
        models/fashion-comrope-ld/training_curve.png [--parent models/fashion-comrope-ld-28/metrics.json]
        [--title TEXT]

Reads the `history` of a metrics.json written by tools/train.py (each epoch:
test_top1 at the training resolution, test_top1_by_resolution at the others
evaluated that epoch). With `init_from`, the parent's figures are epoch 0
(its test_top1, and its test_top1_by_resolution where its metrics.json has
them; --parent names another metrics.json to take them from, e.g. after
the parent was moved). Needs matplotlib (Debian python3-matplotlib).
"""
import argparse
import json
import os


def series(metrics, parent=None):
    """{resolution: [(epoch, top1)]}, the training resolution first."""
    h, w = metrics["resolution"]
    train = f"{h}x{w}"
    out = {train: []}
    parent = parent or metrics.get("init_from") or {}
    if "test_top1" in parent:
        out[train].append((0, parent["test_top1"]))
        for res, v in (parent.get("test_top1_by_resolution") or {}).items():
            out.setdefault(res, []).append((0, v))
    for e in metrics.get("history", []):
        out[train].append((e["epoch"], e["test_top1"]))
        for res, v in (e.get("test_top1_by_resolution") or {}).items():
            out.setdefault(res, []).append((e["epoch"], v))
    return train, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics")
    ap.add_argument("png")
    ap.add_argument("--parent", help="metrics.json of the model this run started from (epoch 0)")
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    with open(args.metrics, "r", encoding="utf-8") as f:
        metrics = json.load(f)
    parent = None
    if args.parent:
        with open(args.parent, "r", encoding="utf-8") as f:
            parent = json.load(f)
    train, data = series(metrics, parent)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def area(res):
        a, b = res.split("x")
        return int(a) * int(b)

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for res in sorted(data, key=area):
        pts = sorted(data[res])
        if len(pts) < 2:  # a size evaluated once (the parent's extra sizes) is no curve
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        bold = res == train
        ax.plot(xs, ys, marker="o", markersize=3 if not bold else 4, linewidth=2.4 if bold else 1.3,
                label=f"{res}" + (" (config image_size)" if bold else ""))
    ax.set_xlabel("epoch (0: the model it started from)" if parent or metrics.get("init_from") else "epoch")
    ax.set_ylabel("test top-1 % (10 000 images)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(args.title or f"{metrics.get('custom_pe_type', '?')}: test top-1 per epoch and resolution",
                 fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.png)), exist_ok=True)
    fig.savefig(args.png)
    print(f"wrote {args.png}: {', '.join(f'{r} ({len(v)} points)' for r, v in data.items())}")


if __name__ == "__main__":
    main()
