"""Why the arms differ, from the BN monitor: training-loss curves and the paper's two observations over training.

    # 1. from the runs' CSV logs to a small JSONL (committed): one line per run
    python analysis/why_width.py extract docs/results/vgg_width/w32_runs --results docs/results/vgg_width/w32.jsonl \
        --out docs/results/vgg_width/w32_curves.jsonl
    # 2. per-layer records (the observations script), then the figure from both JSONL files
    python analysis/observations.py extract docs/results/vgg_width/w32_runs --results docs/results/vgg_width/w32.jsonl \
        --out docs/results/vgg_width/w32_layers.jsonl
    python analysis/why_width.py plot docs/results/vgg_width/w32_curves.jsonl docs/results/vgg_width/w32_layers.jsonl \
        --arms standard,bninit --png docs/results/vgg_width/why_w32.png --md docs/results/vgg_width/why_w32.md

Each curves line holds, for one (arm, seed): the mean training loss of each epoch (``train_loss_epoch``), and at
each logged step (every 10 steps) the median over the hidden BN layers of |γ − γ₀| / γ₀ and the largest
peak-|x̂| / sqrt(m − 1) over all BN layers (``bn/all/xhat_bound_ratio``).
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from observations import INPUT_BN, _columns, _init_scale, extract_or_plot

BOUND_KEY = "bn/all/xhat_bound_ratio"


def _run_rows(runs_dir: Path, run: dict[str, Any]) -> list[dict[str, str]]:
    path = runs_dir / run["arm"] / f"seed_{run['seed']}" / "fit" / "lightning_logs" / "version_0" / "metrics.csv"
    with open(path) as fh:
        return list(csv.DictReader(fh))


def curves(rows: list[dict[str, str]], gamma0: float) -> dict[str, Any]:
    """Per-epoch training loss and per-logged-step BN summaries of one run's CSV rows."""
    columns = _columns(list(rows[0]))  # 0.2's bn/<layer>/<stat> or 0.3's bn_<stat>/<label>
    drift_keys = [c["scale_drift"] for layer, c in columns.items() if layer != INPUT_BN and "scale_drift" in c]
    epochs = [float(r["train_loss_epoch"]) for r in rows if r.get("train_loss_epoch")]
    steps, drift, bound = [], [], []
    for r in rows:
        values = [r.get(key) for key in drift_keys]
        if not r.get(BOUND_KEY) or any(v in (None, "") for v in values):
            continue
        steps.append(int(r["step"]))
        drift.append(statistics.median(float(v) / gamma0 for v in values))
        bound.append(float(r[BOUND_KEY]))
    return {"train_loss_epoch": epochs, "steps": steps, "median_rel_scale_drift": drift, "max_bound_ratio": bound}


def extract(runs_dir: Path, results: Path, out: Path) -> int:
    lines = []
    for text in results.read_text().splitlines():
        run = json.loads(text)
        if "error" in run:
            continue
        gamma0 = _init_scale(run["config"]["overrides"] + run["config"]["args"])
        record = curves(_run_rows(runs_dir, run), gamma0)
        lines.append({"arm": run["arm"], "seed": run["seed"], "gamma0": gamma0, "test_acc": run.get("test_acc"),
                      **record})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return len(lines)


def _band(series: list[list[float]]) -> tuple[list[float], list[float], list[float]]:
    n = min(len(s) for s in series)
    cols = [[s[i] for s in series] for i in range(n)]
    return [statistics.fmean(c) for c in cols], [min(c) for c in cols], [max(c) for c in cols]


def _layer_means(layers: list[dict[str, Any]], arms: list[str]) -> dict[tuple[str, str], dict[str, float]]:
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in layers:
        if r["arm"] in arms:
            grouped[(r["arm"], r["layer"])].append(r)
    return {k: {"rel_drift": statistics.fmean(r["final_scale_drift"] / r["gamma0"] for r in rs),
                "peak_ratio": statistics.fmean(r["peak_ratio"] for r in rs),
                "m": rs[0]["m"], "seeds": len(rs)} for k, rs in grouped.items()}


