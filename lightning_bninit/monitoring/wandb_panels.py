"""What the monitor adds for W&B: histograms, peak summaries, live and end-of-fit panels (layout: ``docs/design.md``).

Everything is logged through the Trainer's ``WandbLogger`` (its ``log_metrics``, so its prefix is honoured and each
logging step is one history row), which works with ``WANDB_MODE=offline``; these functions only build the payloads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_bninit.compat import logger_prefixed
from lightning_bninit.monitoring.history import MonitorHistory
from lightning_bninit.monitoring.console import COLUMNS
from lightning_bninit.monitoring.stats import COMPACT_STATS, STATS, metric_key

STEP_KEY = "trainer/global_step"
MAX_TABLE_ROWS = 10_000
SUMMARY_COLUMNS = [key for key, _ in COLUMNS]
PEAK_STATS = ("xhat_absmax", "xhat_bound_ratio")
HEATMAP_STATS = ("scale_drift_rel", "xhat_bound_ratio")


def is_wandb_logger(logger: Any) -> bool:
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return False
    return isinstance(logger, WandbLogger)


def define_peak_summaries(logger: Any, labels: Sequence[str]) -> None:
    """Make the run summary of every peak key (``xhat_absmax``, ``xhat_bound_ratio``, per layer and ``bn/all``) its
    maximum over the run, not its last value. The labels hold no dots, which W&B would read as nesting."""
    run = logger.experiment
    if not hasattr(run, "define_metric"):
        return
    for label in [*labels, "all"]:
        for stat in PEAK_STATS:
            run.define_metric(logger_prefixed(logger, metric_key(label, stat)), step_metric=STEP_KEY, summary="max")


def histograms(layers: Mapping[str, _BatchNorm], labels: Sequence[str]) -> dict[str, Any]:
    """``bn_hist_scale/<label>`` and ``bn_hist_shift/<label>``: the layer's values over channels."""
    import wandb

    data: dict[str, Any] = {}
    for label, bn in zip(labels, layers.values()):
        if isinstance(bn.weight, torch.nn.parameter.UninitializedParameter):
            continue
        data[f"bn_hist_scale/{label}"] = wandb.Histogram(bn.weight.detach().float().cpu().numpy())
        data[f"bn_hist_shift/{label}"] = wandb.Histogram(bn.bias.detach().float().cpu().numpy())
    return data


def live_panels(history: MonitorHistory, heatmaps: Mapping[str, Any], stats: Sequence[str] = COMPACT_STATS
                ) -> dict[str, Any]:
    """Refreshed during the run: ``bn_heatmap/<stat>`` images (RGB arrays) and ``bn_by_layer/<stat>`` charts, one
    line per layer over the logged steps."""
    import wandb

    data: dict[str, Any] = {f"bn_heatmap/{stat}": wandb.Image(rgb) for stat, rgb in heatmaps.items()}
    data.update(by_layer_charts(history, stats))
    return data


def by_layer_charts(history: MonitorHistory, stats: Sequence[str]) -> dict[str, Any]:
    """Per statistic, ``bn_by_layer/<stat>``: one chart with a line per layer (series longer than W&B's table limit
    are thinned evenly)."""
    import wandb

    data: dict[str, Any] = {}
    if not history.steps or not history.layer_names:
        return data
    max_points = max(2, MAX_TABLE_ROWS // len(history.layer_names))
    for stat in stats:
        xs, ys = _thin(history.steps, history.series(stat), max_points)
        ys = [[None if v != v else v for v in line] for line in ys]  # NaN -> gap
        if all(v is None for line in ys for v in line):
            continue
        data[f"bn_by_layer/{stat}"] = wandb.plot.line_series(
            xs=xs, ys=ys, keys=list(history.layer_names), title=f"{stat} per BN layer", xname="step"
        )
    return data


def end_of_fit_panels(history: MonitorHistory, images: Mapping[str, str], full: bool = False) -> dict[str, Any]:
    """The summary table (worst layers first), the PNG figures and the by-layer charts (every statistic with
    ``full``)."""
    import wandb

    rows = history.summary_rows()
    data: dict[str, Any] = {
        "bn_summary/layers": wandb.Table(columns=SUMMARY_COLUMNS, data=[[r[c] for c in SUMMARY_COLUMNS] for r in rows])
    }
    for key, path in images.items():
        data[f"bn_plots/{key}"] = wandb.Image(path)
    data.update(by_layer_charts(history, STATS if full else COMPACT_STATS))
    return data


def _thin(steps: Sequence[int], series: list[list[float]], max_points: int) -> tuple[list[int], list[list[float]]]:
    n = len(steps)
    if n <= max_points:
        return list(steps), series
    idx = sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})
    return [steps[i] for i in idx], [[ys[i] for i in idx] for ys in series]
