"""Significance report for paired-seed experiments (``bninit report``).

Reads the JSON lines written by ``bninit compare`` (one finished run per line:
``{"seed": 3, "arm": "bninit", "test_acc": 0.97, ..., "duration_s": 12.1, "config": {...}}``;
failed runs carry an ``"error"`` key instead of metrics), pairs the baseline and treatment arms by
seed and applies the paper's test: a one-sided paired t-test
(``scipy.stats.ttest_rel(treatment, baseline, alternative="greater")``, significant at
``p <= 0.05``). Alongside it, as robustness checks, it gives the Wilcoxon signed-rank test, a
bootstrap 95% confidence interval of the mean difference, Cohen's d_z (mean difference divided by
the standard deviation of the differences) and how many pairs the one-sided test would need for
80% power if the observed effect were the true one (non-central t distribution).

Every statistic comes from SciPy; this module only pairs, validates and formats. Bad input
(malformed or truncated lines, unknown arm or metric, fewer than two pairs, differences without
variance, ...) raises :class:`ReportError` whose message names the problem; it never yields a
number computed from data it could not vouch for.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "ReportError",
    "RunRecord",
    "Results",
    "PairedReport",
    "load_results",
    "paired_report",
    "pairs_for_power",
    "format_markdown",
    "plot_differences",
]

#: Keys of a results line that are not metrics.
RESERVED_KEYS = frozenset({"seed", "arm", "config", "duration_s", "error", "derived_seed", "status"})

Alternative = Literal["greater", "less", "two-sided"]


class ReportError(ValueError):
    """Bad input for the report; the message is meant for the user as is."""


@dataclass
class RunRecord:
    """One line of a results file."""

    line: int
    seed: int
    arm: str
    metrics: dict[str, Any]
    error: str | None = None


@dataclass
class Results:
    """A parsed results file.

    Attributes:
        path: the file read.
        runs: the finished runs (no ``error`` key).
        failed: the runs recorded as failed.
        bad_lines: ``(line number, message)`` of the lines that could not be used (only non-empty
            when loading with ``skip_bad_lines=True``).
    """

    path: str
    runs: list[RunRecord] = field(default_factory=list)
    failed: list[RunRecord] = field(default_factory=list)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)

    @property
    def arms(self) -> list[str]:
        """Arm names of the finished runs, in order of first appearance."""
        return list(dict.fromkeys(r.arm for r in self.runs))


def _parse_line(lineno: int, raw: bytes, last: bool) -> RunRecord:
    truncated = last and not raw.endswith(b"\n")
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        if truncated:
            raise ReportError(f"line {lineno}: truncated (the file ends in the middle of this line)") from None
        raise ReportError(f"line {lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(obj, dict):
        raise ReportError(f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
    seed, arm = obj.get("seed"), obj.get("arm")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ReportError(f"line {lineno}: 'seed' must be an integer, got {seed!r}")
    if not isinstance(arm, str) or not arm:
        raise ReportError(f"line {lineno}: 'arm' must be a non-empty string, got {arm!r}")
    error = obj.get("error")
    metrics = {k: v for k, v in obj.items() if k not in RESERVED_KEYS}
    return RunRecord(line=lineno, seed=seed, arm=arm, metrics=metrics, error=None if error is None else str(error))


def load_results(path: str | Path, *, skip_bad_lines: bool = False) -> Results:
    """Read a results JSONL file.

    Args:
        path: the file written by ``bninit compare``.
        skip_bad_lines: leave malformed lines out (they are listed in ``Results.bad_lines``)
            instead of failing on them.

    Returns:
        The finished and the failed runs.

    Raises:
        ReportError: the file is missing or unreadable, or (unless ``skip_bad_lines``) a line is
            malformed or truncated; a finished (seed, arm) pair appears twice. Messages name the
            line numbers.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReportError(f"results file not found: {path}") from None
    except OSError as err:
        raise ReportError(f"cannot read results file {path}: {err.strerror}") from None
    results = Results(path=str(path))
    lines = data.splitlines(keepends=True)
    errors: list[str] = []
    seen: dict[tuple[int, str], int] = {}
    for idx, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = _parse_line(idx, raw, last=idx == len(lines))
        except ReportError as err:
            if skip_bad_lines:
                results.bad_lines.append((idx, str(err)))
                continue
            errors.append(str(err))
            continue
        if record.error is not None:
            results.failed.append(record)
            continue
        key = (record.seed, record.arm)
        if key in seen:
            errors.append(
                f"line {idx}: seed {record.seed} of arm '{record.arm}' already finished on line {seen[key]}"
                " (results of different experiments mixed in one file?)"
            )
            continue
        seen[key] = idx
        results.runs.append(record)
    if errors:
        shown = "\n  ".join(errors[:10])
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        hint = "\n(use --skip-bad-lines to leave malformed lines out)" if not skip_bad_lines else ""
        raise ReportError(f"{path}: {len(errors)} bad line(s):\n  {shown}{more}{hint}")
    return results


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


def _power(dz: float, n: int, alpha: float, alternative: str) -> float:
    from scipy import stats

    df = n - 1
    nc = dz * math.sqrt(n)
    if alternative == "two-sided":
        crit = stats.t.ppf(1 - alpha / 2, df)
        return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    if alternative == "less":
        nc = -nc
    crit = stats.t.ppf(1 - alpha, df)
    return float(stats.nct.sf(crit, df, nc))


