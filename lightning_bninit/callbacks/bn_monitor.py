"""BNMonitor: per-layer BN statistics (drift from the start of fit, normalized-activation magnitudes) to every logger."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_bninit import _extras, compat
from lightning_bninit.method.input_norm import InputNorm
from lightning_bninit.method.layers import find_bn_layers
from lightning_bninit.method.settings import Patterns, check_bool, check_patterns
from lightning_bninit.monitoring import console, functional, tensorboard_panels, wandb_panels
from lightning_bninit.monitoring.functional import XhatCapture
from lightning_bninit.monitoring.history import MonitorHistory
from lightning_bninit.monitoring.snapshot import snapshot_missing
from lightning_bninit.monitoring.stats import (
    DEFAULT_BOUND_RATIO, DEFAULT_SCALE_COLLAPSE, PARAM_STATS, alert_flags, layer_labels,
)

_log = logging.getLogger(__name__)
InitialValues = dict[str, dict[str, torch.Tensor]]


class BNMonitor(Callback):
    r"""Logs per-layer batch-norm statistics of any model through every logger of the Trainer.

    Every ``log_every_n_steps`` optimizer steps, per BN layer: by default its scale drift relative to the start of
    fit, mean |γ − γ₀| / mean |γ₀| (``bn_scale_drift_rel/<label>``, kept across resumes), its peak normalized
    activation against the bound, max |x̂| / sqrt(m − 1) (``bn_xhat_bound_ratio/<label>``), and its shift drift
    (``bn_shift_drift/<label>``); network summaries ``bn/all/*``; ``full=True`` logs every statistic (keys:
    ``docs/design.md``). ``<label>`` is the layer's position in network order and its name without dots
    (``07_layer1_0_bn1``), so W&B and TensorBoard show one section per statistic, its layers in network order. Every
    ``refresh_every`` logging steps, layer × step heat maps of drift / γ₀ and of the bound ratio (W&B, TensorBoard)
    and W&B charts with a line per layer; with a ``TensorBoardLogger`` a custom-scalars layout with one multi-line
    chart per statistic. A layer whose ratio reaches ``alert_bound_ratio`` or whose largest |γ| falls below
    ``alert_scale_collapse`` times its mean |γ₀| gets one warning and a ``bn_alert/<label>/...`` flag. At the end of
    fit, or when it stops on an exception or Ctrl-C: PNG figures and ``summary.csv`` in ``bn_monitor/`` of the
    logger's run folder, the summary table (worst layers first) at INFO, and the table and figures in W&B and
    TensorBoard. It changes nothing in training. Used on its own, it watches every BN layer with affine parameters;
    :class:`~lightning_bninit.BNInit` runs one by default on the layers it treats (``BNInit(monitor=BNMonitor(...))``
    sets its options); a ``BNMonitor`` given to the Trainer next to a ``BNInit`` takes over from the callback's own.

    Args:
        log_every_n_steps: monitor every this many optimizer steps; ``None`` (default) uses the Trainer's
            ``log_every_n_steps``. 0 logs nothing during training.
        activations: also measure x̂ (forward hooks, on logging steps only); ``False`` logs parameter statistics only.
        full: log every statistic of every layer (12 more keys a layer), not only the compact three.
        histograms: per-layer histograms of scale and shift on each logging step (W&B, TensorBoard); ``None``
            (default): with ``full``.
        plots: write the PNG figures and draw the live heat maps. ``None`` (default): when matplotlib is installed.
        console_summary: log the summary table at the end of fit.
        refresh_every: redraw the live heat maps and by-layer charts every this many logging steps (0: only at the
            end of fit).
        alert_bound_ratio: warn once and flag a layer whose peak |x̂| / sqrt(m − 1) reaches this value (default 0.8).
        alert_scale_collapse: warn once and flag a layer whose largest |γ| falls below this fraction of its mean
            |γ₀| (default 0.1).
        include: glob patterns or compiled regular expressions of the BN layers to watch (default: all).
        exclude: patterns of BN layers not to watch.

    Raises:
        ValueError: for a ``log_every_n_steps`` or ``refresh_every`` that is not an int >= 0 (or ``None``), a
            threshold that is not a number >= 0, a ``bool`` option that is not ``True`` or ``False`` (``plots`` and
            ``histograms`` also take ``None``), a bad pattern, or, at setup, a second ``BNMonitor`` on the same
            Trainer (both would log the same keys).
        ImportError: for ``plots=True`` without matplotlib (the message names the extra to install).

    Example::

        from lightning.pytorch import Trainer
        from lightning_bninit import BNMonitor

        trainer = Trainer(callbacks=[BNMonitor()], log_every_n_steps=50)
        trainer.fit(model)   # bn_scale_drift_rel/<label>, bn_xhat_bound_ratio/<label>, bn/all/... in every logger
    """

    def __init__(
        self,
        log_every_n_steps: Union[int, None] = None,
        activations: bool = True,
        full: bool = False,
        histograms: Union[bool, None] = None,
        plots: Union[bool, None] = None,
        console_summary: bool = True,
        refresh_every: int = 10,
        alert_bound_ratio: float = DEFAULT_BOUND_RATIO,
        alert_scale_collapse: float = DEFAULT_SCALE_COLLAPSE,
        include: Patterns = None,
        exclude: Patterns = None,
    ) -> None:
        for name, value in (("log_every_n_steps", log_every_n_steps), ("refresh_every", refresh_every)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be an int >= 0{' or None' if name[0] == 'l' else ''}, got {value!r}.")
        for name, value in (("alert_bound_ratio", alert_bound_ratio), ("alert_scale_collapse", alert_scale_collapse)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}.")
        plots = None if plots is None else check_bool(plots, "plots")
        histograms = None if histograms is None else check_bool(histograms, "histograms")
        if plots is True and not _extras.available("matplotlib"):
            raise _extras.MissingExtraError(_extras.message("matplotlib", "BNMonitor(plots=True)"))
        self.log_every_n_steps = log_every_n_steps
        self.activations = check_bool(activations, "activations")
        self.full = check_bool(full, "full")
        self.histograms = self.full if histograms is None else histograms
        self.plots = _extras.available("matplotlib") if plots is None else plots
        self.console_summary = check_bool(console_summary, "console_summary")
        self.refresh_every = refresh_every
        self.alert_bound_ratio = float(alert_bound_ratio)
        self.alert_scale_collapse = float(alert_scale_collapse)
        self.include = check_patterns(include, "include")
        self.exclude = check_patterns(exclude, "exclude")

        self.history = MonitorHistory()
        self.output_dir: str | None = None
        self._layers: dict[str, _BatchNorm] = {}
        self._labels: list[str] = []
        self._capture = XhatCapture([])
        self._handles: list[RemovableHandle] = []
        self._armed = False
        self._finished = False
        self._xhat_enabled = self.activations
        self._initial: InitialValues = {}
        self._alerted: dict[str, set[str]] = {"near_bound": set(), "scale_collapse": set()}
        self._assigned: tuple[list[str], InitialValues] | None = None
        self._restored: dict[str, Any] | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """The monitor's settings, as plain values (logged as hyperparameters)."""
        return {
            "log_every_n_steps": self.log_every_n_steps,
            "activations": self.activations,
            "full": self.full,
            "histograms": self.histograms,
            "plots": self.plots,
            "console_summary": self.console_summary,
            "refresh_every": self.refresh_every,
            "alert_bound_ratio": self.alert_bound_ratio,
            "alert_scale_collapse": self.alert_scale_collapse,
            "include": [getattr(p, "pattern", p) for p in self.include],
            "exclude": [getattr(p, "pattern", p) for p in self.exclude],
        }

    @property
    def layer_names(self) -> list[str]:
        """Qualified names of the watched BN layers, in network order (from the start of fit)."""
        return list(self.history.layer_names)

    @property
    def layer_labels(self) -> list[str]:
        """The layers' labels in the logged keys (``bn_<stat>/<label>``), in the order of :attr:`layer_names`."""
        return self.history.labels

    @property
    def state_key(self) -> str:
        # The settings that decide what is recorded, as Lightning's own callbacks key on theirs; not the output
        # options (full, plots, histograms, alerts, console summary), and not `plots` resolved from whether
        # matplotlib is installed: a checkpoint resumed with other output options or on another machine keeps its
        # history.
        recorded = ("log_every_n_steps", "activations", "include", "exclude")
        return self._generate_state_key(**{k: self.settings[k] for k in recorded})

    def _assign(self, layer_names: Sequence[str], initial: InitialValues) -> None:
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
        self._labels = layer_labels(list(self._layers))
        self._capture = XhatCapture(list(self._layers))
        self._start_history(initial)
        self._finished = False
        self._alerted = {"near_bound": set(), "scale_collapse": set()}
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
                self._handles.append(bn.register_forward_hook(self._capture.hooks[name]))

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._armed:
            return
        self._armed = False
        self.remove_hooks()
        step = compat.batches_that_stepped(trainer)
        values = self._measure(trainer).tolist()  # the one host synchronization of a logging step
        self.history.append(step, values)
        self._note_initial_scales()
        if trainer.is_global_zero:
            self._log_step(trainer, step, values)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.remove_hooks()
        self._finish(trainer, interrupted=None)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # What was recorded up to the exception (or Ctrl-C) is written as at the end of fit; a failure here must not
        # hide the exception that stopped training, so it becomes a warning.
        self.remove_hooks()
        self._armed = False
        try:
            self._finish(trainer, interrupted=exception)
        except Exception as err:  # noqa: BLE001
            rank_zero_warn(f"BNMonitor: could not write the end-of-run output after {type(exception).__name__}: "
                           f"{type(err).__name__}: {err}")

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

    # -- steps (every rank: under DDP they compute the same) -------------------------------------------------------

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
        if initial is not None:  # the owner's values (BNInit), which it completes itself for lazy layers
            self._initial = initial
        else:  # the recorded values of a resumed run, else the values now (lazy layers: after their first forward)
            self._initial = {n: dict(v) for n, v in restored.get("initial", {}).items()}
            snapshot_missing(self._layers, self._initial)
        self._note_initial_scales()

    def _note_initial_scales(self) -> None:
        for name, vals in list(self._initial.items()):
            if name not in self.history.initial_scale:
                self.history.initial_scale[name] = float(vals["scale"].float().mean())

    def _is_logging_step(self, trainer: pl.Trainer) -> bool:
        # Lightning's rule (LoggerConnector.should_update_logs) without its `should_stop` clause: the decision must be
        # the same on every rank, since logging steps run a collective under DDP.
        every = compat.log_every_n_steps(trainer) if self.log_every_n_steps is None else self.log_every_n_steps
        if every <= 0 or compat.should_accumulate(trainer):
            return False
        return (compat.batches_that_stepped(trainer) + 1) % every == 0

    def _measure(self, trainer: pl.Trainer) -> torch.Tensor:
        """``[layers, len(STATS)]`` on the layers' device (:func:`functional.update`); x̂ reduced over ranks."""
        xhat = self._capture.take() if self._xhat_enabled else None
        gather = trainer.strategy.all_gather if trainer.world_size > 1 else None
        return functional.update(self._layers, self._initial, xhat, gather)

    def _finish(self, trainer: pl.Trainer, interrupted: BaseException | None) -> None:
        if self._finished or not self._layers:
            return
        self._finished = True
        final = functional.update(self._layers, self._initial, None)[:, : len(PARAM_STATS)].tolist()
        self.history.final = dict(zip(self._layers, final))
        if trainer.is_global_zero:
            self._log_end(trainer, interrupted)

    # -- output (global rank zero only) ----------------------------------------------------------------------------

    def _log_start(self, trainer: pl.Trainer) -> None:
        labels = dict(zip(self._labels, self._layers))
        for logger in trainer.loggers:
            logger.log_hyperparams({"bn_monitor": {**self.settings, "layers": labels}})
            if wandb_panels.is_wandb_logger(logger):
                wandb_panels.define_peak_summaries(logger, self._labels)
            if tensorboard_panels.is_tensorboard_logger(logger):
                tensorboard_panels.add_layout(logger, self.full)

    def _log_step(self, trainer: pl.Trainer, step: int, values: list[list[float]]) -> None:
        metrics: dict[str, Any] = functional.compute(
            self._labels, values, full=self.full, bound_ratio=self.alert_bound_ratio,
            scale_collapse=self.alert_scale_collapse,
        )
        metrics.update(self._alerts(values))
        refresh = bool(self.refresh_every) and len(self.history.steps) % self.refresh_every == 0
        drawn = any(wandb_panels.is_wandb_logger(lg) or tensorboard_panels.is_tensorboard_logger(lg)
                    for lg in trainer.loggers)
        heatmaps = self._heatmaps() if refresh and drawn else {}  # only for the loggers that show images
        for logger in trainer.loggers:
            payload = metrics
            if wandb_panels.is_wandb_logger(logger):  # one W&B history row per step
                payload = {**metrics, **(wandb_panels.histograms(self._layers, self._labels) if self.histograms
                                         else {})}
                if refresh:
                    payload.update(wandb_panels.live_panels(self.history, heatmaps))
            logger.log_metrics(payload, step=step)
            if tensorboard_panels.is_tensorboard_logger(logger):
                if self.histograms:
                    tensorboard_panels.add_histograms(logger, self._layers, self._labels, step)
                tensorboard_panels.add_images(logger, heatmaps, step)

    def _alerts(self, values: list[list[float]]) -> dict[str, float]:
        """``bn_alert/<label>/near_bound`` or ``/scale_collapse`` = 1 on the step a layer first crosses its
        threshold, with one warning per layer."""
        near, collapsed = alert_flags(values, self.alert_bound_ratio, self.alert_scale_collapse)
        why = {"near_bound": f"its peak |x̂| reached {self.alert_bound_ratio:g} of its bound sqrt(m - 1)",
               "scale_collapse": f"its largest |γ| fell below {self.alert_scale_collapse:g} of its mean |γ₀|"}
        flags: dict[str, float] = {}
        for kind, crossed in (("near_bound", near), ("scale_collapse", collapsed)):
            for name, label, flag in zip(self._layers, self._labels, crossed):
                if flag and name not in self._alerted[kind]:
                    self._alerted[kind].add(name)
                    flags[f"bn_alert/{label}/{kind}"] = 1.0
                    rank_zero_warn(f"BNMonitor: BN layer {name!r} at step {self.history.steps[-1]}: {why[kind]}.")
        return flags

    def _heatmaps(self) -> dict[str, Any]:
        if not (self.plots and self.history.steps):
            return {}
        from lightning_bninit.monitoring.plots import heatmap_rgb

        stats = [s for s in wandb_panels.HEATMAP_STATS if any(not math.isnan(v) for v in self.history.peaks(s))]
        return {stat: heatmap_rgb(self.history, stat) for stat in stats}

    def _log_end(self, trainer: pl.Trainer, interrupted: BaseException | None) -> None:
        rows = self.history.summary_rows()
        if self.console_summary:
            title = console.TITLE if interrupted is None else (
                f"{console.TITLE} (stopped by {type(interrupted).__name__} after step "
                f"{self.history.steps[-1] if self.history.steps else '-'})")
            _info(console.format_summary(rows, title=title))
        folder = run_folder(trainer.loggers)
        images: dict[str, str] = {}
        if folder is not None:
            self.output_dir = os.path.join(folder, "bn_monitor")
            console.write_csv(os.path.join(self.output_dir, "summary.csv"), rows)
            if self.plots and self.history.steps:
                from lightning_bninit.monitoring.plots import save_plots

                images = save_plots(self.output_dir, self.history, self.alert_bound_ratio)
        step = self.history.steps[-1] if self.history.steps else 0
        for logger in trainer.loggers:
            if wandb_panels.is_wandb_logger(logger):
                logger.log_metrics(wandb_panels.end_of_fit_panels(self.history, images, self.full), step=step)
            if tensorboard_panels.is_tensorboard_logger(logger):
                tensorboard_panels.add_images(logger, self._heatmaps(), step)
                tensorboard_panels.add_images(logger, _read_pngs(images), step, section="bn_plots")
                tensorboard_panels.add_summary(logger, console.format_markdown(rows), step)


def run_folder(loggers: Sequence[Any]) -> str | None:
    """The first logger's own run folder: the W&B run's directory, else the logger's ``log_dir``; ``None`` when no
    logger has one (nothing is then written to disk: a folder shared by runs would be overwritten)."""
    for logger in loggers:
        if wandb_panels.is_wandb_logger(logger):
            return str(logger.experiment.dir)
        log_dir = getattr(logger, "log_dir", None)
        if log_dir:
            return str(log_dir)
    return None


def _read_pngs(images: dict[str, str]) -> dict[str, Any]:
    if not images:
        return {}
    import matplotlib.image

    return {key: (matplotlib.image.imread(path)[..., :3] * 255).astype("uint8") for key, path in images.items()}


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
