"""End-of-fit pictures and console table of the BN monitor: matplotlib PNGs and a rich summary table."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

SCALE_DRIFT_PNG = "scale_drift.png"
PEAK_XHAT_PNG = "peak_xhat.png"


def save_plots(
    directory: str,
    steps: Sequence[int],
    layer_names: Sequence[str],
    series: Callable[[str], list[list[float]]],
) -> dict[str, str]:
    """Write ``scale_drift.png`` (drift per layer over steps) and ``peak_xhat.png`` (peak x̂ per layer, in network
    order) to ``directory``; returns ``{"scale_drift": path, "peak_xhat": path}`` for the files written."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import cm
    from matplotlib.colors import Normalize

    os.makedirs(directory, exist_ok=True)
    out: dict[str, str] = {}
    n = len(layer_names)
    colors = matplotlib.colormaps["viridis"]
    norm = Normalize(vmin=0, vmax=max(n - 1, 1))

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=80)
    for i, (name, ys) in enumerate(zip(layer_names, series("scale_drift"))):
        ax.plot(list(steps), ys, color=colors(norm(i)), linewidth=1.2, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("mean |gamma - gamma_init|")
    ax.set_title("BN scale drift per layer")
    if n <= 10:
        ax.legend(fontsize=6, loc="upper left")
    else:
        sm = cm.ScalarMappable(norm=norm, cmap=colors)
        fig.colorbar(sm, ax=ax, label="layer index (network order)")
    fig.tight_layout()
    out["scale_drift"] = os.path.join(directory, SCALE_DRIFT_PNG)
    fig.savefig(out["scale_drift"])
    plt.close(fig)

    peaks = []
    for ys in series("xhat_absmax"):
        valid = [v for v in ys if not math.isnan(v)]
        peaks.append(max(valid) if valid else float("nan"))
    if any(not math.isnan(p) for p in peaks):
        fig, ax = plt.subplots(figsize=(max(4.0, 0.28 * n + 2), 3.6), dpi=80)
        ax.bar(range(n), peaks, color=[colors(norm(i)) for i in range(n)])
        ax.set_xticks(range(n))
        ax.set_xticklabels(layer_names, rotation=90, fontsize=6)
        ax.set_ylabel("max |x̂| over logged steps")
        ax.set_title("Peak normalized activation per BN layer")
        fig.tight_layout()
        out["peak_xhat"] = os.path.join(directory, PEAK_XHAT_PNG)
        fig.savefig(out["peak_xhat"])
        plt.close(fig)
    return out


def summary_table(rows: Sequence[dict[str, Any]]) -> Any:
    """A rich ``Table`` with one row per layer: layer, init scale, final scale mean, drift, peak x̂."""
    from rich.table import Table

    table = Table(title="BNInit: BN layers at the end of fit", header_style="bold magenta")
    table.add_column("Layer", style="cyan", no_wrap=True)
    for col in ("Init scale", "Final scale mean", "Scale drift", "Peak |x̂|"):
        table.add_column(col, justify="right")

    def fmt(v: float) -> str:
        return "-" if v is None or math.isnan(v) else f"{v:.4g}"

    for row in rows:
        table.add_row(row["layer"], fmt(row["init"]), fmt(row["final_scale_mean"]), fmt(row["scale_drift"]),
                      fmt(row["peak_xhat"]))
    return table


def print_summary(rows: Sequence[dict[str, Any]]) -> None:
    from rich import get_console

    get_console().print(summary_table(rows))