def pairs_for_power(dz: float, alpha: float = 0.05, power: float = 0.8, alternative: str = "greater",
                    max_pairs: int = 1_000_000) -> int | None:
    """Smallest number of pairs at which the paired t-test reaches ``power``.

    The power of the paired t-test with ``n`` pairs at standardized effect ``dz`` is computed
    from the non-central t distribution (``df = n - 1``, non-centrality ``dz * sqrt(n)``).

    Args:
        dz: Cohen's d_z (mean difference / std of differences), taken as the true effect.
        alpha: significance level.
        power: the power wanted.
        alternative: ``"greater"``, ``"less"`` or ``"two-sided"``, as in the test.
        max_pairs: give up above this many pairs.

    Returns:
        The number of pairs (>= 2), or ``None`` if the effect points away from a one-sided
        alternative, is zero, or needs more than ``max_pairs``.
    """
    if not math.isfinite(dz) or dz == 0:
        return None
    if (alternative == "greater" and dz < 0) or (alternative == "less" and dz > 0):
        return None
    if _power(dz, 2, alpha, alternative) >= power:
        return 2
    lo, hi = 2, 4
    while _power(dz, hi, alpha, alternative) < power:  # power grows with n: bracket, then bisect
        lo, hi = hi, hi * 2
        if hi > max_pairs:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _power(dz, mid, alpha, alternative) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def _bootstrap_ci(diffs: np.ndarray, n_resamples: int, seed: int) -> tuple[float, float, str]:
    from scipy import stats

    for method in ("BCa", "percentile"):  # BCa can be degenerate for tiny/odd samples
        kwargs: dict[str, Any] = dict(confidence_level=0.95, n_resamples=n_resamples, method=method, vectorized=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                res = stats.bootstrap((diffs,), np.mean, rng=np.random.default_rng(seed), **kwargs)
            except TypeError:  # SciPy < 1.15 has no `rng`
                res = stats.bootstrap((diffs,), np.mean, random_state=np.random.default_rng(seed), **kwargs)
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return low, high, method
    return float("nan"), float("nan"), "unavailable"


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
    from scipy import stats

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
    values: dict[str, dict[int, float]] = {baseline: {}, treatment: {}}
    for run in results.runs:
        if run.arm not in values:
            continue
        if metric not in run.metrics:
            available = sorted({k for r in results.runs if r.arm in values for k in r.metrics})
            if not any(metric in r.metrics for r in results.runs if r.arm in values):
                raise ReportError(
                    f"unknown metric '{metric}': no run of '{baseline}' or '{treatment}' logged it; "
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
        values[run.arm][run.seed] = float(value)

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
    base = np.array([values[baseline][s] for s in seeds])
    treat = np.array([values[treatment][s] for s in seeds])
    diffs = treat - base
    std_diff = float(np.std(diffs, ddof=1))
    # Treat differences equal up to float round-off (e.g. 0.91 - 0.90 vs 0.81 - 0.80) as equal, too:
    # a t statistic from round-off noise would be a wrong number.
    if std_diff == 0 or np.allclose(diffs, diffs[0], rtol=1e-9, atol=1e-12):
        raise ReportError(
            f"all {len(seeds)} paired differences of '{metric}' are equal ({diffs[0]:+.6g}); their variance is "
            "zero, so the t-test and d_z are undefined (identical arms or a metric that does not vary?)"
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. wilcoxon's normal approximation notes for ties/zeros
        ttest = stats.ttest_rel(treat, base, alternative=alternative)
        if np.all(diffs == 0):  # pragma: no cover - excluded by the variance check
            w_stat, w_p = float("nan"), float("nan")
        else:
            wres = stats.wilcoxon(diffs, alternative=alternative)
            w_stat, w_p = float(wres.statistic), float(wres.pvalue)
    ci_low, ci_high, ci_method = _bootstrap_ci(diffs, n_resamples, bootstrap_seed)
    dz = float(np.mean(diffs) / std_diff)
    n_80 = pairs_for_power(dz, alpha, 0.8, alternative)
    p_t = float(ttest.pvalue)
    significant = bool(p_t <= alpha)
    relation = {"greater": ">", "less": "<", "two-sided": "!="}[alternative]
    test_name = "two-sided" if alternative == "two-sided" else "one-sided"
    if significant:
        verdict = (
            f"SIGNIFICANT: {treatment} {relation} {baseline} on {metric} "
            f"({test_name} paired t-test, p = {p_t:.4g} <= alpha = {alpha:g}, {len(seeds)} pairs)"
        )
    else:
        verdict = (
            f"NOT SIGNIFICANT: no evidence that {treatment} {relation} {baseline} on {metric} "
            f"({test_name} paired t-test, p = {p_t:.4g} > alpha = {alpha:g}, {len(seeds)} pairs)"
        )
    arms_summary: dict[str, dict[str, float | int]] = {}
    for arm in (baseline, treatment):
        vals = np.array(list(values[arm].values()))
        arms_summary[arm] = {
            "n": int(vals.size),
            "mean": float(vals.mean()),
            "std": float(vals.std(ddof=1)) if vals.size > 1 else float("nan"),
        }
    return PairedReport(
        metric=metric,
        baseline=baseline,
        treatment=treatment,
        alternative=alternative,
        alpha=alpha,
        arms=arms_summary,
        seeds=seeds,
        baseline_values=base.tolist(),
        treatment_values=treat.tolist(),
        differences=diffs.tolist(),
        n_pairs=len(seeds),
        mean_diff=float(np.mean(diffs)),
        std_diff=std_diff,
        t_statistic=float(ttest.statistic),
        p_value_ttest=p_t,
        wilcoxon_statistic=w_stat,
        p_value_wilcoxon=w_p,
        ci95_low=ci_low,
        ci95_high=ci_high,
        ci_method=ci_method,
        cohens_dz=dz,
        power_observed=_power(dz, len(seeds), alpha, alternative) if math.isfinite(dz) else None,
        n_pairs_for_80_power=n_80,
        significant=significant,
        verdict=verdict,
        unpaired=unpaired,
        failed_runs=failed_runs,
        notes=notes,
    )


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
