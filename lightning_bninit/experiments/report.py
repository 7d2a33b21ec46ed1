"""The paired significance report of ``bninit report``: the paper's one-sided paired t-test and robustness checks.

A thin orchestration of small steps: check the arguments, pair the two arms' values by seed, compute the statistics
(:mod:`~lightning_bninit.experiments.stats`), and word the verdict. Bad input raises :class:`ReportError` with a
message that names the problem; no number is computed from data the report could not vouch for. A run whose metric
is NaN or infinite (diverged) is counted, and its pair is left out of the comparison with a note.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lightning_bninit.experiments.results import ReportError, Results, RunRecord
from lightning_bninit.experiments.stats import bootstrap_ci, paired_t_power, pairs_for_power, t_interval

__all__ = ["NotComparable", "PairedReport", "format_markdown", "paired_report", "plot_differences"]

Alternative = Literal["greater", "less", "two-sided"]
RELATION = {"greater": ">", "less": "<", "two-sided": "!="}


class NotComparable(ReportError):
    """Two arms that cannot be compared: fewer than two usable pairs, or paired differences without variance."""


@dataclass
class PairedReport:
    """Result of :func:`paired_report`; ``to_dict()`` gives the ``--json`` object.

    ``ci_low``/``ci_high`` is the paired t confidence interval of the mean difference at level ``1 - alpha`` with
    the test's sidedness (``+inf``/``-inf`` at the open end of a one-sided interval, ``null`` in JSON): it excludes
    0 exactly when the t-test is significant. The bootstrap interval is a robustness check only.
    """

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
    ci_level: float
    ci_low: float
    ci_high: float
    wilcoxon_statistic: float
    p_value_wilcoxon: float
    bootstrap_ci95_low: float
    bootstrap_ci95_high: float
    bootstrap_method: str
    cohens_dz: float
    power_observed: float | None
    n_pairs_for_80_power: int | None
    significant: bool
    verdict: str
    unpaired: dict[str, list[int]]
    failed_runs: dict[str, list[int]]
    diverged_runs: dict[str, list[int]] = field(default_factory=dict)
    n_pairs_dropped_diverged: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary of every field (non-finite floats become ``None``), plus ``n_diverged_runs``
        per arm."""
        out = clean_json(asdict(self))
        out.update(n_diverged_runs={arm: len(seeds) for arm, seeds in self.diverged_runs.items()})
        return out


