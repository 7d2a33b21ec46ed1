"""The monitor's PNG figures (matplotlib, from the ``[experiments]`` or ``[all]`` extra): the paper's two observations.

- ``scale_drift.png``: drift of the scale relative to its start, mean |γ − γ₀| / mean |γ₀|, per layer over the
  logged steps (one line per layer up to :data:`MAX_LINES` layers, a layer × step heat map above);
- ``peak_xhat.png``: per layer, the peak |x̂| over the run against its bound sqrt(m − 1) (m recorded per layer), and
  the ratio of the two with the alert threshold;
- ``xhat_bound_ratio.png``: peak |x̂| / sqrt(m − 1) per layer over the logged steps (lines or heat map, as above).

:func:`heatmap_rgb` renders a layer × step heat map as an RGB array, for the live views of W&B and TensorBoard.
"""

from __future__ import annotations

import math
import os
from typing import Any

from lightning_bninit.monitoring.history import MonitorHistory
from lightning_bninit.monitoring.stats import DEFAULT_BOUND_RATIO

SCALE_DRIFT_PNG = "scale_drift.png"
PEAK_XHAT_PNG = "peak_xhat.png"
BOUND_RATIO_PNG = "xhat_bound_ratio.png"
MAX_LINES = 10
"""Up to this many layers a statistic is drawn as one line per layer; above, as a layer × step heat map."""
DPI = 100
STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
         "legend.fontsize": 9}
TITLES = {"scale_drift_rel": "scale drift  mean |γ − γ₀| / mean |γ₀|",
          "xhat_bound_ratio": "peak |x̂| / sqrt(m − 1)"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_plots(
    directory: str, history: MonitorHistory, bound_ratio: float = DEFAULT_BOUND_RATIO
) -> dict[str, str]:
    """Write the figures to ``directory``; returns ``{"scale_drift": path, "peak_xhat": path, ...}`` for the files
    written (the x̂ figures only when x̂ was measured)."""
    plt = _pyplot()
    os.makedirs(directory, exist_ok=True)
    figures = {"scale_drift": (SCALE_DRIFT_PNG, lambda: _over_steps(plt, history, "scale_drift_rel"))}
    if any(not math.isnan(p) for p in history.peaks("xhat_absmax")):
        figures["peak_xhat"] = (PEAK_XHAT_PNG, lambda: _peak_figure(plt, history, bound_ratio))
        figures["xhat_bound_ratio"] = (BOUND_RATIO_PNG, lambda: _over_steps(plt, history, "xhat_bound_ratio"))
    out = {}
    with plt.rc_context(STYLE):
        for key, (filename, make) in figures.items():
            fig = make()
            out[key] = os.path.join(directory, filename)
            fig.savefig(out[key], dpi=DPI)
            plt.close(fig)
    return out


def heatmap_rgb(history: MonitorHistory, stat: str) -> Any:
    """A layer × step heat map of ``stat`` as a ``uint8`` array ``(H, W, 3)``."""
    import numpy as np

    plt = _pyplot()
    with plt.rc_context(STYLE):
        fig = _heatmap(plt, history, stat)
        fig.canvas.draw()
        rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
        plt.close(fig)
    return rgb


def _over_steps(plt: Any, history: MonitorHistory, stat: str) -> Any:
    if len(history.layer_names) > MAX_LINES:
        return _heatmap(plt, history, stat)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for name, ys in zip(history.layer_names, history.series(stat)):
        ax.plot(history.steps, ys, linewidth=1.6, marker="." if len(history.steps) < 30 else None, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(TITLES.get(stat, stat))
    ax.set_title(f"BN {TITLES.get(stat, stat)} per layer")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _heatmap(plt: Any, history: MonitorHistory, stat: str) -> Any:
    import numpy as np

    n = len(history.layer_names)
    data = np.array(history.series(stat), dtype=float).reshape(n, len(history.steps))
    fig, ax = plt.subplots(figsize=(8.5, min(max(3.0, 0.17 * n + 1.6), 14.0)))
    steps = history.steps or [0]
    extent = (steps[0] - 0.5, steps[-1] + 0.5, n - 0.5, -0.5)
    image = ax.imshow(np.ma.masked_invalid(data), aspect="auto", interpolation="nearest", cmap="viridis",
                      extent=extent)
    ax.set_yticks(range(n), history.layer_names, fontsize=8 if n > 30 else 9)
    ax.set_xlabel("step")
    ax.set_title(f"BN {TITLES.get(stat, stat)}, layer × step")
    fig.colorbar(image, ax=ax, label=TITLES.get(stat, stat), pad=0.02)
    fig.tight_layout()
    return fig


def _peak_figure(plt: Any, history: MonitorHistory, bound_ratio: float) -> Any:
    by_layer = {row["layer"]: row for row in history.summary_rows()}
    rows = [by_layer[name] for name in history.layer_names]  # network order
    n = len(rows)
    x = list(range(n))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(7.5, 0.2 * n + 2.5), 7.0), sharex=True)
    top.bar(x, [r["peak_xhat"] for r in rows], color="tab:blue", label="peak |x̂| over the run")
    top.plot(x, [r["sqrt_m_minus_1"] for r in rows], "k_", markersize=12, markeredgewidth=2,
             label="bound sqrt(m − 1)")
    top.set_yscale("log")
    top.set_ylabel("|x̂|")
    top.set_title("Peak normalized activation per BN layer against its bound")
    top.legend(loc="best")
    ratios = [r["peak_ratio"] for r in rows]
    colors = ["tab:red" if (not math.isnan(v) and v >= bound_ratio) else "tab:blue" for v in ratios]
    bottom.bar(x, ratios, color=colors)
    bottom.axhline(bound_ratio, color="tab:red", linestyle="--", linewidth=1, label=f"alert at {bound_ratio:g}")
    bottom.set_ylim(0, 1.05)
    bottom.set_ylabel("peak |x̂| / sqrt(m − 1)")
    bottom.legend(loc="best")
    bottom.set_xticks(x, [r["layer"] for r in rows], rotation=90, fontsize=8 if n > 30 else 9)
    fig.tight_layout()
    return fig
