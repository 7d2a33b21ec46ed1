"""BNMonitor: per-layer BN statistics (drift from the start of fit, normalized-activation magnitudes) to every logger."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_bninit import _extras, compat
from lightning_bninit.method.input_norm import InputNorm
from lightning_bninit.method.layers import find_bn_layers, is_materialized
from lightning_bninit.method.settings import Patterns, check_bool, check_patterns
from lightning_bninit.monitoring import console, wandb_panels
from lightning_bninit.monitoring.history import MonitorHistory
from lightning_bninit.monitoring.hooks import XhatHook
from lightning_bninit.monitoring.stats import (
    PARAM_STATS, XHAT_STATS, param_stats, reduce_over_ranks, to_metrics,
)

_log = logging.getLogger(__name__)
InitialValues = dict[str, dict[str, torch.Tensor]]


class BNMonitor(Callback):
    r"""Logs per-layer batch-norm statistics of any model through every logger of the Trainer.

    Per BN layer, every ``log_every_n_steps`` optimizer steps: scale and shift statistics, their drift from the values
    at the start of fit (kept across resumes), and the magnitude of the normalized activations x̂ against the bound
    ``sqrt(m - 1)`` (the keys: ``docs/design.md``). At the end of fit: PNG plots under ``<log_dir>/bn_monitor/``, a
    summary table (logged at INFO), and W&B panels with a ``WandbLogger``. It changes nothing in training. Used on its
    own, it watches every BN layer with affine parameters; :class:`~lightning_bninit.BNInit` runs one by default on
    the layers it treats (``BNInit(monitor=BNMonitor(...))`` sets its options). A ``BNMonitor`` given to the Trainer
    next to a ``BNInit`` takes over from the callback's own, so nothing is logged twice.

    Args:
        log_every_n_steps: monitor every this many optimizer steps; ``None`` (default) uses the Trainer's
            ``log_every_n_steps``. 0 logs nothing during training.
        activations: also measure x̂ (forward hooks, on logging steps only); ``False`` logs parameter statistics only.
        histograms: with a ``WandbLogger``, log per-layer histograms of scale and shift on each logging step.
        plots: write the PNG plots at the end of fit. ``None`` (default): when matplotlib is installed.
        console_summary: log the summary table at the end of fit.
        include: glob patterns or compiled regular expressions of the BN layers to watch (default: all).
        exclude: patterns of BN layers not to watch.

    Raises:
        ValueError: for a ``log_every_n_steps`` that is not an int >= 0 or ``None``, a ``bool`` option that is not
            ``True`` or ``False`` (``plots`` also takes ``None``), a bad pattern, or, at setup, a second ``BNMonitor``
            on the same Trainer (both would log the same keys).
        ImportError: for ``plots=True`` without matplotlib (the message names the extra to install).

    Example::

        from lightning.pytorch import Trainer
        from lightning_bninit import BNMonitor

        trainer = Trainer(callbacks=[BNMonitor()], log_every_n_steps=50)
        trainer.fit(model)   # bn/<layer>/scale_drift, bn/<layer>/xhat_absmax, ... in every logger
    """

    def __init__(
        self,
        log_every_n_steps: Union[int, None] = None,
        activations: bool = True,
        histograms: bool = True,
        plots: Union[bool, None] = None,
        console_summary: bool = True,
        include: Patterns = None,
        exclude: Patterns = None,
    ) -> None:
        if log_every_n_steps is not None and (
            isinstance(log_every_n_steps, bool) or not isinstance(log_every_n_steps, int) or log_every_n_steps < 0
        ):
            raise ValueError(f"log_every_n_steps must be an int >= 0 or None, got {log_every_n_steps!r}.")
        plots = None if plots is None else check_bool(plots, "plots")
        if plots is True and not _extras.available("matplotlib"):
            raise _extras.MissingExtraError(_extras.message("matplotlib", "BNMonitor(plots=True)"))
        self.log_every_n_steps = log_every_n_steps
        self.activations = check_bool(activations, "activations")
        self.histograms = check_bool(histograms, "histograms")
        self.plots = _extras.available("matplotlib") if plots is None else plots
        self.console_summary = check_bool(console_summary, "console_summary")
        self.include = check_patterns(include, "include")
        self.exclude = check_patterns(exclude, "exclude")

        self.history = MonitorHistory()
        self.output_dir: str | None = None
        self._layers: dict[str, _BatchNorm] = {}
        self._xhat_hooks: dict[str, XhatHook] = {}
        self._handles: list[RemovableHandle] = []
        self._armed = False
        self._xhat_enabled = self.activations
        self._initial: InitialValues = {}
        self._initial_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._assigned: tuple[list[str], InitialValues] | None = None
        self._restored: dict[str, Any] | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """The monitor's settings, as plain values (logged as hyperparameters)."""
        return {
            "log_every_n_steps": self.log_every_n_steps,
            "activations": self.activations,
            "histograms": self.histograms,
            "plots": self.plots,
            "console_summary": self.console_summary,
            "include": [getattr(p, "pattern", p) for p in self.include],
            "exclude": [getattr(p, "pattern", p) for p in self.exclude],
        }

    @property
    def layer_names(self) -> list[str]:
        """Qualified names of the watched BN layers, in network order (from the start of fit)."""
        return list(self.history.layer_names)

    @property
    def state_key(self) -> str:
        # The settings that decide what is recorded, as Lightning's own callbacks key on theirs; not the output
        # options (plots, histograms, console summary), and not `plots` resolved from whether matplotlib is
        # installed: a checkpoint resumed with other output options or on another machine keeps its history.
        recorded = ("log_every_n_steps", "activations", "include", "exclude")
        return self._generate_state_key(**{k: self.settings[k] for k in recorded})

    def assign(self, layer_names: Sequence[str], initial: InitialValues) -> None:
        """Watch these layers, with drift measured from ``initial`` (a dict the caller may fill in later, e.g. for
        lazy layers). Called by :class:`~lightning_bninit.BNInit` for its own monitor, before the start of fit."""
        self._assigned = (list(layer_names), initial)

    # -- hooks -----------------------------------------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        monitors = [cb for cb in trainer.callbacks if isinstance(cb, BNMonitor)]  # type: ignore[attr-defined]
        if len(monitors) > 1:
            raise ValueError(
                f"{len(monitors)} BNMonitor callbacks were given to the Trainer; they would log the same keys "
                "twice. Keep one (its arguments set what it logs)."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Modules are looked up by name here, not at setup: DDP's SyncBatchNorm conversion replaces them in between.
        names, initial = self._assigned if self._assigned is not None else (self._discover(pl_module), None)
        modules = dict(pl_module.named_modules())
        self._layers = {n: modules[n] for n in names if isinstance(modules.get(n), _BatchNorm)}
        self._xhat_hooks = {n: XhatHook() for n in self._layers}
        self._start_history(initial)
        self._xhat_enabled = self.activations
        if self.activations and self._layers and compat.is_compiled(pl_module):
            self._xhat_enabled = False
            rank_zero_warn(
                "BNMonitor: the model is compiled with torch.compile, so the normalized-activation statistics "
                "(xhat_*, out_absmax) are not measured (forward hooks would force recompilations); the scale/shift "
                "statistics and drift are still logged. Pass BNMonitor(activations=False) (or "
                "BNInit(monitor=BNMonitor(activations=False))) to silence this warning."
            )
        if trainer.is_global_zero and self._layers:
            self._log_start(trainer)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._armed = bool(self._layers) and bool(trainer.loggers) and self._is_logging_step(trainer)
        if self._armed and self._xhat_enabled:
            for name, bn in self._layers.items():
                self._handles.append(bn.register_forward_hook(self._xhat_hooks[name]))

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._armed:
            return
        self._armed = False
        self.remove_hooks()
        step = compat.batches_that_stepped(trainer)
        values = self._collect(trainer).tolist()  # the one host synchronization of a logging step
        self.history.append(step, values)
        if trainer.is_global_zero:
            self._log_step(trainer, step, values)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.remove_hooks()
        if not self._layers:
            return
        self.history.final = {name: self._param_row(name, bn).tolist() for name, bn in self._layers.items()}
        log_dir = trainer.log_dir if trainer.loggers else None  # every rank: log_dir broadcasts
        if trainer.is_global_zero:
            self._log_end(trainer, log_dir)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.remove_hooks()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.remove_hooks()

    @override
    def state_dict(self) -> dict[str, Any]:
        # Plain containers and tensors only: loadable with torch.load(weights_only=True).
        return {
            "settings": self.settings,
            "history": self.history.state_dict(),
            "initial": {n: {k: v.detach().cpu() for k, v in vals.items()} for n, vals in self._initial.items()},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict  # applied at the start of fit, once the layers are known

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # -- steps -----------------------------------------------------------------------------------------------------

    def _discover(self, pl_module: pl.LightningModule) -> list[str]:
        layers = find_bn_layers(pl_module, self.include, self.exclude)
        return sorted(layers, key=lambda n: not isinstance(layers[n], InputNorm))  # the input BN first, as BNInit

    def _start_history(self, initial: InitialValues | None) -> None:
        names = list(self._layers)
        restored = self._restored or {}
        self._restored = None
        history = MonitorHistory.from_state_dict(restored.get("history", {}))
        self.history = history if history.layer_names == names else MonitorHistory(layer_names=names)
        if history.layer_names and history.layer_names != names:
            rank_zero_warn("BNMonitor: the checkpoint's history is of other BN layers; starting a new one.")
        self.history.final = {}
        self._initial_cache = {}
        if initial is not None:  # the owner's values (BNInit), which it completes itself for lazy layers
            self._initial = initial
        else:
            self._initial = {n: dict(v) for n, v in restored.get("initial", {}).items()}
            for name, bn in self._layers.items():
                if name in self._initial:
                    continue
                if is_materialized(bn):
                    self._initial[name] = {"scale": bn.weight.detach().clone(), "shift": bn.bias.detach().clone()}
                else:
                    self._record_after_materialization(name, bn)
        for name, vals in self._initial.items():
            self.history.initial_scale.setdefault(name, float(vals["scale"].float().mean()))

    def _record_after_materialization(self, name: str, bn: _BatchNorm) -> None:
        # A lazy layer gets its parameters (and BNInit its values) in forward pre-hooks; record them after that forward.
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            handle.remove()
            if name not in self._initial:
                self._initial[name] = {"scale": bn.weight.detach().clone(), "shift": bn.bias.detach().clone()}

        handle = bn.register_forward_hook(hook)

    def _is_logging_step(self, trainer: pl.Trainer) -> bool:
        # Lightning's rule (LoggerConnector.should_update_logs) without its `should_stop` clause: the decision must be
        # the same on every rank, since logging steps run a collective under DDP.
        every = compat.log_every_n_steps(trainer) if self.log_every_n_steps is None else self.log_every_n_steps
        if every <= 0 or compat.should_accumulate(trainer):
            return False
        return (compat.batches_that_stepped(trainer) + 1) % every == 0

    def _initial_for(self, name: str, bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor] | None:
        cached = self._initial_cache.get(name)
        if cached is None and name in self._initial:
            vals = self._initial[name]
            cached = (vals["scale"].to(bn.weight.device, torch.float32), vals["shift"].to(bn.bias.device, torch.float32))
            self._initial_cache[name] = cached
            self.history.initial_scale.setdefault(name, float(cached[0].mean()))
        return cached

    def _param_row(self, name: str, bn: _BatchNorm) -> torch.Tensor:
        init = self._initial_for(name, bn)
        if init is None or not is_materialized(bn):
            return torch.full((len(PARAM_STATS),), float("nan"))
        return param_stats(bn.weight, bn.bias, *init)

    def _collect(self, trainer: pl.Trainer) -> torch.Tensor:
        """``[layers, len(STATS)]`` on the layers' device; x̂ statistics reduced over ranks under DDP."""
        device = next(iter(self._layers.values())).weight.device
        nan_x = torch.full((len(XHAT_STATS),), float("nan"), device=device)
        params = [self._param_row(name, bn).to(device) for name, bn in self._layers.items()]
        xhats = []
        for name in self._layers:
            value = self._xhat_hooks[name].take()
            xhats.append(nan_x if value is None else value.to(device))
        x = torch.stack(xhats)
        if trainer.world_size > 1 and self._xhat_enabled:
            gathered = trainer.strategy.all_gather(x)  # [world, layers, 4]
            if gathered.dim() == 3:
                x = reduce_over_ranks(gathered)
        return torch.cat([torch.stack(params), x], dim=1)

    # -- output (global rank zero only) ----------------------------------------------------------------------------

    def _log_start(self, trainer: pl.Trainer) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams({"bn_monitor": self.settings})
            if wandb_panels.is_wandb_logger(logger):
                wandb_panels.define_peak_summaries(logger, self.history.layer_names)

    def _log_step(self, trainer: pl.Trainer, step: int, values: list[list[float]]) -> None:
        metrics: dict[str, Any] = to_metrics(list(self._layers), values)
        for logger in trainer.loggers:
            payload = metrics
            if self.histograms and wandb_panels.is_wandb_logger(logger):
                payload = {**metrics, **wandb_panels.histograms(self._layers)}  # one W&B history row per step
            logger.log_metrics(payload, step=step)

    def _log_end(self, trainer: pl.Trainer, log_dir: str | None) -> None:
        if self.console_summary:
            _info(console.format_summary(self.history.summary_rows()))
        images: dict[str, str] = {}
        if self.plots and self.history.steps and log_dir is not None:
            from lightning_bninit.monitoring.plots import save_plots

            self.output_dir = os.path.join(str(log_dir), "bn_monitor")
            images = save_plots(self.output_dir, self.history)
        for logger in trainer.loggers:
            if wandb_panels.is_wandb_logger(logger):
                step = self.history.steps[-1] if self.history.steps else 0
                logger.log_metrics(wandb_panels.end_of_fit_panels(self.history, images), step=step)


@rank_zero_only
def _info(message: str) -> None:
    _log.info(message)


MonitorArg = Union[bool, BNMonitor]


def make_monitor(monitor: MonitorArg) -> BNMonitor | None:
    if isinstance(monitor, BNMonitor):
        return monitor
    if isinstance(monitor, bool):
        return BNMonitor() if monitor else None
    raise ValueError(f"monitor must be True, False or a BNMonitor, got {type(monitor).__name__}: {monitor!r}.")


__all__ = ["BNMonitor", "MonitorArg", "make_monitor"]
