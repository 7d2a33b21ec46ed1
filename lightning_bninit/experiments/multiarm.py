"""The multi-arm report of ``bninit report`` without ``--treatment``: every arm against the baseline, Holm-corrected.

Each arm is paired with the baseline by seed and tested exactly as in the two-arm report (failed, unpaired and
diverged runs handled per arm); the arms' t-test p-values are then adjusted with Holm's method, so that the chance
of any false "beats the baseline" stays at most ``alpha`` across the arms.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from lightning_bninit.experiments.report import (RELATION, NotComparable, PairedReport, arm_summary, arm_table,
                                                 arm_values, check_options, clean_json, compare_two_arms, file_notes,
                                                 fmt, fmt_interval, format_markdown, interval_label, note_lines,
                                                 paired_report)
from lightning_bninit.experiments.results import ReportError, Results
from lightning_bninit.experiments.stats import holm_adjust

__all__ = ["ArmComparison", "MultiArmReport", "default_treatment", "format_multi_markdown", "format_report",
           "multi_arm_report", "report_of"]


#: The fields of an arm's two-arm report that its comparison shows (and writes to ``--json``).
COMPARISON_FIELDS = (
    "treatment", "n_pairs", "mean_diff", "std_diff", "ci_low", "ci_high", "t_statistic", "p_value_ttest",
    "p_value_wilcoxon", "bootstrap_ci95_low", "bootstrap_ci95_high", "bootstrap_method", "cohens_dz", "seeds",
    "differences", "unpaired", "failed_runs", "diverged_runs", "n_pairs_dropped_diverged", "notes",
)


@dataclass
class ArmComparison:
    """One arm against the baseline: its two-arm report (:class:`PairedReport`) and the Holm-adjusted p-value.

    ``significant`` is the verdict after Holm's correction (``p_value_holm <= alpha``); ``ci_low``/``ci_high`` is
    the arm's own (unadjusted) paired t interval, which matches ``p_value_ttest``. The fields of
    :data:`COMPARISON_FIELDS` read through to ``report``.
    """

    report: PairedReport
    p_value_holm: float
    significant: bool

    def __getattr__(self, name: str) -> Any:
        if name in COMPARISON_FIELDS and "report" in self.__dict__:
            return getattr(self.report, name)
        raise AttributeError(f"'ArmComparison' object has no attribute '{name}'")

    def to_dict(self) -> dict[str, Any]:
        """The shown fields of the two-arm report, the Holm-adjusted p-value and the verdict."""
        out = {name: getattr(self.report, name) for name in COMPARISON_FIELDS}
        return clean_json({**out, "p_value_holm": self.p_value_holm, "significant": self.significant})


@dataclass
class MultiArmReport:
    """Result of :func:`multi_arm_report`; ``to_dict()`` gives the ``--json`` object.

    ``comparisons`` is sorted best first (largest mean difference for ``"greater"``, smallest for ``"less"``,
    smallest p-value for ``"two-sided"``); ``not_compared`` names each arm that could not be tested and why.
    """

    metric: str
    baseline: str
    alternative: str
    alpha: float
    ci_level: float
    family_size: int
    arms: dict[str, dict[str, float | int]]
    comparisons: list[ArmComparison]
    not_compared: dict[str, str]
    significant_arms: list[str]
    verdict: str
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary (non-finite floats become ``None``) with ``n_diverged_runs`` per arm."""
        out = clean_json({f.name: getattr(self, f.name) for f in fields(self) if f.name != "comparisons"})
        out["comparisons"] = [c.to_dict() for c in self.comparisons]
        out["n_diverged_runs"] = {arm: s["diverged"] for arm, s in self.arms.items()}
        return out


def default_treatment(results: Results, baseline: str) -> str | None:
    """The treatment of ``bninit report`` when ``--treatment`` is not given.

    ``"bninit"`` (the two-arm report, as before multi-arm reports existed) when the file holds no arm other than
    the baseline and ``bninit``; ``None`` (every other arm against the baseline) otherwise. Arms are those of
    finished and failed lines alike.
    """
    others = {arm for arm in results.all_arms if arm != baseline}
    return "bninit" if others <= {"bninit"} else None


