"""Gap vs training budget: the paired difference (mean and 95% CI) of each budget's comparison against its steps.

    python analysis/budget_plot.py docs/results/vgg_cifar10/e05.jsonl docs/results/vgg_cifar10/e12.jsonl \
        docs/results/vgg_cifar10/e25.jsonl --png docs/results/vgg_cifar10/gap_vs_budget.png \
        --md docs/results/vgg_cifar10/gap_vs_budget.md

Every number comes from the package's report (`paired_report`): the two-sided 95% paired t interval for the
figure, and the one-sided paired t-test (H1: bninit > standard, the paper's) for the table.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from lightning_bninit.experiments.report import paired_report
from lightning_bninit.experiments.results import load_results


def budget(path: Path, metric: str, baseline: str, treatment: str) -> dict[str, Any]:
    results = load_results(path)
    two = paired_report(results, metric, baseline, treatment, alternative="two-sided")
    one = paired_report(results, metric, baseline, treatment, alternative="greater")
    steps = statistics.median(r.config["fit_steps"] for r in results.runs)
    epochs = statistics.median(r.config["fit_epochs"] for r in results.runs)
    return {"file": path.name, "steps": int(steps), "epochs": int(epochs), "n_pairs": two.n_pairs,
            "baseline_mean": two.arms[baseline]["mean"], "treatment_mean": two.arms[treatment]["mean"],
            "mean_diff": two.mean_diff, "ci_low": two.ci_low, "ci_high": two.ci_high,
            "p_one_sided": one.p_value_ttest}


def comparison_args(description: str, argv: list[str] | None) -> argparse.Namespace:
    """The command line shared by the figures of one paired comparison per results file (budget, width)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--metric", default="test_acc")
    ap.add_argument("--baseline", default="standard")
    ap.add_argument("--treatment", default="bninit")
    ap.add_argument("--png", type=Path, required=True)
    ap.add_argument("--md", type=Path, required=True)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = comparison_args(__doc__.splitlines()[0], argv)
    rows = sorted((budget(p, args.metric, args.baseline, args.treatment) for p in args.results),
                  key=lambda r: r["steps"])
    lines = [f"| budget | steps | pairs | {args.baseline} | {args.treatment} | difference | 95% CI (two-sided t) "
             "| one-sided p |", "|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['epochs']} epochs | {r['steps']} | {r['n_pairs']} | {r['baseline_mean']:.4f} | "
                     f"{r['treatment_mean']:.4f} | {r['mean_diff']:+.4f} | [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] "
                     f"| {r['p_one_sided']:.3g} |")
    args.md.write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    xs = [r["steps"] for r in rows]
    ys = [r["mean_diff"] for r in rows]
    err = [[r["mean_diff"] - r["ci_low"] for r in rows], [r["ci_high"] - r["mean_diff"] for r in rows]]
    ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=4, label=f"{args.treatment} − {args.baseline} (95% CI)")
    for r in rows:
        ax.annotate(f"{r['epochs']} ep, n={r['n_pairs']}", (r["steps"], r["mean_diff"]), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.margins(x=0.15)
    ax.set_xlabel("training steps (cosine schedule over the whole run)")
    ax.set_ylabel(f"paired difference in {args.metric}")
    ax.set_title("Gap vs training budget", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=90)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
