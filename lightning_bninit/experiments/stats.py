"""The statistics of the report, each a small function over arrays of paired differences (SciPy underneath)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["bootstrap_ci", "holm_adjust", "paired_t_power", "pairs_for_power", "t_interval"]


def t_interval(mean: float, std: float, n: int, alpha: float, alternative: str) -> tuple[float, float]:
    """Confidence interval of a mean from the t distribution (``df = n - 1``), with the sidedness of the test.

    The interval is the set of true means the t-test at ``alpha`` would not reject, so 0 lies outside it exactly
    when the paired t-test of the differences gives ``p <= alpha`` (up to float round-off at the boundary).

    Args:
        mean: sample mean (of the paired differences).
        std: sample standard deviation (``ddof=1``).
        n: number of values (>= 2).
        alpha: 1 - confidence level.
        alternative: ``"greater"`` gives ``[low, +inf)``, ``"less"`` gives ``(-inf, high]``, ``"two-sided"``
            gives ``[low, high]`` with ``alpha / 2`` on each side.

    Returns:
        ``(low, high)``, with ``-inf`` or ``+inf`` for the open end of a one-sided interval.
    """
    from scipy import stats

    se = std / math.sqrt(n)
    if alternative == "two-sided":
        half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * se
        return mean - half, mean + half
    half = float(stats.t.ppf(1 - alpha, n - 1)) * se
    if alternative == "greater":
        return mean - half, math.inf
    if alternative == "less":
        return -math.inf, mean + half
    raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the order given.

    With the m p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of ``p_(i)`` is
    ``max over j <= i of min(1, (m - j + 1) * p_(j))``. Rejecting every hypothesis whose adjusted p-value is
    ``<= alpha`` keeps the probability of any false rejection at most ``alpha`` (Holm 1979).

    Raises:
        ValueError: a p-value that is not a number in [0, 1].
    """
    values = [float(p) for p in p_values]
    bad = [p for p in values if not 0.0 <= p <= 1.0]  # also catches NaN
    if bad:
        raise ValueError(f"p-values must be numbers in [0, 1], got {bad}")
    m = len(values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: values[i])):
        running = max(running, min(1.0, (m - rank) * values[index]))
        adjusted[index] = running
    return adjusted


def paired_t_power(dz: float, n: int, alpha: float, alternative: str) -> float:
    """Power of the paired t-test with ``n`` pairs at standardized effect ``dz`` (non-central t, ``df = n - 1``)."""
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
    if paired_t_power(dz, 2, alpha, alternative) >= power:
        return 2
    lo, hi = 2, 4
    while paired_t_power(dz, hi, alpha, alternative) < power:  # power grows with n: bracket, then bisect
        lo, hi = hi, hi * 2
        if hi > max_pairs:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if paired_t_power(dz, mid, alpha, alternative) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def bootstrap_ci(diffs: np.ndarray, n_resamples: int, seed: int) -> tuple[float, float, str]:
    """Bootstrap 95% CI of the mean of ``diffs``: BCa, or the percentile interval where BCa is degenerate."""
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
