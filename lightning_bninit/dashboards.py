"""W&B specifics of the BN monitor: run config, histograms, per-statistic sections, summary table and plots.

Layout of the W&B workspace (W&B puts each key in the section named by its prefix before the first ``/``):

- ``bn/<layer>/<stat>`` and ``bn/all/<stat>``: the scalars every logger gets, logged live on each monitoring step
  (section "bn", one panel per key). The names are the same for CSV, TensorBoard and W&B, so runs can be compared
  across loggers and tools. ``bn/<layer>/xhat_absmax`` and ``bn/all/xhat_absmax`` get ``summary="max"`` (the run
  summary shows the peak, not the last value).
- ``bn_hist_scale/<layer>`` and ``bn_hist_shift/<layer>``: histograms of the layer's scale and shift over channels,
  on each monitoring step (sections "bn_hist_scale" and "bn_hist_shift", one panel per layer, W&B's histogram-over-
  steps view).
- ``bn_<stat>/by_layer``: at the end of fit, for each statistic, one ``wandb.plot.line_series`` chart with a line per
  layer over the logged steps (legend in network order). This gives the workspace one section per statistic
  (``bn_scale_drift``, ``bn_xhat_absmax``, ...) with a line per layer, without logging every value twice during the
  run: W&B's automatic panels show one key each, and multi-key panels would otherwise need a saved workspace (a
  server call). Series longer than W&B's table limit are thinned evenly.
- ``bn_summary/layers``: a ``wandb.Table`` (layer, init, final scale mean, drift, peak x̂) at the end of fit;
  ``bn_plots/scale_drift`` and ``bn_plots/peak_xhat``: the PNG plots as ``wandb.Image``.
- run config ``bninit``: the callback's settings (``BNInit.settings``).

Everything goes through the run of the Trainer's ``WandbLogger`` (``logger.experiment``), so it works with
``WANDB_MODE=offline`` and is a no-op without a ``WandbLogger``. Only global rank zero calls these functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_bninit.monitor import STATS, metric_key

CONFIG_KEY = "bninit"
STEP_KEY = "trainer/global_step"
MAX_TABLE_ROWS = 10_000


def wandb_runs(trainer: pl.Trainer) -> list[Any]:
    """The W&B runs of the Trainer's ``WandbLogger``\\ s (none without wandb or such a logger)."""
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return []
    runs = []
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            if hasattr(run, "log") and hasattr(run, "config"):
                runs.append(run)
    return runs


def on_start(trainer: pl.Trainer, settings: Mapping[str, Any], layer_names: Sequence[str]) -> None:
    for run in wandb_runs(trainer):
        run.config.update({CONFIG_KEY: dict(settings)}, allow_val_change=True)
        if hasattr(run, "define_metric"):
            for name in [*layer_names, "all"]:
                run.define_metric(metric_key(name, "xhat_absmax"), step_metric=STEP_KEY, summary="max")


def log_histograms(trainer: pl.Trainer, layers: Mapping[str, _BatchNorm], step: int) -> None:
    runs = wandb_runs(trainer)
    if not runs:
        return
    import wandb

    data: dict[str, Any] = {}
    for name, bn in layers.items():
        if isinstance(bn.weight, torch.nn.parameter.UninitializedParameter):
            continue
        data[f"bn_hist_scale/{name}"] = wandb.Histogram(bn.weight.detach().float().cpu().numpy())
        data[f"bn_hist_shift/{name}"] = wandb.Histogram(bn.bias.detach().float().cpu().numpy())
    data[STEP_KEY] = step
    for run in runs:
        run.log(data)


def _thin(steps: Sequence[int], series: list[list[float]], max_points: int) -> tuple[list[int], list[list[float]]]:
    n = len(steps)
    if n <= max_points:
        return list(steps), series
    idx = sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})
    return [steps[i] for i in idx], [[ys[i] for i in idx] for ys in series]


def on_end(
    trainer: pl.Trainer,
    rows: Sequence[Mapping[str, Any]],
    images: Mapping[str, str],
    steps: Sequence[int],
    layer_names: Sequence[str],
    series: Callable[[str], list[list[float]]],
) -> None:
    runs = wandb_runs(trainer)
    if not runs:
        return
    import wandb

    columns = ["layer", "init", "final_scale_mean", "scale_drift", "peak_xhat"]
    table = wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])
    data: dict[str, Any] = {"bn_summary/layers": table}
    for key, path in images.items():
        data[f"bn_plots/{key}"] = wandb.Image(path)
    if steps and layer_names:
        max_points = max(2, MAX_TABLE_ROWS // len(layer_names))
        for stat in STATS:
            xs, ys = _thin(steps, series(stat), max_points)
            ys = [[None if v != v else v for v in line] for line in ys]  # NaN -> gap
            if all(v is None for line in ys for v in line):
                continue
            data[f"bn_{stat}/by_layer"] = wandb.plot.line_series(
                xs=xs, ys=ys, keys=list(layer_names), title=f"{stat} per BN layer", xname="step"
            )
    for run in runs:
        run.log(data)