def clean_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (JSON has no NaN or infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    return value


@dataclass
class _Pairs:
    """The two arms' finite values of one metric by seed, the usable seeds, and what was left out."""

    values: dict[str, dict[int, float]]
    seeds: list[int]
    unpaired: dict[str, list[int]]
    failed_runs: dict[str, list[int]]
    diverged_runs: dict[str, list[int]]
    dropped: list[int]
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
        results: loaded with :func:`~lightning_bninit.experiments.results.load_results`.
        metric: the metric to compare, e.g. ``"test_acc"``.
        baseline: the reference arm.
        treatment: the arm expected to be better.
        alternative: ``"greater"`` (treatment > baseline, the paper's test; use it for metrics
            where higher is better), ``"less"`` (e.g. for a loss) or ``"two-sided"``.
        alpha: significance level of the verdict, and 1 - level of the t confidence interval.
        n_resamples: bootstrap resamples.
        bootstrap_seed: seed of the bootstrap resampling, so a report is reproducible.

    Returns:
        The statistics and the verdict. Pairs with a diverged run (metric NaN or infinite) are left out, counted
        in ``diverged_runs`` and ``n_pairs_dropped_diverged``, and named in a note and the verdict.

    Raises:
        ReportError: unknown arm or metric, non-numeric metric values, fewer than two usable pairs, or paired
            differences without variance (the last two as :class:`NotComparable`).

    Example::

        report = paired_report(load_results("results.jsonl"), "test_acc", "standard", "bninit")
        print(format_markdown(report))
    """
    _arg_validation(results, baseline, treatment, alternative, alpha)
    report = compare_two_arms(results, metric, baseline, treatment, alternative, alpha, n_resamples, bootstrap_seed)
    report.notes += file_notes(results)
    return report


def compare_two_arms(results: Results, metric: str, baseline: str, treatment: str, alternative: str, alpha: float,
                     n_resamples: int, bootstrap_seed: int) -> PairedReport:
    """:func:`paired_report` without the argument checks and the notes about the whole file."""
    pairs = _pair(results, metric, baseline, treatment)
    base = np.array([pairs.values[baseline][s] for s in pairs.seeds])
    treat = np.array([pairs.values[treatment][s] for s in pairs.seeds])
    computed = _compute(treat - base, treat, base, metric, alternative, alpha, n_resamples, bootstrap_seed)
    significant = bool(computed["p_value_ttest"] <= alpha)
    diverged = {arm: len(seeds) for arm, seeds in pairs.diverged_runs.items()}
    return PairedReport(
        metric=metric, baseline=baseline, treatment=treatment, alternative=alternative, alpha=alpha,
        arms={arm: arm_summary(pairs.values[arm], diverged[arm]) for arm in (baseline, treatment)},
        seeds=pairs.seeds, baseline_values=base.tolist(), treatment_values=treat.tolist(),
        differences=(treat - base).tolist(), n_pairs=len(pairs.seeds), **computed, significant=significant,
        verdict=_verdict(significant, treatment, baseline, metric, alternative, alpha, computed["p_value_ttest"],
                         len(pairs.seeds)) + dropped_phrase(len(pairs.dropped), diverged),
        unpaired=pairs.unpaired, failed_runs=pairs.failed_runs, diverged_runs=pairs.diverged_runs,
        n_pairs_dropped_diverged=len(pairs.dropped), notes=pairs.notes,
    )


def file_notes(results: Results) -> list[str]:
    """Notes about the file as a whole (lines left out with ``skip_bad_lines``)."""
    if not results.bad_lines:
        return []
    return [f"{len(results.bad_lines)} malformed line(s) skipped: {[n for n, _ in results.bad_lines]}"]


def _arg_validation(results: Results, baseline: str, treatment: str, alternative: str, alpha: float) -> None:
    check_options(results, baseline, alternative, alpha)
    if baseline == treatment:
        raise ReportError(f"baseline and treatment are the same arm ('{baseline}'); choose two different arms")
    check_arm(results, "treatment", treatment)


def check_options(results: Results, baseline: str, alternative: str, alpha: float) -> None:
    """The checks every report makes: the alternative, alpha, and a baseline arm with finished runs."""
    if alternative not in RELATION:
        raise ReportError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")
    if not 0 < alpha < 1:
        raise ReportError(f"alpha must be in (0, 1), got {alpha}")
    check_arm(results, "baseline", baseline)


def check_arm(results: Results, role: str, arm: str) -> None:
    """Raise :class:`ReportError` if ``arm`` has no finished run, naming its failures and the arms there are."""
    arms_present = results.arms
    if arm not in arms_present:
        failed = sorted({r.seed for r in results.failed if r.arm == arm})
        extra = f" ({len(failed)} failed run(s) of it: seeds {failed})" if failed else ""
        raise ReportError(
            f"{role} arm '{arm}' has no finished runs in {results.path}{extra}; "
            f"arms with finished runs: {', '.join(arms_present) or 'none'}"
        )


def _metric_value(run: RunRecord, metric: str, results: Results, arms: tuple[str, ...]) -> float:
    """The run's value of ``metric`` as a float (NaN or infinite for a diverged run)."""
    if metric not in run.metrics:
        if not any(metric in r.metrics for r in results.runs if r.arm in arms):
            available = sorted({k for r in results.runs if r.arm in arms for k in r.metrics})
            names = " or ".join(f"'{a}'" for a in arms)
            raise ReportError(
                f"unknown metric '{metric}': no run of {names} logged it; "
                f"metrics available: {', '.join(available) or 'none'}"
            )
        raise ReportError(f"line {run.line}: run of arm '{run.arm}', seed {run.seed} has no '{metric}'")
    value = run.metrics[metric]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportError(f"line {run.line}: '{metric}' must be a number, got {value!r}")
    return float(value)


def arm_values(results: Results, metric: str, arms: tuple[str, ...]
               ) -> tuple[dict[str, dict[int, float]], dict[str, list[int]]]:
    """Each arm's finite values of ``metric`` by seed, and the seeds of its diverged runs (NaN or infinite)."""
    values: dict[str, dict[int, float]] = {arm: {} for arm in arms}
    diverged: dict[str, list[int]] = {arm: [] for arm in arms}
    for run in results.runs:
        if run.arm in values:
            value = _metric_value(run, metric, results, arms)
            if math.isfinite(value):
                values[run.arm][run.seed] = value
            else:
                diverged[run.arm].append(run.seed)
    return values, {arm: sorted(seeds) for arm, seeds in diverged.items()}


def _pair(results: Results, metric: str, baseline: str, treatment: str) -> _Pairs:
    """The values of both arms by seed, the seeds they share with finite values, and notes on what is left out."""
    values, diverged = arm_values(results, metric, (baseline, treatment))
    finished = {arm: set(values[arm]) | set(diverged[arm]) for arm in (baseline, treatment)}
    shared = finished[baseline] & finished[treatment]
    dropped = sorted(s for s in shared if s in diverged[baseline] or s in diverged[treatment])
    seeds = sorted(shared - set(dropped))
    unpaired = {baseline: sorted(finished[baseline] - finished[treatment]),
                treatment: sorted(finished[treatment] - finished[baseline])}
    # A failed attempt that a later rerun finished is superseded, not a failure of that pair.
    failed_runs = {arm: sorted({r.seed for r in results.failed if r.arm == arm} - finished[arm])
                   for arm in (baseline, treatment)}
    notes = _pair_notes(baseline, treatment, metric, unpaired, failed_runs, diverged, dropped)
    if len(seeds) < 2:
        file = file_notes(results)
        raise NotComparable(
            f"need at least 2 paired seeds of '{baseline}' and '{treatment}' for '{metric}', found {len(seeds)}"
            + (f" ({'; '.join(notes + file)})" if notes or file else "")
        )
    return _Pairs(values, seeds, unpaired, failed_runs, diverged, dropped, notes)


def _pair_notes(baseline: str, treatment: str, metric: str, unpaired: dict[str, list[int]],
                failed_runs: dict[str, list[int]], diverged: dict[str, list[int]], dropped: list[int]) -> list[str]:
    notes: list[str] = []
    for arm, missing_in in ((baseline, treatment), (treatment, baseline)):
        if unpaired[arm]:
            notes.append(f"seeds {unpaired[arm]} of '{arm}' have no finished '{missing_in}' run; left out")
    for arm, seeds_failed in failed_runs.items():
        if seeds_failed:
            notes.append(f"{len(seeds_failed)} failed run(s) of '{arm}' ignored (seeds {seeds_failed})")
    for arm, seeds_diverged in diverged.items():
        if seeds_diverged:
            notes.append(f"{len(seeds_diverged)} diverged run(s) of '{arm}': '{metric}' is NaN or infinite "
                         f"(seeds {seeds_diverged})")
    if dropped:
        notes.append(f"{len(dropped)} pair(s) of '{baseline}' and '{treatment}' with a diverged run dropped "
                     f"(seeds {dropped}): the comparison holds for runs that did not diverge; how often an arm "
                     "diverges is a result in itself")
    return notes


def dropped_phrase(n_dropped: int, diverged: dict[str, int]) -> str:
    """The verdict's mention of pairs dropped for diverged runs ('' when none were)."""
    if not n_dropped:
        return ""
    counts = ", ".join(f"{arm} {k}" for arm, k in diverged.items() if k)
    return f"; {n_dropped} pair(s) dropped for diverged runs ({counts})"


def _compute(diffs: np.ndarray, treat: np.ndarray, base: np.ndarray, metric: str, alternative: str, alpha: float,
             n_resamples: int, bootstrap_seed: int) -> dict[str, Any]:
    """The test statistics, intervals and power of the paired differences."""
    from scipy import stats

    std_diff = float(np.std(diffs, ddof=1))
    # Treat differences equal up to float round-off (e.g. 0.91 - 0.90 vs 0.81 - 0.80) as equal, too:
    # a t statistic from round-off noise would be a wrong number.
    if std_diff == 0 or np.allclose(diffs, diffs[0], rtol=1e-9, atol=1e-12):
        raise NotComparable(
            f"all {len(diffs)} paired differences of '{metric}' are equal ({diffs[0]:+.6g}); their variance is "
            "zero, so the t-test and d_z are undefined (identical arms or a metric that does not vary?)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. wilcoxon's normal approximation notes for ties/zeros
        ttest = stats.ttest_rel(treat, base, alternative=alternative)
        wres = stats.wilcoxon(diffs, alternative=alternative)
    mean_diff = float(np.mean(diffs))
    ci_low, ci_high = t_interval(mean_diff, std_diff, len(diffs), alpha, alternative)
    boot_low, boot_high, boot_method = bootstrap_ci(diffs, n_resamples, bootstrap_seed)
    dz = mean_diff / std_diff
    return {
        "mean_diff": mean_diff, "std_diff": std_diff,
        "t_statistic": float(ttest.statistic), "p_value_ttest": float(ttest.pvalue),
        "ci_level": 1 - alpha, "ci_low": ci_low, "ci_high": ci_high,
        "wilcoxon_statistic": float(wres.statistic), "p_value_wilcoxon": float(wres.pvalue),
        "bootstrap_ci95_low": boot_low, "bootstrap_ci95_high": boot_high, "bootstrap_method": boot_method,
        "cohens_dz": dz,
        "power_observed": paired_t_power(dz, len(diffs), alpha, alternative) if math.isfinite(dz) else None,
        "n_pairs_for_80_power": pairs_for_power(dz, alpha, 0.8, alternative),
    }


def _verdict(significant: bool, treatment: str, baseline: str, metric: str, alternative: str, alpha: float,
             p_t: float, n_pairs: int) -> str:
    relation = RELATION[alternative]
    test_name = "two-sided" if alternative == "two-sided" else "one-sided"
    if significant:
        return (f"SIGNIFICANT: {treatment} {relation} {baseline} on {metric} "
                f"({test_name} paired t-test, p = {p_t:.4g} <= alpha = {alpha:g}, {n_pairs} pairs)")
    return (f"NOT SIGNIFICANT: no evidence that {treatment} {relation} {baseline} on {metric} "
            f"({test_name} paired t-test, p = {p_t:.4g} > alpha = {alpha:g}, {n_pairs} pairs)")


def arm_summary(values: dict[int, float], diverged: int = 0) -> dict[str, float | int]:
    """n, mean and std of an arm's finite values, and how many of its runs diverged."""
    vals = np.array(list(values.values()), dtype=float)
    return {"n": int(vals.size), "mean": float(vals.mean()) if vals.size else float("nan"),
            "std": float(vals.std(ddof=1)) if vals.size > 1 else float("nan"), "diverged": diverged}


def fmt(value: float | None, digits: int = 4) -> str:
    """A number for the Markdown tables; ``n/a`` for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"


def fmt_interval(low: float, high: float) -> str:
    """``[low, high]``, with an open bracket at an infinite end: ``[low, +inf)``, ``(-inf, high]``."""
    left = "(" if math.isinf(low) else "["
    right = ")" if math.isinf(high) else "]"
    return f"{left}{fmt(low)}, {fmt(high)}{right}"


def interval_label(alternative: str, level: float) -> str:
    """E.g. ``95% one-sided paired t CI``."""
    sides = "two-sided" if alternative == "two-sided" else "one-sided"
    return f"{100 * level:g}% {sides} paired t CI"


def format_markdown(report: PairedReport) -> str:
    """Render a report as Markdown: arm summary, per-seed differences, tests, verdict."""
    r = report
    side = f"H1: {r.treatment} {RELATION[r.alternative]} {r.baseline}"
    lines = [f"## {r.metric}: {r.treatment} vs {r.baseline} (paired by seed)", ""]
    lines += arm_table(r.arms)
    lines += ["", f"| seed | {r.baseline} | {r.treatment} | difference |", "|---:|---:|---:|---:|"]
    for seed, b, t, d in zip(r.seeds, r.baseline_values, r.treatment_values, r.differences):
        lines.append(f"| {seed} | {fmt(b)} | {fmt(t)} | {d:+.4f} |")
    power = "n/a (observed effect is not in the tested direction)" if r.n_pairs_for_80_power is None \
        else str(r.n_pairs_for_80_power)
    dropped = f" ({r.n_pairs_dropped_diverged} more dropped: diverged runs)" if r.n_pairs_dropped_diverged else ""
    lines += [
        "",
        "| statistic | value |",
        "|---|---|",
        f"| pairs | {r.n_pairs}{dropped} |",
        f"| mean difference ({r.treatment} - {r.baseline}) | {r.mean_diff:+.4f} (std {fmt(r.std_diff)}) |",
        f"| paired t-test ({side}) | t = {r.t_statistic:.3f}, p = {r.p_value_ttest:.4g} |",
        f"| {interval_label(r.alternative, r.ci_level)} of mean difference (the test's interval) "
        f"| {fmt_interval(r.ci_low, r.ci_high)} |",
        f"| Wilcoxon signed-rank ({side}) | W = {fmt(r.wilcoxon_statistic, 1)}, p = {fmt(r.p_value_wilcoxon)} |",
        f"| robustness check: bootstrap 95% CI of mean difference ({r.bootstrap_method}, two-sided) "
        f"| {fmt_interval(r.bootstrap_ci95_low, r.bootstrap_ci95_high)} |",
        f"| Cohen's d_z | {r.cohens_dz:.3f} |",
        f"| power now / pairs for 80% power | {fmt(r.power_observed, 2)} / {power} |",
        "",
    ]
    lines += note_lines(r.notes)
    lines.append(f"**Verdict (alpha = {r.alpha:g}):** {r.verdict}")
    return "\n".join(lines)


def arm_table(arms: dict[str, dict[str, float | int]]) -> list[str]:
    """The per-arm summary table (finite runs; diverged runs counted apart)."""
    lines = ["| arm | n | mean | std | diverged |", "|---|---:|---:|---:|---:|"]
    for arm, s in arms.items():
        lines.append(f"| {arm} | {s['n']} | {fmt(s['mean'])} | {fmt(s['std'])} | {s['diverged']} |")
    return lines


def note_lines(notes: list[str]) -> list[str]:
    """Markdown quote lines for the notes, and a blank line after them."""
    return [f"> note: {note}" for note in notes] + ([""] if notes else [])


def plot_differences(report: PairedReport, path: str | Path) -> Path:
    """Save a PNG: per-seed values of both arms (left) and the paired differences (right).

    The right panel marks the mean difference, the test's t confidence interval (shaded) and the bootstrap 95% CI
    (dotted, the robustness check).

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
    _difference_panel(ax2, r)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _difference_panel(ax: Any, r: PairedReport) -> None:
    x = np.arange(r.n_pairs)
    ax.bar(x, r.differences, color=["tab:green" if d > 0 else "tab:red" for d in r.differences])
    ax.axhline(0, color="black", lw=0.8)
    ax.axhline(r.mean_diff, color="tab:blue", ls="--", label=f"mean {r.mean_diff:+.4f}")
    bottom, top = ax.get_ylim()
    low = r.ci_low if math.isfinite(r.ci_low) else min(bottom, r.ci_high)
    high = r.ci_high if math.isfinite(r.ci_high) else max(top, r.ci_low)
    ax.axhspan(low, high, color="tab:blue", alpha=0.15, label=interval_label(r.alternative, r.ci_level))
    for bound in (r.bootstrap_ci95_low, r.bootstrap_ci95_high):
        if math.isfinite(bound):
            ax.axhline(bound, color="tab:gray", ls=":", lw=1)
    ax.plot([], [], color="tab:gray", ls=":", label="bootstrap 95% CI (robustness)")
    ax.set_ylim(min(bottom, low), max(top, high))
    ax.set_xticks(x, [str(s) for s in r.seeds])
    ax.set_xlabel("seed")
    ax.set_ylabel(f"{r.treatment} - {r.baseline}")
    ax.set_title(f"paired differences, p = {r.p_value_ttest:.3g} (t-test)")
    ax.legend(loc="best", fontsize=8)