def table(curve_lines: list[dict[str, Any]], layers: list[dict[str, Any]], arms: list[str]) -> str:
    out = ["| arm | runs | final train loss (mean, min–max) | epoch where loss < 1.0 (median) |",
           "|---|---:|---|---:|"]
    for arm in arms:
        runs = [c for c in curve_lines if c["arm"] == arm]
        final = [c["train_loss_epoch"][-1] for c in runs]
        below = [next((i + 1 for i, v in enumerate(c["train_loss_epoch"]) if v < 1.0), None) for c in runs]
        reached = [b for b in below if b is not None]
        median = f"{statistics.median(reached):g} ({len(reached)} of {len(runs)} runs)" if reached else "never"
        out.append(f"| {arm} | {len(runs)} | {statistics.fmean(final):.3f} ({min(final):.3f}–{max(final):.3f}) | "
                   f"{median} |")
    out += ["", "| layer | m | " + " | ".join(f"{a}: drift / γ₀ | {a}: peak / sqrt(m − 1)" for a in arms) + " |",
            "|---|---:|" + "---:|---:|" * len(arms)]
    means = _layer_means(layers, arms)
    for layer in dict.fromkeys(lay for _, lay in means):
        cells = " | ".join(f"{means[(a, layer)]['rel_drift']:.1%} | {means[(a, layer)]['peak_ratio']:.3f}"
                           for a in arms)
        out.append(f"| {layer} | {means[(arms[0], layer)]['m']} | {cells} |")
    return "\n".join(out) + "\n"


def figure(curve_lines: list[dict[str, Any]], layers: list[dict[str, Any]], arms: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for arm in arms:
        runs = [c for c in curve_lines if c["arm"] == arm]
        mean, low, high = _band([c["train_loss_epoch"] for c in runs])
        epochs = range(1, len(mean) + 1)
        (line,) = axes[0, 0].plot(epochs, mean, "o-", ms=3, label=f"{arm} (mean, min–max of {len(runs)})")
        axes[0, 0].fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
        steps = runs[0]["steps"][: min(len(c["steps"]) for c in runs)]
        for key, ax in (("median_rel_scale_drift", axes[1, 0]), ("max_bound_ratio", axes[1, 1])):
            mean, low, high = _band([c[key] for c in runs])
            ax.plot(steps, mean, color=line.get_color(), label=arm)
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    means = _layer_means(layers, arms)
    names = list(dict.fromkeys(lay for _, lay in means))
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        offs = [v + (i - (len(arms) - 1) / 2) * width for v in range(len(names))]
        axes[0, 1].bar(offs, [means[(arm, n)]["rel_drift"] for n in names], width, label=arm)
    axes[0, 1].set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    axes[0, 0].set_yscale("log")
    labels = (("training loss per epoch (log scale)", "epoch"), ("final |γ − γ₀| / γ₀ per layer", ""),
              ("median over hidden layers of |γ − γ₀| / γ₀", "step"),
              ("largest peak |x̂| / sqrt(m − 1) over layers", "step"))
    for ax, (title, xlabel) in zip(axes.flat, labels):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> None:
    args = extract_or_plot(__doc__.splitlines()[0], ["curves", "layers"], extract, argv, arms="standard,bninit")
    if args is None:
        return
    arms = args.arms.split(",")
    curve_lines = [json.loads(x) for x in args.curves.read_text().splitlines()]
    layers = [json.loads(x) for x in args.layers.read_text().splitlines()]
    figure(curve_lines, layers, arms, args.png)
    args.md.write_text(table(curve_lines, layers, arms))
    print(args.md.read_text(), end="")
    print(f"figure: {args.png}")


if __name__ == "__main__":
    main()
