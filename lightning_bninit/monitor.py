"""BN statistics monitoring: per-layer scale/shift drift and normalized-activation (x̂) magnitudes.

The paper (Davis & Frank, ECCV 2022) argues from two observations: BN scales and shifts stay close to their initial
values, and the normalized activations x̂ can get as large as ``sqrt(m - 1)`` (m values per channel in the batch).
:class:`BNMonitor` measures both during training; :class:`~lightning_bninit.BNInit` runs one by default
(``BNInit(monitor=False)`` turns it off), so that a baseline run (``BNInit(init_scale=1.0, scale_lr_divisor=1.0)``) is
monitored exactly like a treated one.

What is logged, per BN layer ``<layer>`` (qualified module name), as ``bn/<layer>/<stat>``:

- ``scale_mean``, ``scale_std``, ``scale_min``, ``scale_max``, ``shift_mean``, ``shift_std`` (std over the layer's
  channels, population std so that one-channel layers give 0, not NaN);
- ``scale_drift`` = mean |gamma - gamma_init| and ``shift_drift`` = mean |beta - beta_init|, relative to the values at
  the start of fit that ``BNInit`` keeps in its checkpoint state (so drift survives a resume);
- ``xhat_absmax`` = max |x̂| over the batch, computed in float32 exactly as BN normalizes in training mode (biased
  batch variance, the layer's eps); ``xhat_bound_ratio`` = ``xhat_absmax / sqrt(m - 1)``; ``xhat_frac_gt3`` = fraction
  of |x̂| > 3; ``out_absmax`` = max |gamma x̂ + beta|.

and network summaries ``bn/all/<stat>``: the max over layers of ``xhat_absmax``, ``xhat_bound_ratio``, ``out_absmax``
and ``scale_max``; the mean over layers of ``scale_drift``, ``shift_drift`` and ``xhat_frac_gt3``.

When: on the training steps where ``(batches_that_stepped + 1) % log_every_n_steps == 0`` -- the rule of Lightning's
``LoggerConnector.should_update_logs`` evaluated in ``on_train_batch_start`` (as Lightning's ``LearningRateMonitor``
does), counted in optimizer steps (with gradient accumulation, the micro-batch on which the optimizer steps). Unlike
Lightning, a pending ``trainer.should_stop`` does not force an extra logging step: the decision must be identical on
every rank, because logging steps run a collective under DDP. The forward hooks on the BN layers are registered in
``on_train_batch_start`` of a logging step and removed in its ``on_train_batch_end``: other steps run no hook, no
reduction and no host synchronization. On a logging step all per-layer values are stacked and brought to the host with
one ``.tolist()``.

Where: the values go to every logger of the Trainer through ``logger.log_metrics(metrics, step)`` with Lightning's
own step (``batches_that_stepped``), so CSV, TensorBoard and W&B rows line up with the user's ``self.log`` values.
This bypasses ``LightningModule.log`` on purpose: a few hundred keys would otherwise sit in ``callback_metrics`` and
the progress bar, and values logged only on some steps would be re-emitted by later flushes.

DDP: every rank computes its own activation statistics; on logging steps one ``all_gather`` of the stacked ``[layers,
4]`` tensor gives ``xhat_absmax``, ``xhat_bound_ratio`` and ``out_absmax`` as the max over ranks and
``xhat_frac_gt3`` as the mean over ranks. Parameter statistics are identical on every rank (DDP keeps parameters in
sync). Only global rank zero writes to the loggers (as Lightning's loggers do). With ``SyncBatchNorm`` the layer
normalizes with the statistics of the global batch, and so does the hook (two small all-reduces per layer, on logging
steps only; m is then the global count).

W&B (:mod:`lightning_bninit.dashboards`) adds histograms, the run config, a summary table, the plots, and one section
per statistic with a line per layer (see that module's docstring for the layout). At the end of fit
(:mod:`lightning_bninit.plots`) two PNG plots are written to ``<log_dir>/bn_monitor/`` and a summary table is printed.

``torch.compile``: the parameter statistics are computed outside the compiled graph and are always logged. Activation
hooks on a compiled model would make Dynamo guard on the modules' hooks and recompile whenever they are added or
removed, so when the LightningModule or one of its submodules is compiled the x̂ statistics are skipped, with one
warning.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

PARAM_STATS = (
    "scale_mean", "scale_std", "scale_min", "scale_max", "shift_mean", "shift_std", "scale_drift", "shift_drift",
)
XHAT_STATS = ("xhat_absmax", "xhat_bound_ratio", "xhat_frac_gt3", "out_absmax")
STATS = PARAM_STATS + XHAT_STATS
"""Per-layer statistic names, in the column order of :meth:`BNMonitor.history` rows."""

ALL_MAX = ("xhat_absmax", "xhat_bound_ratio", "out_absmax", "scale_max")
ALL_MEAN = ("scale_drift", "shift_drift", "xhat_frac_gt3")
PREFIX = "bn"


# ----------------------------------------------------------------------------------------------------------------
# Pure statistics
# ----------------------------------------------------------------------------------------------------------------


def xhat_stats(
    x: torch.Tensor,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    mean: torch.Tensor | None = None,
    var: torch.Tensor | None = None,
    count: int | None = None,
) -> torch.Tensor:
    """``[xhat_absmax, xhat_bound_ratio, xhat_frac_gt3, out_absmax]`` for a BN input ``x`` of shape ``(N, C, ...)``.

    x̂ = (x - mean) / sqrt(var + eps) per channel, with the biased batch variance, as BN computes it in training mode;
    all in float32 whatever the input dtype. ``mean``/``var``/``count`` (shape ``(C,)`` and the values per channel)
    replace the batch's own statistics, e.g. with the global ones of ``SyncBatchNorm``. Returns a float32 tensor of 4
    on ``x``'s device, without synchronizing with the host.
    """
    x = x.detach().float()
    channels = x.shape[1]
    dims = [0, *range(2, x.dim())]
    shape = [1, channels] + [1] * (x.dim() - 2)
    if mean is None or var is None:
        var_, mean_ = torch.var_mean(x, dim=dims, unbiased=False, keepdim=True)
    else:
        mean_, var_ = mean.float().reshape(shape), var.float().reshape(shape)
    m = count if count is not None else x.numel() // max(channels, 1)
    xhat = (x - mean_) * torch.rsqrt(var_ + eps)
    absx = xhat.abs()
    absmax = absx.amax()
    frac = (absx > 3).float().mean()
    if weight is not None:
        out = xhat * weight.detach().float().reshape(shape)
        if bias is not None:
            out = out + bias.detach().float().reshape(shape)
        out_absmax = out.abs().amax()
    else:
        out_absmax = absmax
    ratio = absmax / math.sqrt(m - 1) if m > 1 else torch.full_like(absmax, float("nan"))
    return torch.stack([absmax, ratio, frac, out_absmax])


def param_stats(
    scale: torch.Tensor, shift: torch.Tensor, scale_init: torch.Tensor, shift_init: torch.Tensor
) -> torch.Tensor:
    """``[scale_mean, scale_std, scale_min, scale_max, shift_mean, shift_std, scale_drift, shift_drift]`` (float32).

    Stds are population stds over channels; drifts are mean absolute differences from the initial values.
    """
    w = scale.detach().float()
    b = shift.detach().float()
    w_std, w_mean = torch.std_mean(w, unbiased=False)
    b_std, b_mean = torch.std_mean(b, unbiased=False)
    return torch.stack([
        w_mean, w_std, w.amin(), w.amax(), b_mean, b_std,
        (w - scale_init.to(w)).abs().mean(), (b - shift_init.to(b)).abs().mean(),
    ])


def is_logging_step(trainer: pl.Trainer, every_n_steps: int) -> bool:
    """Whether the training step about to run (called in ``on_train_batch_start``) is a monitoring step.

    Lightning's rule (``LoggerConnector.should_update_logs`` for the fit loop) without its ``should_stop`` clause:
    ``(batches_that_stepped + 1) % every_n_steps == 0``, and only on the micro-batch on which the optimizer steps.
    """
    if every_n_steps <= 0:
        return False
    epoch_loop = trainer.fit_loop.epoch_loop
    if epoch_loop._should_accumulate():
        return False
    return (epoch_loop._batches_that_stepped + 1) % every_n_steps == 0


def metric_key(layer: str, stat: str) -> str:
    return f"{PREFIX}/{layer}/{stat}"


def summarize(rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Network-level values from a ``[layers, len(STATS)]`` tensor (NaN entries, e.g. missing x̂, are ignored)."""
    out = {}
    for stat in ALL_MAX + ALL_MEAN:
        col = rows[:, STATS.index(stat)]
        valid = col[~torch.isnan(col)]
        if valid.numel() == 0:
            continue
        out[stat] = valid.amax() if stat in ALL_MAX else valid.mean()
    return out


