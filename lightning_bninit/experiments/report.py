"""The paired significance report of ``bninit report``: the paper's one-sided paired t-test and robustness checks.

A thin orchestration of small steps: check the arguments, pair the two arms' values by seed, compute the statistics
(:mod:`~lightning_bninit.experiments.stats`), and word the verdict. Bad input raises :class:`ReportError` with a
message that names the problem; no number is computed from data the report could not vouch for.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lightning_bninit.experiments.results import RESERVED_KEYS, ReportError, Results, RunRecord, load_results
from lightning_bninit.experiments.stats import bootstrap_ci, paired_t_power, pairs_for_power

__all__ = [
    "RESERVED_KEYS", "ReportError", "RunRecord", "Results", "PairedReport", "load_results", "paired_report",
    "pairs_for_power", "format_markdown", "plot_differences",
]

Alternative = Literal["greater", "less", "two-sided"]


@dataclass
class PairedReport:
    """Result of :func:`paired_report`; ``to_dict()`` gives the ``--json`` object."""

    metric: str
    baseline: str
    treatment: str
    alternative: str
    alpha: float
    arms: dict[str, dict[str, float | int]]
    seeds: list[int]
    baseline_values: list[float]
    treatment_values: list[float]
    differences: list[float]
    n_pairs: int
    mean_diff: float
    std_diff: float
    t_statistic: float
    p_value_ttest: float
    wilcoxon_statistic: float
    p_value_wilcoxon: float
    ci95_low: float
    ci95_high: float
    ci_method: str
    cohens_dz: float
    power_observed: float | None
    n_pairs_for_80_power: int | None
    significant: bool
    verdict: str
    unpaired: dict[str, list[int]]
    failed_runs: dict[str, list[int]]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary of every field (non-finite floats become ``None``)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return clean(asdict(self))


@dataclass
class _Pairs:
    """The two arms' values of one metric, by seed, and what was left out."""

    values: dict[str, dict[int, float]]
    seeds: list[int]
    unpaired: dict[str, list[int]]
    failed_runs: dict[str, list[int]]
    notes: list[str]


def paired_report(
    results: Results,
    metric: str,
    baseline: str = "standard",
    treatment: str = "bninit",
    *,
    alternative: Alternative = "greater",
    alpha: float = 0.05,
    n_resamples: int = 10_000,
    bootstrap_seed: int = 0,
) -> PairedReport:
    """Compare two arms run with the same seeds.

    Args:
        results: loaded with :func:`load_results`.
        metric: the metric to compare, e.g. ``"test_acc"``.
        baseline: the reference arm.
        treatment: the arm expected to be better.
        alternative: ``"greater"`` (treatment > baseline, the paper's test; use it for metrics
            where higher is better), ``"less"`` (e.g. for a loss) or ``"two-sided"``.
        alpha: significance level of the verdict.
        n_resamples: bootstrap resamples.
        bootstrap_seed: seed of the bootstrap resampling, so a report is reproducible.

    Returns:
        The statistics and the verdict.

    Raises:
        ReportError: unknown arm or metric, non-numeric or non-finite metric values, fewer than
            two pairs, or paired differences without variance.

    Example::

        report = paired_report(load_results("results.jsonl"), "test_acc", "standard", "bninit")
        print(format_markdown(report))
    """
    _arg_validation(results, baseline, treatment, alternative, alpha)
    pairs = _pair(results, metric, baseline, treatment)
    base = np.array([pairs.values[baseline][s] for s in pairs.seeds])
    treat = np.array([pairs.values[treatment][s] for s in pairs.seeds])
    computed = _compute(treat - base, treat, base, metric, alternative, alpha, n_resamples, bootstrap_seed)
    significant = bool(computed["p_value_ttest"] <= alpha)
    return PairedReport(
        metric=metric, baseline=baseline, treatment=treatment, alternative=alternative, alpha=alpha,
        arms={arm: _arm_summary(pairs.values[arm]) for arm in (baseline, treatment)},
        seeds=pairs.seeds, baseline_values=base.tolist(), treatment_values=treat.tolist(),
        differences=(treat - base).tolist(), n_pairs=len(pairs.seeds), **computed, significant=significant,
        verdict=_verdict(significant, treatment, baseline, metric, alternative, alpha, computed["p_value_ttest"],
                         len(pairs.seeds)),
        unpaired=pairs.unpaired, failed_runs=pairs.failed_runs, notes=pairs.notes,
    )


def _arg_validation(results: Results, baseline: str, treatment: str, alternative: str, alpha: float) -> None:
    if alternative not in ("greater", "less", "two-sided"):
        raise ReportError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")
    if not 0 < alpha < 1:
        raise ReportError(f"alpha must be in (0, 1), got {alpha}")
    if baseline == treatment:
        raise ReportError(f"baseline and treatment are the same arm ('{baseline}'); choose two different arms")
    arms_present = results.arms
    for role, arm in (("baseline", baseline), ("treatment", treatment)):
        if arm not in arms_present:
            failed = sorted({r.seed for r in results.failed if r.arm == arm})
            extra = f" ({len(failed)} failed run(s) of it: seeds {failed})" if failed else ""
            raise ReportError(
                f"{role} arm '{arm}' has no finished runs in {results.path}{extra}; "
                f"arms with finished runs: {', '.join(arms_present) or 'none'}"
            )


