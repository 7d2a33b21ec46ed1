"""Gap against width: the paired difference (mean and 95% CI) of bninit vs standard at each network width, with each
arm's test accuracy and final training loss.

    python analysis/width_plot.py docs/results/vgg_width/w16.jsonl docs/results/vgg_width/w24.jsonl \
        docs/results/vgg_width/w32.jsonl --png docs/results/vgg_width/gap_vs_width.png \
        --md docs/results/vgg_width/gap_vs_width.md

The width of a file is read from its runs' ``--model.width=W`` argument (every run of a file must have the same).
Only the two arms compared are read from each file (a file may hold more, e.g. the ablation arms); pairs are
matched by seed. Every statistic comes from the package's report (`paired_report`): the two-sided 95% paired t
interval for the figure, the one-sided paired t-test (H1: bninit > standard) for the table. The final training loss
is the last epoch's mean training loss (``fit_metrics.train_loss_epoch`` of each results line).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from budget_plot import comparison_args

from lightning_bninit.experiments.report import paired_report
from lightning_bninit.experiments.results import Results, load_results

WIDTH_ARG = "--model.width="


def width_of(results: Results) -> int:
    """The ``--model.width`` shared by every run of ``results``."""
    widths = {int(a[len(WIDTH_ARG):]) for r in results.runs for a in r.config["args"] + r.config["overrides"]
              if a.startswith(WIDTH_ARG)}
    if len(widths) != 1:
        raise ValueError(f"{results.path}: expected one {WIDTH_ARG}W among the runs' args, found {sorted(widths)}")
    return widths.pop()


def _train_loss(results: Results, arm: str, seeds: set[int]) -> list[float]:
    return [r.config["fit_metrics"]["train_loss_epoch"] for r in results.runs if r.arm == arm and r.seed in seeds]


def width_row(path: Path, metric: str, baseline: str, treatment: str) -> dict[str, Any]:
    results = load_results(path).only([baseline, treatment])
    two = paired_report(results, metric, baseline, treatment, alternative="two-sided")
    one = paired_report(results, metric, baseline, treatment, alternative="greater")
    seeds = {r.seed for r in results.runs if r.arm == baseline} & {r.seed for r in results.runs if r.arm == treatment}
    loss = {arm: _train_loss(results, arm, seeds) for arm in (baseline, treatment)}
    return {"file": path.name, "width": width_of(results), "n_pairs": two.n_pairs,
            "baseline_mean": two.arms[baseline]["mean"], "baseline_std": two.arms[baseline]["std"],
            "treatment_mean": two.arms[treatment]["mean"], "treatment_std": two.arms[treatment]["std"],
            "mean_diff": two.mean_diff, "ci_low": two.ci_low, "ci_high": two.ci_high,
            "p_one_sided": one.p_value_ttest, "wins": sum(d > 0 for d in two.differences),
            "baseline_loss": statistics.fmean(loss[baseline]), "treatment_loss": statistics.fmean(loss[treatment])}


def markdown(rows: list[dict[str, Any]], baseline: str, treatment: str) -> str:
    lines = [f"| width | pairs | {baseline} | {treatment} | difference | 95% CI (two-sided t) | one-sided p | "
             f"{treatment} better | final train loss {baseline} | final train loss {treatment} |",
             "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['width']} | {r['n_pairs']} | {r['baseline_mean']:.4f} ± {r['baseline_std']:.4f} | "
                     f"{r['treatment_mean']:.4f} ± {r['treatment_std']:.4f} | {r['mean_diff']:+.4f} | "
                     f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {r['p_one_sided']:.3g} | "
                     f"{r['wins']} of {r['n_pairs']} | {r['baseline_loss']:.3f} | {r['treatment_loss']:.3f} |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict[str, Any]], path: Path, metric: str, baseline: str, treatment: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["width"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.9))
    err = [[r["mean_diff"] - r["ci_low"] for r in rows], [r["ci_high"] - r["mean_diff"] for r in rows]]
    axes[0].errorbar(xs, [r["mean_diff"] for r in rows], yerr=err, fmt="o-", capsize=4,
                     label=f"{treatment} − {baseline} (95% CI)")
    for r in rows:
        axes[0].annotate(f"n={r['n_pairs']}, p={r['p_one_sided']:.2g}", (r["width"], r["mean_diff"]),
                         textcoords="offset points", xytext=(8, -3), fontsize=8)
    axes[0].axhline(0, color="black", lw=0.8)
    axes[0].set_ylabel(f"paired difference in {metric}")
    for arm, key in ((baseline, "baseline"), (treatment, "treatment")):
        axes[1].errorbar(xs, [r[f"{key}_mean"] for r in rows], yerr=[r[f"{key}_std"] for r in rows], fmt="o-",
                         capsize=3, label=f"{arm} (mean ± sd)")
        axes[2].plot(xs, [r[f"{key}_loss"] for r in rows], "o-", label=arm)
    axes[1].set_ylabel(metric)
    axes[2].set_ylabel("final training loss (last epoch, mean over seeds)")
    titles = ("Gap vs width", f"{metric} per arm", "final training loss per arm")
    for ax, title in zip(axes, titles):
        ax.set_xticks(xs)
        ax.set_xlabel("width W (convs W, 2W, 4W, 4W, 8W × 4)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        ax.margins(x=0.15)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")


def main(argv: list[str] | None = None) -> None:
    args = comparison_args(__doc__.splitlines()[0], argv)
    rows = sorted((width_row(p, args.metric, args.baseline, args.treatment) for p in args.results),
                  key=lambda r: r["width"])
    args.md.write_text(markdown(rows, args.baseline, args.treatment))
    figure(rows, args.png, args.metric, args.baseline, args.treatment)
    print(args.md.read_text(), end="")
    print(f"figure: {args.png}")


if __name__ == "__main__":
    main()
