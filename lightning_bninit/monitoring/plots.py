"""The monitor's end-of-fit PNG plots (matplotlib, from the ``[experiments]`` or ``[all]`` extra)."""

from __future__ import annotations

import math
import os

from lightning_bninit.monitoring.history import MonitorHistory

SCALE_DRIFT_PNG = "scale_drift.png"
PEAK_XHAT_PNG = "peak_xhat.png"


def save_plots(directory: str, history: MonitorHistory) -> dict[str, str]:
    """Write ``scale_drift.png`` (drift per layer over steps) and ``peak_xhat.png`` (peak x̂ per layer, in network
    order) to ``directory``; returns ``{"scale_drift": path, "peak_xhat": path}`` for the files written."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    out = {"scale_drift": os.path.join(directory, SCALE_DRIFT_PNG)}
    _drift_figure(plt, history).savefig(out["scale_drift"])
    plt.close("all")
    peaks = history.peaks("xhat_absmax")
    if any(not math.isnan(p) for p in peaks):
        out["peak_xhat"] = os.path.join(directory, PEAK_XHAT_PNG)
        _peak_figure(plt, history.layer_names, peaks).savefig(out["peak_xhat"])
        plt.close("all")
    return out


def _colors(n: int):  # noqa: ANN202 - a matplotlib colormap and its normalization
    import matplotlib
    from matplotlib.colors import Normalize

    return matplotlib.colormaps["viridis"], Normalize(vmin=0, vmax=max(n - 1, 1))


def _drift_figure(plt, history: MonitorHistory):  # noqa: ANN001, ANN202 - matplotlib objects
    from matplotlib import cm

    n = len(history.layer_names)
    cmap, norm = _colors(n)
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=80)
    for i, (name, ys) in enumerate(zip(history.layer_names, history.series("scale_drift"))):
        ax.plot(history.steps, ys, color=cmap(norm(i)), linewidth=1.2, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("mean |gamma - gamma_init|")
    ax.set_title("BN scale drift per layer")
    if n <= 10:
        ax.legend(fontsize=6, loc="upper left")
    else:
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="layer index (network order)")
    fig.tight_layout()
    return fig


def _peak_figure(plt, layer_names: list[str], peaks: list[float]):  # noqa: ANN001, ANN202
    n = len(layer_names)
    cmap, norm = _colors(n)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.28 * n + 2), 3.6), dpi=80)
    ax.bar(range(n), peaks, color=[cmap(norm(i)) for i in range(n)])
    ax.set_xticks(range(n))
    ax.set_xticklabels(layer_names, rotation=90, fontsize=6)
    ax.set_ylabel("max |x̂| over logged steps")
    ax.set_title("Peak normalized activation per BN layer")
    fig.tight_layout()
    return fig
