#!/usr/bin/python3
"""The multi-resolution ablation: each position encoding trained at one size
against the same encoding fine-tuned across sizes, from two sweeps.

    /usr/bin/python3 bench/ablation.py \
        --single bench/results/study/resolution_sweep.csv \
        --multi bench/results/study-mr/resolution_sweep.csv \
        [--png bench/results/study-mr/ablation.png] [--markdown]

Reads the CSVs bench/sweep_all.sh writes (model, pe_type, height, width,
top1, ...), pairs the runs by pe_type (encodings present in both), and
prints per encoding and size the top-1 of each and the change, the mean
over the seven sizes and the mean drop from 28x28 over the other six; with
--markdown the two tables as the READMEs show them; with --png a plot:
one panel per encoding, top-1 against the image side, single size dashed,
multi-resolution solid. Needs matplotlib only for --png.
"""
import argparse
import csv
import os

NAMES = {"raw": "APE (raw)", "vanilla-rope": "RoPE (vanilla)", "liere": "LieRE",
         "comrope-ap": "ComRoPE-AP", "comrope-ld": "ComRoPE-LD"}
ORDER = ["raw", "vanilla-rope", "liere", "comrope-ap", "comrope-ld"]


def load(path):
    """{pe_type: {(h, w): top1}}"""
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["pe_type"], {})[(int(row["height"]), int(row["width"]))] = float(row["top1"])
    return out


def sizes_of(runs):
    square = sorted({s for r in runs for s in r if s[0] == s[1]})
    other = sorted({s for r in runs for s in r if s[0] != s[1]})
    return square + other


def stats(run, sizes, train=(28, 28)):
    vals = [run[s] for s in sizes if s in run]
    mean = sum(vals) / len(vals)
    drops = [run[train] - run[s] for s in sizes if s in run and s != train]
    return mean, sum(drops) / len(drops)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--single", required=True)
    ap.add_argument("--multi", required=True)
    ap.add_argument("--png")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    single, multi = load(args.single), load(args.multi)
    pes = [pe for pe in ORDER if pe in single and pe in multi]
    if not pes:
        raise SystemExit("ablation: no pe_type in both sweeps")
    sizes = sizes_of([single[pe] for pe in pes] + [multi[pe] for pe in pes])
    label = lambda s: f"{s[0]}x{s[1]}"  # noqa: E731
    head = "| variant | training | " + " | ".join(
        f"**{label(s)}**" if s == (28, 28) else label(s) for s in sizes) + " | mean | mean drop |"
    rule = "|---|---|" + "---|" * (len(sizes) + 2)
    lines = [head, rule]
    for pe in pes:
        for kind, run in (("28x28 only", single[pe]), ("16-84 px", multi[pe])):
            mean, drop = stats(run, sizes)
            cells = [f"**{run[s]:.2f}**" if s == (28, 28) else f"{run[s]:.2f}" for s in sizes]
            lines.append(f"| {NAMES.get(pe, pe)} | {kind} | " + " | ".join(cells) + f" | {mean:.2f} | {drop:.2f} |")
    gain = ["", "Change from training across sizes, in points:", "",
            "| variant | " + " | ".join(label(s) for s in sizes) + " | mean |",
            "|---|" + "---|" * (len(sizes) + 1)]
    for pe in pes:
        d = [multi[pe][s] - single[pe][s] for s in sizes]
        gain.append(f"| {NAMES.get(pe, pe)} | " + " | ".join(f"{x:+.2f}" for x in d) + f" | {sum(d) / len(d):+.2f} |")
    if args.markdown:
        print("\n".join(lines + gain))
    else:
        for pe in pes:
            ms, ds = stats(single[pe], sizes)
            mm, dm = stats(multi[pe], sizes)
            print(f"{pe:13s} single: mean {ms:.2f} drop {ds:.2f} | multi: mean {mm:.2f} drop {dm:.2f} | "
                  + " ".join(f"{label(s)} {single[pe][s]:.2f}->{multi[pe][s]:.2f}" for s in sizes))
    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        sq = [s for s in sizes if s[0] == s[1]]
        fig, axes = plt.subplots(1, len(pes), figsize=(4.2 * len(pes), 4.2), dpi=110, sharey=True)
        axes = axes if len(pes) > 1 else [axes]
        lo = min(min(r[s] for s in sq) for pe in pes for r in (single[pe], multi[pe]))
        hi = max(max(r[s] for s in sq) for pe in pes for r in (single[pe], multi[pe]))
        for ax, pe in zip(axes, pes):
            for kind, run, style in (("28x28 only", single[pe], "--"), ("16-84 px", multi[pe], "-")):
                ax.plot([s[0] for s in sq], [run[s] for s in sq], style, marker="o", markersize=4, label=kind)
            ax.axvline(28, color="grey", linewidth=0.8, alpha=0.5)
            ax.set_title(NAMES.get(pe, pe), fontsize=10)
            ax.set_xlabel("image side (px), square")
            ax.grid(True, alpha=0.3)
            ax.set_ylim(lo - 2, hi + 1.5)
        axes[0].set_ylabel("test top-1 % (10 000 images, through HTTP)")
        axes[0].legend(fontsize=8, loc="lower center")
        fig.suptitle("Trained at 28x28 only vs fine-tuned across 16-84 px, same network and recipe per encoding",
                     fontsize=10)
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(args.png)), exist_ok=True)
        fig.savefig(args.png)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
