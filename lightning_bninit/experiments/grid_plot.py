"""The ``--plot`` of the multi-arm report: the metric against γ₀ (log axis), one line per c, the baseline as a band.

An arm's settings are read from ``config["grid"]`` of its results lines (``{"init_scale": γ₀, "scale_lr_divisor":
c, ...}``, written by ``bninit compare`` for grid arms and the built-in ``standard`` and ``bninit``); an arm without
it is left out of the plot with a note.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lightning_bninit.experiments.multiarm import MultiArmReport
from lightning_bninit.experiments.results import Results
from lightning_bninit.experiments.stats import t_interval

__all__ = ["arm_grid", "grid_figure", "plot_grid", "run_grid"]

GRID_KEYS = ("init_scale", "scale_lr_divisor")


def arm_grid(results: Results, arm: str) -> tuple[dict[str, Any] | None, str]:
    """The grid settings shared by the finished runs of ``arm``, or ``None`` and the reason.

    Returns:
        ``(grid, "")`` with at least ``init_scale`` and ``scale_lr_divisor`` as floats, or ``(None, why)``.
    """
    grids = []
    for run in (r for r in results.runs if r.arm == arm):
        grid = run_grid(run.config)
        if grid is None and "grid" in run.config:
            return None, (f"config.grid of line {run.line} is {run.config['grid']!r}, not a mapping with "
                          "init_scale and scale_lr_divisor > 0")
        if grid is None:
            return None, f"line {run.line} has no config.grid"
        grids.append(grid)
    if not grids:
        return None, "no finished runs"
    if any(g != grids[0] for g in grids):
        return None, f"its runs disagree on the grid settings: {sorted({str(g) for g in grids})}"
    return grids[0], ""


def run_grid(config: dict[str, Any]) -> dict[str, Any] | None:
    """One run's grid settings from ``config["grid"]``; ``None`` if it has none or it is not valid."""
    grid = config.get("grid")
    if isinstance(grid, dict):
        values = {k: grid.get(k) for k in GRID_KEYS}
        if all(_positive(v) for v in values.values()):
            return {**grid, **{k: float(v) for k, v in values.items()}}
    return None


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def plot_grid(report: MultiArmReport, results: Results, path: str | Path) -> tuple[Path, list[str]]:
    """Save a PNG of the metric against γ₀ (log x-axis), one line per c, with each arm's CI; the baseline a band.

    Each point is an arm's mean over its finite runs with the two-sided t interval of that mean at level
    ``1 - alpha`` (arms with one run get no bar); filled markers are the arms that beat the baseline after Holm's
    correction, the square is the baseline (also drawn as a band: its mean and interval). Arms that differ in other
    grid keys than γ₀ get lines of their own.

    Returns:
        The path written, and a note for each arm left out of the plot.
    """
    import matplotlib.pyplot as plt

    fig, notes = grid_figure(report, results)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path, notes


def grid_figure(report: MultiArmReport, results: Results) -> tuple[Any, list[str]]:
    """The figure of :func:`plot_grid` (not saved) and its notes."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; safe in CI
    import matplotlib.pyplot as plt

    lines, notes = _lines(report, results)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _baseline_band(ax, report)
    for label, points in lines.items():
        _draw_line(ax, label, points)
    if not lines:
        ax.text(0.5, 0.5, "no arm has grid settings (config.grid)", transform=ax.transAxes, ha="center")
    else:
        ax.set_xscale("log")
    ax.set_xlabel("γ₀ (initial BN scale, init_scale)")
    ax.set_ylabel(report.metric)
    ax.set_title(f"{report.metric} by arm, {100 * report.ci_level:g}% t intervals of the means; "
                 f"filled: beats {report.baseline} after Holm", fontsize=9)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig, notes


def _lines(report: MultiArmReport, results: Results) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """The plotted points grouped into lines (by c and any further grid key), and notes on arms left out."""
    significant = set(report.significant_arms)
    lines: dict[str, list[dict[str, Any]]] = {}
    notes: list[str] = []
    for arm, summary in report.arms.items():
        grid, why = arm_grid(results, arm)
        if grid is None or not summary["n"]:
            if arm != report.baseline:  # the baseline is always there, as the band
                notes.append(f"'{arm}' left out of the plot: {why or 'no finite value of ' + report.metric}")
            continue
        rest = {k: v for k, v in grid.items() if k != "init_scale"}
        label = ", ".join(f"c = {v:g}" if k == "scale_lr_divisor" else f"{k} = {v}" for k, v in rest.items())
        lines.setdefault(label, []).append({"arm": arm, "x": grid["init_scale"], "significant": arm in significant,
                                            "baseline": arm == report.baseline, "c": grid["scale_lr_divisor"],
                                            "interval": _mean_interval(summary, report.alpha), **summary})
    return dict(sorted(lines.items(), key=lambda item: (item[1][0]["c"], item[0]))), notes


def _mean_interval(summary: dict[str, Any], alpha: float) -> tuple[float, float]:
    if summary["n"] < 2:
        return summary["mean"], summary["mean"]
    return t_interval(summary["mean"], summary["std"], summary["n"], alpha, "two-sided")


def _baseline_band(ax: Any, report: MultiArmReport) -> None:
    base = report.arms[report.baseline]
    low, high = _mean_interval(base, report.alpha)
    ax.axhspan(low, high, color="tab:gray", alpha=0.25, label=f"{report.baseline} ({100 * report.ci_level:g}% CI)")
    ax.axhline(base["mean"], color="tab:gray", lw=1)


def _draw_line(ax: Any, label: str, points: list[dict[str, Any]]) -> None:
    points = sorted(points, key=lambda p: p["x"])
    xs = [p["x"] for p in points]
    ys = [p["mean"] for p in points]
    err = [[p["mean"] - p["interval"][0] for p in points], [p["interval"][1] - p["mean"] for p in points]]
    (line,) = ax.plot(xs, ys, marker="", label=label)
    ax.errorbar(xs, ys, yerr=err, fmt="none", ecolor=line.get_color(), capsize=3)
    for p in points:
        ax.plot(p["x"], p["mean"], marker="s" if p["baseline"] else "o", color=line.get_color(),
                markerfacecolor=line.get_color() if p["significant"] else "white")
        ax.annotate(p["arm"], (p["x"], p["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
