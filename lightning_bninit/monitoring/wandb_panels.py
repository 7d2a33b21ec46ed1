"""What the monitor adds for W&B: histograms, peak summaries and end-of-fit panels (layout: ``docs/design.md``).

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
from lightning_bninit.monitoring.stats import STATS, metric_key

STEP_KEY = "trainer/global_step"
MAX_TABLE_ROWS = 10_000
SUMMARY_COLUMNS = ["layer", "init", "final_scale_mean", "scale_drift", "peak_xhat"]


def is_wandb_logger(logger: Any) -> bool:
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return False
    return isinstance(logger, WandbLogger)


def define_peak_summaries(logger: Any, layer_names: Sequence[str]) -> None:
    """Make the run summary of every ``xhat_absmax`` key its maximum, not its last value."""
    run = logger.experiment
    if not hasattr(run, "define_metric"):
        return
    for name in [*layer_names, "all"]:
        key = logger_prefixed(logger, metric_key(name, "xhat_absmax"))
        run.define_metric(key, step_metric=STEP_KEY, summary="max")


def histograms(layers: Mapping[str, _BatchNorm]) -> dict[str, Any]:
    """``bn_hist_scale/<layer>`` and ``bn_hist_shift/<layer>``: the layer's values over channels."""
    import wandb

    data: dict[str, Any] = {}
    for name, bn in layers.items():
        if isinstance(bn.weight, torch.nn.parameter.UninitializedParameter):
            continue
        data[f"bn_hist_scale/{name}"] = wandb.Histogram(bn.weight.detach().float().cpu().numpy())
        data[f"bn_hist_shift/{name}"] = wandb.Histogram(bn.bias.detach().float().cpu().numpy())
    return data


def end_of_fit_panels(history: MonitorHistory, images: Mapping[str, str]) -> dict[str, Any]:
    """The summary table, the PNG plots, and per statistic one chart with a line per layer over the logged steps."""
    import wandb

    rows = history.summary_rows()
    data: dict[str, Any] = {
        "bn_summary/layers": wandb.Table(columns=SUMMARY_COLUMNS, data=[[r[c] for c in SUMMARY_COLUMNS] for r in rows])
    }
    for key, path in images.items():
        data[f"bn_plots/{key}"] = wandb.Image(path)
    if not history.steps or not history.layer_names:
        return data
    max_points = max(2, MAX_TABLE_ROWS // len(history.layer_names))
    for stat in STATS:
        xs, ys = _thin(history.steps, history.series(stat), max_points)
        ys = [[None if v != v else v for v in line] for line in ys]  # NaN -> gap
        if all(v is None for line in ys for v in line):
            continue
        data[f"bn_{stat}/by_layer"] = wandb.plot.line_series(
            xs=xs, ys=ys, keys=list(history.layer_names), title=f"{stat} per BN layer", xname="step"
        )
    return data


def _thin(steps: Sequence[int], series: list[list[float]], max_points: int) -> tuple[list[int], list[list[float]]]:
    n = len(steps)
    if n <= max_points:
        return list(steps), series
    idx = sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})
    return [steps[i] for i in idx], [[ys[i] for i in idx] for ys in series]