def report_of(results: Results, metric: str, baseline: str = "standard", treatment: str | None = None, *,
              alternative: str = "greater", alpha: float = 0.05,
              n_resamples: int = 10_000) -> PairedReport | MultiArmReport:
    """The report ``bninit report`` (and the end of ``bninit compare``) makes of ``results``.

    With ``treatment``, that arm against ``baseline`` (:func:`paired_report`); without it, the same two-arm report
    when the file holds only the baseline and ``bninit`` (:func:`default_treatment`), else every arm against the
    baseline with Holm's correction (:func:`multi_arm_report`).
    """
    treatment = treatment or default_treatment(results, baseline)
    if treatment is None:
        return multi_arm_report(results, metric, baseline, alternative=alternative, alpha=alpha,
                                n_resamples=n_resamples)
    return paired_report(results, metric, baseline, treatment, alternative=alternative, alpha=alpha,
                         n_resamples=n_resamples)


def format_report(report: PairedReport | MultiArmReport) -> str:
    """Markdown of either kind of report."""
    return format_multi_markdown(report) if isinstance(report, MultiArmReport) else format_markdown(report)


def multi_arm_report(results: Results, metric: str, baseline: str = "standard", *, alternative: str = "greater",
                     alpha: float = 0.05, n_resamples: int = 10_000, bootstrap_seed: int = 0) -> MultiArmReport:
    """Compare every arm of ``results`` with ``baseline``, with Holm's correction across the arms.

    Args:
        results: loaded with :func:`~lightning_bninit.experiments.results.load_results`.
        metric: the metric to compare.
        baseline: the reference arm.
        alternative: ``"greater"`` (an arm beats the baseline when its metric is higher), ``"less"`` or
            ``"two-sided"``; the same for every arm.
        alpha: family-wise error rate across the arms.
        n_resamples: bootstrap resamples (the robustness check of each arm).
        bootstrap_seed: seed of the bootstrap resampling.

    Returns:
        The comparisons, best first, and the verdict. Arms with fewer than two usable pairs or without variance
        in their differences are listed in ``not_compared`` and are not part of the Holm family.

    Raises:
        ReportError: bad options, no finished baseline run, no other arm, a bad metric value, or no arm that
            can be compared.
    """
    check_options(results, baseline, alternative, alpha)
    others = [arm for arm in results.all_arms if arm != baseline]
    if not others:
        raise ReportError(f"{results.path} has no arm other than the baseline '{baseline}'")
    values, diverged = arm_values(results, metric, (baseline, *others))
    reports, not_compared = _each_arm(results, metric, baseline, others, alternative, alpha, n_resamples,
                                      bootstrap_seed)
    holm = holm_adjust([r.p_value_ttest for r in reports])
    comparisons = sorted((_comparison(r, p, alpha) for r, p in zip(reports, holm)), key=_ranking(alternative))
    report = MultiArmReport(
        metric=metric, baseline=baseline, alternative=alternative, alpha=alpha, ci_level=1 - alpha,
        family_size=len(comparisons),
        arms={arm: arm_summary(values[arm], len(diverged[arm])) for arm in (baseline, *others)},
        comparisons=comparisons, not_compared=not_compared,
        significant_arms=[c.treatment for c in comparisons if c.significant], verdict="",
        notes=_notes(comparisons, not_compared) + file_notes(results),
    )
    report.verdict = _verdict(report)
    return report


def _each_arm(results: Results, metric: str, baseline: str, others: list[str], alternative: str, alpha: float,
              n_resamples: int, bootstrap_seed: int) -> tuple[list[PairedReport], dict[str, str]]:
    reports: list[PairedReport] = []
    not_compared: dict[str, str] = {}
    for arm in others:
        try:
            reports.append(compare_two_arms(results, metric, baseline, arm, alternative, alpha, n_resamples,
                                            bootstrap_seed))
        except NotComparable as err:
            not_compared[arm] = str(err)
    if not reports:
        reasons = "\n  ".join(f"{arm}: {why}" for arm, why in not_compared.items())
        raise ReportError(f"no arm can be compared with '{baseline}' on '{metric}':\n  {reasons}")
    return reports, not_compared