def _metric_value(run: RunRecord, metric: str, results: Results, arms: tuple[str, str]) -> float:
    if metric not in run.metrics:
        if not any(metric in r.metrics for r in results.runs if r.arm in arms):
            available = sorted({k for r in results.runs if r.arm in arms for k in r.metrics})
            raise ReportError(
                f"unknown metric '{metric}': no run of '{arms[0]}' or '{arms[1]}' logged it; "
                f"metrics available: {', '.join(available) or 'none'}"
            )
        raise ReportError(f"line {run.line}: run of arm '{run.arm}', seed {run.seed} has no '{metric}'")
    value = run.metrics[metric]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportError(f"line {run.line}: '{metric}' must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ReportError(
            f"line {run.line}: '{metric}' is {value} for arm '{run.arm}', seed {run.seed} "
            "(diverged run?); fix or remove that line"
        )
    return float(value)


def _pair(results: Results, metric: str, baseline: str, treatment: str) -> _Pairs:
    """The values of both arms by seed, the seeds they share, and notes on what is left out."""
    values: dict[str, dict[int, float]] = {baseline: {}, treatment: {}}
    for run in results.runs:
        if run.arm in values:
            values[run.arm][run.seed] = _metric_value(run, metric, results, (baseline, treatment))
    b_seeds, t_seeds = set(values[baseline]), set(values[treatment])
    seeds = sorted(b_seeds & t_seeds)
    unpaired = {baseline: sorted(b_seeds - t_seeds), treatment: sorted(t_seeds - b_seeds)}
    # A failed attempt that a later rerun finished is superseded, not a failure of that pair.
    failed_runs = {arm: sorted({r.seed for r in results.failed if r.arm == arm} - set(values[arm]))
                   for arm in (baseline, treatment)}
    notes: list[str] = []
    for arm, missing_in in ((baseline, treatment), (treatment, baseline)):
        if unpaired[arm]:
            notes.append(f"seeds {unpaired[arm]} of '{arm}' have no finished '{missing_in}' run; left out")
    for arm, seeds_failed in failed_runs.items():
        if seeds_failed:
            notes.append(f"{len(seeds_failed)} failed run(s) of '{arm}' ignored (seeds {seeds_failed})")
    if results.bad_lines:
        notes.append(f"{len(results.bad_lines)} malformed line(s) skipped: {[n for n, _ in results.bad_lines]}")
    if len(seeds) < 2:
        raise ReportError(
            f"need at least 2 paired seeds of '{baseline}' and '{treatment}' for '{metric}', found {len(seeds)}"
            + (f" ({'; '.join(notes)})" if notes else "")
        )
    return _Pairs(values, seeds, unpaired, failed_runs, notes)