def _is_compiled(pl_module: nn.Module) -> bool:
    if getattr(pl_module, "_compiler_ctx", None) is not None:
        return True
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # pragma: no cover
        return False
    return any(isinstance(m, OptimizedModule) for m in pl_module.modules())


# ----------------------------------------------------------------------------------------------------------------
# Activation hooks
# ----------------------------------------------------------------------------------------------------------------


class _XhatHook:
    """Forward hook that accumulates :func:`xhat_stats` of the layer's input (elementwise max over calls)."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def __call__(self, module: _BatchNorm, args: tuple, output: Any) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            return
        uses_batch_stats = module.training or module.running_mean is None
        if not uses_batch_stats:
            return
        with torch.no_grad():
            x = args[0]
            stats = _sync_bn_stats(module, x)
            value = xhat_stats(x, module.eps, module.weight, module.bias, **stats)
        self.value = value if self.value is None else torch.maximum(self.value, value)


def _sync_bn_stats(module: _BatchNorm, x: torch.Tensor) -> dict[str, Any]:
    """Global mean, biased variance and count for a ``SyncBatchNorm`` in a process group of several ranks."""
    if not isinstance(module, nn.SyncBatchNorm):
        return {}
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return {}
    group = module.process_group or dist.group.WORLD
    if dist.get_world_size(group) < 2:
        return {}
    xf = x.detach().float()
    channels = xf.shape[1]
    dims = [0, *range(2, xf.dim())]
    local = torch.cat([xf.sum(dim=dims), torch.tensor([xf.numel() / channels], device=xf.device)])
    dist.all_reduce(local, group=group)
    count = local[-1]
    mean = local[:-1] / count
    shape = [1, channels] + [1] * (xf.dim() - 2)
    sq = ((xf - mean.reshape(shape)) ** 2).sum(dim=dims)
    dist.all_reduce(sq, group=group)
    return {"mean": mean, "var": sq / count, "count": int(count.item())}


class BNMonitor:
    """Measures BN statistics during fit and sends them to the Trainer's loggers; driven by ``BNInit``.

    Args:
        log_every_n_steps: monitor every this many optimizer steps; ``None`` (default) uses the Trainer's
            ``log_every_n_steps``. 0 logs nothing during training.
        activations: also measure x̂ (forward hooks on logging steps); ``False`` logs the parameter statistics only.
        histograms: with a ``WandbLogger``, log per-layer histograms of scale and shift on each logging step.
        plots: at the end of fit, write PNG plots to ``<log_dir>/bn_monitor/`` (and to W&B).
        console_summary: at the end of fit, print the summary table to the console (rich).
    """

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        activations: bool = True,
        histograms: bool = True,
        plots: bool = True,
        console_summary: bool = True,
    ) -> None:
        if log_every_n_steps is not None and (
            isinstance(log_every_n_steps, bool) or not isinstance(log_every_n_steps, int) or log_every_n_steps < 0
        ):
            raise ValueError(f"log_every_n_steps must be an int >= 0 or None, got {log_every_n_steps!r}.")
        self.log_every_n_steps = log_every_n_steps
        self.activations = bool(activations)
        self.histograms = bool(histograms)
        self.plots = bool(plots)
        self.console_summary = bool(console_summary)

        self._layers: dict[str, _BatchNorm] = {}
        self._init_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._hooks: dict[str, _XhatHook] = {}
        self._handles: list[RemovableHandle] = []
        self._armed = False
        self._xhat_enabled = True
        self._settings: dict[str, Any] = {}
        self.steps: list[int] = []
        self.layer_names: list[str] = []
        self.history: list[list[float]] = []
        """One row per logging step: ``len(layer_names) * len(STATS)`` floats, layer-major (NaN where unknown)."""
        self.output_dir: str | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------

    def every_n_steps(self, trainer: pl.Trainer) -> int:
        # Set by Lightning's logger connector at Trainer init; not declared on the class.
        default: int = trainer.log_every_n_steps  # type: ignore[attr-defined]
        return default if self.log_every_n_steps is None else self.log_every_n_steps

    def start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        layer_names: Sequence[str],
        settings: dict[str, Any] | None = None,
    ) -> None:
        """Resolve the BN modules by name (after any ``SyncBatchNorm`` conversion) and set up the dashboards."""
        modules = dict(pl_module.named_modules())
        self._layers = {n: modules[n] for n in layer_names if isinstance(modules.get(n), _BatchNorm)}
        self.layer_names = list(self._layers)
        self._init_cache = {}
        self._hooks = {n: _XhatHook() for n in self.layer_names}
        self._settings = dict(settings or {})
        self.steps, self.history = [], []
        self._xhat_enabled = self.activations
        if self.activations and self._layers and _is_compiled(pl_module):
            self._xhat_enabled = False
            rank_zero_warn(
                "BNInit monitor: the model is compiled with torch.compile, so the normalized-activation statistics "
                "(xhat_*, out_absmax) are not measured (forward hooks would force recompilations); the scale/shift "
                "statistics and drift are still logged. Pass BNInit(monitor=BNMonitor(activations=False)) to silence "
                "this warning."
            )
        if trainer.is_global_zero and self._layers:
            from lightning_bninit import dashboards

            dashboards.on_start(trainer, self._settings, self.layer_names)

    def on_batch_start(self, trainer: pl.Trainer) -> None:
        self._armed = False
        if not self._layers or not trainer.loggers or not is_logging_step(trainer, self.every_n_steps(trainer)):
            return
        self._armed = True
        if self._xhat_enabled:
            for name, bn in self._layers.items():
                hook = self._hooks[name]
                hook.value = None
                self._handles.append(bn.register_forward_hook(hook))

    def on_batch_end(self, trainer: pl.Trainer, initial: dict[str, dict[str, torch.Tensor]]) -> None:
        if not self._armed:
            return
        self._armed = False
        self.remove_hooks()
        rows = self._collect(trainer, initial)
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        values = rows.tolist()  # the one host synchronization of a logging step
        self.steps.append(int(step))
        self.history.append([v for row in values for v in row])
        if not trainer.is_global_zero:
            return
        metrics: dict[str, float] = {}
        for name, row in zip(self.layer_names, values):
            for stat, v in zip(STATS, row):
                if not math.isnan(v):
                    metrics[metric_key(name, stat)] = v
        for stat, v in summarize(torch.tensor(values, dtype=torch.float64).reshape(-1, len(STATS))).items():
            metrics[metric_key("all", stat)] = float(v)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        if self.histograms:
            from lightning_bninit import dashboards

            dashboards.log_histograms(trainer, self._layers, step)

    def end(self, trainer: pl.Trainer, initial: dict[str, dict[str, torch.Tensor]]) -> None:
        """End of fit: plots, console table and W&B summary (call on every rank: ``trainer.log_dir`` broadcasts)."""
        self.remove_hooks()
        if not self._layers:
            return
        log_dir = trainer.log_dir if trainer.loggers else None
        if not trainer.is_global_zero:
            return
        from lightning_bninit import dashboards, plots

        rows = self.summary_rows(initial)
        if self.console_summary:
            plots.print_summary(rows)
        images: dict[str, str] = {}
        if self.plots and self.steps and log_dir is not None:
            self.output_dir = os.path.join(str(log_dir), "bn_monitor")
            images = plots.save_plots(self.output_dir, self.steps, self.layer_names, self.series)
        dashboards.on_end(trainer, rows, images, self.steps, self.layer_names, self.series)

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # -- values -----------------------------------------------------------------------------------------------

    def _initial_for(self, name: str, bn: _BatchNorm, initial: dict[str, dict[str, torch.Tensor]]):
        cached = self._init_cache.get(name)
        if cached is None and name in initial:
            vals = initial[name]
            cached = (vals["scale"].to(bn.weight.device, torch.float32), vals["shift"].to(bn.bias.device, torch.float32))
            self._init_cache[name] = cached
        return cached

    def _collect(self, trainer: pl.Trainer, initial: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        device = next(iter(self._layers.values())).weight.device
        nan_p = torch.full((len(PARAM_STATS),), float("nan"), device=device)
        nan_x = torch.full((len(XHAT_STATS),), float("nan"), device=device)
        params, xhats = [], []
        for name, bn in self._layers.items():
            init = self._initial_for(name, bn, initial)
            if init is None or isinstance(bn.weight, nn.parameter.UninitializedParameter):
                params.append(nan_p)
            else:
                params.append(param_stats(bn.weight, bn.bias, *init).to(device))
            value = self._hooks[name].value
            xhats.append(nan_x if value is None else value.to(device))
            self._hooks[name].value = None
        p, x = torch.stack(params), torch.stack(xhats)
        if trainer.world_size > 1 and self._xhat_enabled:
            gathered = trainer.strategy.all_gather(x)  # [world, layers, 4]
            if gathered.dim() == 3:
                x = torch.stack([
                    gathered[:, :, 0].amax(0), gathered[:, :, 1].amax(0),
                    gathered[:, :, 2].mean(0), gathered[:, :, 3].amax(0),
                ], dim=1)
        return torch.cat([p, x], dim=1)

    def series(self, stat: str) -> list[list[float]]:
        """Per layer (network order), the values of ``stat`` at each logging step."""
        k, n = STATS.index(stat), len(STATS)
        return [[row[i * n + k] for row in self.history] for i in range(len(self.layer_names))]

    def summary_rows(self, initial: dict[str, dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
        """Per layer: ``layer``, ``init`` (mean initial scale), ``final_scale_mean``, ``scale_drift``, ``peak_xhat``."""
        rows = []
        for name, bn in self._layers.items():
            init = initial.get(name)
            row: dict[str, Any] = {"layer": name, "init": float("nan"), "final_scale_mean": float("nan"),
                                   "scale_drift": float("nan"), "peak_xhat": float("nan")}
            if init is not None and not isinstance(bn.weight, nn.parameter.UninitializedParameter):
                with torch.no_grad():
                    w = bn.weight.detach().float().cpu()
                    w0 = init["scale"].float().cpu()
                    row.update(init=float(w0.mean()), final_scale_mean=float(w.mean()),
                               scale_drift=float((w - w0).abs().mean()))
            rows.append(row)
        if self.history:
            peaks = [[v for v in s if not math.isnan(v)] for s in self.series("xhat_absmax")]
            for row, p in zip(rows, peaks):
                if p:
                    row["peak_xhat"] = max(p)
        return rows


MonitorArg = Union[bool, BNMonitor]


def make_monitor(monitor: MonitorArg) -> BNMonitor | None:
    if isinstance(monitor, BNMonitor):
        return monitor
    if isinstance(monitor, bool):
        return BNMonitor() if monitor else None
    raise ValueError(f"monitor must be True, False or a BNMonitor, got {type(monitor).__name__}: {monitor!r}.")


__all__ = [
    "ALL_MAX", "ALL_MEAN", "BNMonitor", "PARAM_STATS", "STATS", "XHAT_STATS", "is_logging_step", "make_monitor",
    "metric_key", "param_stats", "summarize", "xhat_stats",
]