def _comparison(r: PairedReport, p_holm: float, alpha: float) -> ArmComparison:
    return ArmComparison(report=r, p_value_holm=p_holm, significant=bool(p_holm <= alpha))


def _ranking(alternative: str) -> Any:
    if alternative == "greater":
        return lambda c: -c.mean_diff
    if alternative == "less":
        return lambda c: c.mean_diff
    return lambda c: (c.p_value_ttest, -abs(c.mean_diff))


def _notes(comparisons: list[ArmComparison], not_compared: dict[str, str]) -> list[str]:
    """Every distinct note of the comparisons (the baseline's own appear once), then the arms not compared."""
    notes = list(dict.fromkeys(note for c in comparisons for note in c.notes))
    return notes + [f"'{arm}' not compared: {why}" for arm, why in not_compared.items()]


def _verdict(r: MultiArmReport) -> str:
    relation = RELATION[r.alternative]
    tests = f"{'two' if r.alternative == 'two-sided' else 'one'}-sided paired t-tests"
    if r.significant_arms:
        head = (f"SIGNIFICANT after Holm correction: {', '.join(r.significant_arms)} {relation} {r.baseline} "
                f"on {r.metric}")
        detail = f"{tests}, Holm-adjusted p <= alpha = {r.alpha:g} across {r.family_size} arm(s)"
    else:
        best = min(r.comparisons, key=lambda c: c.p_value_holm)
        head = f"NOT SIGNIFICANT: no arm {relation} {r.baseline} on {r.metric} after Holm correction"
        detail = (f"{tests} across {r.family_size} arm(s); smallest Holm-adjusted p = {best.p_value_holm:.4g} "
                  f"({best.treatment}) > alpha = {r.alpha:g}")
    dropped = sum(c.n_pairs_dropped_diverged for c in r.comparisons)
    if dropped:
        counts = ", ".join(f"{arm} {s['diverged']}" for arm, s in r.arms.items() if s["diverged"])
        detail += f"; {dropped} pair(s) dropped for diverged runs ({counts})"
    if r.not_compared:
        detail += f"; not compared: {', '.join(r.not_compared)}"
    return f"{head} ({detail})"


def format_multi_markdown(report: MultiArmReport) -> str:
    """Render a multi-arm report as Markdown: arm summary, one row per comparison (best first), notes, verdict."""
    r = report
    relation = RELATION[r.alternative]
    lines = [f"## {r.metric}: every arm vs {r.baseline} (paired by seed, Holm-corrected)", ""]
    lines += arm_table(r.arms)
    lines += [
        "",
        f"| arm | pairs | mean difference (arm - {r.baseline}) | {interval_label(r.alternative, r.ci_level)} "
        f"(unadjusted) | t-test p (H1: arm {relation} {r.baseline}) | Holm-adjusted p | Wilcoxon p "
        "| robustness check: bootstrap 95% CI | d_z | significant after Holm |",
        "|---|---:|---:|---|---:|---:|---:|---|---:|---|",
    ]
    for c in r.comparisons:
        pairs = f"{c.n_pairs} (+{c.n_pairs_dropped_diverged} dropped)" if c.n_pairs_dropped_diverged else c.n_pairs
        lines.append(
            f"| {c.treatment} | {pairs} | {c.mean_diff:+.4f} | {fmt_interval(c.ci_low, c.ci_high)} "
            f"| {c.p_value_ttest:.4g} | {c.p_value_holm:.4g} | {fmt(c.p_value_wilcoxon)} "
            f"| {fmt_interval(c.bootstrap_ci95_low, c.bootstrap_ci95_high)} | {c.cohens_dz:.3f} "
            f"| {'yes' if c.significant else 'no'} |"
        )
    lines.append("")
    lines += note_lines(r.notes)
    lines.append(f"**Verdict (family-wise alpha = {r.alpha:g}, Holm across {r.family_size} arm(s)):** {r.verdict}")
    return "\n".join(lines)