def _compute(diffs: np.ndarray, treat: np.ndarray, base: np.ndarray, metric: str, alternative: str, alpha: float,
             n_resamples: int, bootstrap_seed: int) -> dict[str, Any]:
    """The test statistics, intervals and power of the paired differences."""
    from scipy import stats

    std_diff = float(np.std(diffs, ddof=1))
    # Treat differences equal up to float round-off (e.g. 0.91 - 0.90 vs 0.81 - 0.80) as equal, too:
    # a t statistic from round-off noise would be a wrong number.
    if std_diff == 0 or np.allclose(diffs, diffs[0], rtol=1e-9, atol=1e-12):
        raise ReportError(
            f"all {len(diffs)} paired differences of '{metric}' are equal ({diffs[0]:+.6g}); their variance is "
            "zero, so the t-test and d_z are undefined (identical arms or a metric that does not vary?)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. wilcoxon's normal approximation notes for ties/zeros
        ttest = stats.ttest_rel(treat, base, alternative=alternative)
        wres = stats.wilcoxon(diffs, alternative=alternative)
    ci_low, ci_high, ci_method = bootstrap_ci(diffs, n_resamples, bootstrap_seed)
    dz = float(np.mean(diffs) / std_diff)
    return {
        "mean_diff": float(np.mean(diffs)), "std_diff": std_diff,
        "t_statistic": float(ttest.statistic), "p_value_ttest": float(ttest.pvalue),
        "wilcoxon_statistic": float(wres.statistic), "p_value_wilcoxon": float(wres.pvalue),
        "ci95_low": ci_low, "ci95_high": ci_high, "ci_method": ci_method, "cohens_dz": dz,
        "power_observed": paired_t_power(dz, len(diffs), alpha, alternative) if math.isfinite(dz) else None,
        "n_pairs_for_80_power": pairs_for_power(dz, alpha, 0.8, alternative),
    }


def _verdict(significant: bool, treatment: str, baseline: str, metric: str, alternative: str, alpha: float,
             p_t: float, n_pairs: int) -> str:
    relation = {"greater": ">", "less": "<", "two-sided": "!="}[alternative]
    test_name = "two-sided" if alternative == "two-sided" else "one-sided"
    if significant:
        return (f"SIGNIFICANT: {treatment} {relation} {baseline} on {metric} "
                f"({test_name} paired t-test, p = {p_t:.4g} <= alpha = {alpha:g}, {n_pairs} pairs)")
    return (f"NOT SIGNIFICANT: no evidence that {treatment} {relation} {baseline} on {metric} "
            f"({test_name} paired t-test, p = {p_t:.4g} > alpha = {alpha:g}, {n_pairs} pairs)")


def _arm_summary(values: dict[int, float]) -> dict[str, float | int]:
    vals = np.array(list(values.values()))
    return {"n": int(vals.size), "mean": float(vals.mean()),
            "std": float(vals.std(ddof=1)) if vals.size > 1 else float("nan")}


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"


def format_markdown(report: PairedReport) -> str:
    """Render a report as Markdown: arm summary, per-seed differences, tests, verdict."""
    r = report
    side = {"greater": f"H1: {r.treatment} > {r.baseline}", "less": f"H1: {r.treatment} < {r.baseline}",
            "two-sided": f"H1: {r.treatment} != {r.baseline}"}[r.alternative]
    lines = [f"## {r.metric}: {r.treatment} vs {r.baseline} (paired by seed)", ""]
    lines += ["| arm | n | mean | std |", "|---|---:|---:|---:|"]
    for arm, s in r.arms.items():
        lines.append(f"| {arm} | {s['n']} | {_fmt(s['mean'])} | {_fmt(s['std'])} |")
    lines += ["", f"| seed | {r.baseline} | {r.treatment} | difference |", "|---:|---:|---:|---:|"]
    for seed, b, t, d in zip(r.seeds, r.baseline_values, r.treatment_values, r.differences):
        lines.append(f"| {seed} | {_fmt(b)} | {_fmt(t)} | {d:+.4f} |")
    power = "n/a (observed effect is not in the tested direction)" if r.n_pairs_for_80_power is None \
        else str(r.n_pairs_for_80_power)
    lines += [
        "",
        "| statistic | value |",
        "|---|---|",
        f"| pairs | {r.n_pairs} |",
        f"| mean difference ({r.treatment} - {r.baseline}) | {r.mean_diff:+.4f} (std {_fmt(r.std_diff)}) |",
        f"| paired t-test ({side}) | t = {r.t_statistic:.3f}, p = {r.p_value_ttest:.4g} |",
        f"| Wilcoxon signed-rank ({side}) | W = {_fmt(r.wilcoxon_statistic, 1)}, p = {_fmt(r.p_value_wilcoxon)} |",
        f"| bootstrap 95% CI of mean difference ({r.ci_method}) | [{_fmt(r.ci95_low)}, {_fmt(r.ci95_high)}] |",
        f"| Cohen's d_z | {r.cohens_dz:.3f} |",
        f"| power now / pairs for 80% power | {_fmt(r.power_observed, 2)} / {power} |",
        "",
    ]
    for note in r.notes:
        lines.append(f"> note: {note}")
    if r.notes:
        lines.append("")
    lines.append(f"**Verdict (alpha = {r.alpha:g}):** {r.verdict}")
    return "\n".join(lines)


def plot_differences(report: PairedReport, path: str | Path) -> Path:
    """Save a PNG: per-seed values of both arms (left) and the paired differences (right).

    The right panel marks the mean difference and its bootstrap 95% CI.

    Args:
        report: from :func:`paired_report`.
        path: where to write the PNG.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed; safe in CI
    import matplotlib.pyplot as plt

    path = Path(path)
    r = report
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for b, t in zip(r.baseline_values, r.treatment_values):
        ax1.plot([0, 1], [b, t], color="tab:green" if t > b else "tab:red", alpha=0.6, marker="o")
    ax1.set_xticks([0, 1], [r.baseline, r.treatment])
    ax1.set_ylabel(r.metric)
    ax1.set_title("per-seed values")
    x = np.arange(r.n_pairs)
    ax2.bar(x, r.differences, color=["tab:green" if d > 0 else "tab:red" for d in r.differences])
    ax2.axhline(0, color="black", lw=0.8)
    ax2.axhline(r.mean_diff, color="tab:blue", ls="--", label=f"mean {r.mean_diff:+.4f}")
    if math.isfinite(r.ci95_low) and math.isfinite(r.ci95_high):
        ax2.axhspan(r.ci95_low, r.ci95_high, color="tab:blue", alpha=0.15, label="bootstrap 95% CI")
    ax2.set_xticks(x, [str(s) for s in r.seeds])
    ax2.set_xlabel("seed")
    ax2.set_ylabel(f"{r.treatment} - {r.baseline}")
    ax2.set_title(f"paired differences, p = {r.p_value_ttest:.3g} (t-test)")
    ax2.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
