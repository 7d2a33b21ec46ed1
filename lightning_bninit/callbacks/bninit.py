"""BNInit: the method of Revisiting Batch Norm Initialization in any Lightning fit, with its BN monitor."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer
from typing_extensions import override

from lightning_bninit.callbacks.bn_monitor import BNMonitor, MonitorArg, make_monitor
from lightning_bninit.method.init import init_bn_
from lightning_bninit.method.input_norm import attach_input_norm, find_input_norm, infer_input_channels
from lightning_bninit.method.layers import find_bn_layers, is_at, is_materialized, param_roles
from lightning_bninit.method.settings import check_init_scale, check_patterns, check_scale_lr_divisor
from lightning_bninit.method.step_hooks import RevisedUpdate
from lightning_bninit.method.update import GroupSplitter, is_separable, unsupported_optimizer_message

PatternArg = Union[str, Sequence[str], None]
_log = logging.getLogger(__name__)


class BNInit(Callback):
    r"""Revisiting Batch Norm Initialization (Davis & Frank, ECCV 2022) for any Lightning training run.

    At ``setup`` of ``fit`` every batch-norm layer gets scale ``init_scale`` and shift 0. At each optimizer step, BN
    scales move by exactly what the user's optimizer would move them with its learning rate divided by
    ``scale_lr_divisor``, and BN scales and shifts get no weight decay. The user's model, ``configure_optimizers``
    and LR schedulers stay as they are: the result equals an optimizer built with
    :func:`~lightning_bninit.bn_param_groups` (three param groups), to float round-off.

    Args:
        init_scale: the initial BN scale (gamma), a finite number > 0. The paper suggests 0.1; 1.0 is PyTorch's
            default.
        scale_lr_divisor: ``c`` in the paper: BN scales step with the optimizer's learning rate divided by this
            finite number >= 1. 100 in the paper; 1 keeps the optimizer's learning rate.
        exempt_weight_decay: give BN scales and shifts no weight decay (coupled, as in SGD/Adam/RMSprop, or
            decoupled, as in AdamW).
        input_norm: add a BN layer on the raw input (scale ``init_scale * 0.58``, shift frozen at 0). ``True``
            normalizes the first argument of the LightningModule's own ``forward``; a string names the submodule
            (qualified name, e.g. ``"net"``) whose ``forward`` receives the images. The layer is registered in that
            module, so it is saved in checkpoints and trained by the user's optimizer.
        input_channels: channels of the input for ``input_norm``; by default from ``example_input_array`` or the
            first conv/linear layer of the normalized module.
        include: glob patterns (``fnmatch``) or compiled regular expressions on qualified module names
            (``"model.layer1.*"``); when given, only matching BN layers are treated.
        exclude: patterns of BN layers to leave entirely alone.
        force: re-initialize BN layers even when their parameters are not at PyTorch's default (scale 1, shift 0).
            By default such layers look pretrained: their values are kept (with one warning that lists them), and
            they still get the revised update.
        separable_optimizers: optimizer classes, beyond PyTorch's own, whose ``step`` updates each param group
            independently; only for these can the update be applied exactly.
        monitor: log per-layer BN statistics of the treated layers (scale/shift, drift from the initial values,
            normalized-activation magnitudes) to the Trainer's loggers, with a
            :class:`~lightning_bninit.BNMonitor`; ``False`` turns it off; a ``BNMonitor(...)`` sets its options
            (e.g. its own ``log_every_n_steps``). A ``BNMonitor`` given to the Trainer takes its place.

    Raises:
        ValueError: for an ``init_scale`` that is not a finite number > 0, a ``scale_lr_divisor`` that is not a
            finite number >= 1, or a pattern that is neither a string nor a compiled ``re.Pattern``.
        TypeError: at the start of fit, for an optimizer holding BN parameters whose update cannot be applied exactly
            (the message names it and the ways out).

    Example::

        from lightning.pytorch import Trainer
        from lightning_bninit import BNInit

        trainer = Trainer(callbacks=[BNInit()])  # init_scale=0.1, scale_lr_divisor=100
        trainer.fit(model)
    """

    def __init__(
        self,
        init_scale: float = 0.1,
        scale_lr_divisor: float = 100.0,
        exempt_weight_decay: bool = True,
        input_norm: Union[bool, str] = False,
        input_channels: Union[int, None] = None,
        include: PatternArg = None,
        exclude: PatternArg = None,
        force: bool = False,
        separable_optimizers: Sequence[type[Optimizer]] = (),
        monitor: MonitorArg = True,
    ) -> None:
        self.init_scale = check_init_scale(init_scale)
        self.scale_lr_divisor = check_scale_lr_divisor(scale_lr_divisor)
        self.exempt_weight_decay = bool(exempt_weight_decay)
        if not isinstance(input_norm, (bool, str)):
            raise ValueError(
                f"input_norm must be True, False or the qualified name of a submodule, got "
                f"{type(input_norm).__name__}: {input_norm!r}."
            )
        self.input_norm = input_norm
        if input_channels is not None and (isinstance(input_channels, bool) or not isinstance(input_channels, int)
                                           or input_channels < 1):
            raise ValueError(f"input_channels must be a positive int or None, got {input_channels!r}.")
        self.input_channels = input_channels
        self.include = check_patterns(include, "include")
        self.exclude = check_patterns(exclude, "exclude")
        self.force = bool(force)
        self.separable_optimizers = tuple(separable_optimizers)

        self._layer_names: list[str] = []
        self._initial: dict[str, dict[str, torch.Tensor]] = {}
        self._pending_lazy: list[str] = []
        self._update: RevisedUpdate | None = None
        self._monitor: BNMonitor | None = make_monitor(monitor)
        self._drives_monitor = False  # whether this callback calls its monitor's hooks (no other BNMonitor is given)

    @property
    def settings(self) -> dict[str, Any]:
        """The callback's settings, as plain values (saved in checkpoints and logged as run config)."""
        return {
            "init_scale": self.init_scale,
            "scale_lr_divisor": self.scale_lr_divisor,
            "exempt_weight_decay": self.exempt_weight_decay,
            "input_norm": self.input_norm,
            "include": [getattr(p, "pattern", p) for p in self.include],
            "exclude": [getattr(p, "pattern", p) for p in self.exclude],
            "force": self.force,
        }

    @property
    def layer_names(self) -> list[str]:
        """Qualified names of the BN layers this callback treats, in network order (after ``setup``)."""
        return list(self._layer_names)

    @property
    def initial_values(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per layer, the ``"scale"`` and ``"shift"`` at the start of fit (kept across a resume)."""
        return self._initial

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # The input BN is structure, not initialization: it is added for every stage so that a checkpoint trained
        # with it loads for validate/test/predict too. Only fit touches existing weights.
        if self.input_norm:
            self._attach_input_norm(pl_module)
        if stage != "fit":
            return
        input_norm = find_input_norm(self._input_module(pl_module)) if self.input_norm else None
        input_names = [n for n, m in pl_module.named_modules() if input_norm is not None and m is input_norm]
        layers = find_bn_layers(pl_module, self.include, (*self.exclude, *input_names))
        if not layers:
            rank_zero_warn(
                f"BNInit found no batch-norm layer with affine parameters in {type(pl_module).__name__}"
                f"{' matching include/exclude' if self.include or self.exclude else ''}; training continues unchanged."
            )
        report = init_bn_(pl_module, self.init_scale, include=self.include, exclude=(*self.exclude, *input_names),
                          force=self.force)
        # The input BN, asked for explicitly, is always treated (first, in network order); attach_input_norm already
        # set its values.
        layers = {**{name: input_norm for name in input_names}, **layers}
        already = [n for n in report.not_default if is_at(layers[n], self.init_scale)]
        pretrained = [n for n in report.not_default if n not in already]
        if pretrained:
            rank_zero_warn(
                f"BNInit left the values of {len(pretrained)} BN layer(s) alone because they are not at PyTorch's "
                f"default (scale 1, shift 0) and look pretrained or already initialized: {', '.join(pretrained)}. "
                "They still get the revised update. Pass BNInit(force=True) to re-initialize them too."
            )
        trainable = {n: bn for n, bn in layers.items() if n not in report.frozen}
        self._layer_names = list(trainable)
        self._initial = {n: _snapshot(bn) for n, bn in trainable.items() if is_materialized(bn)}
        self._pending_lazy = [n for n in trainable if n not in self._initial]
        splitter = GroupSplitter(param_roles(trainable.values()), self.scale_lr_divisor, self.exempt_weight_decay)
        # Deferred: Lightning splits in on_before_optimizer_step, see docs/design.md ("The step split").
        self._update = RevisedUpdate(splitter, deferred=True)
        self._setup_monitor(trainer, pl_module, stage)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._update is None:
            return
        for optimizer in trainer.optimizers:
            if not self._update.splitter.holds_bn_params(optimizer) or self._update.is_attached(optimizer):
                continue
            if not is_separable(optimizer, self.separable_optimizers):
                raise TypeError(unsupported_optimizer_message(optimizer))
            self._update.attach(optimizer)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        if self._update is not None:
            # LightningOptimizer wraps the optimizer whose hooks were registered.
            self._update.arm(optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._update is not None:
            self._update.disarm()  # a step the GradScaler skipped leaves nothing armed
        if self._pending_lazy:
            self._record_lazy_initial_values(pl_module)
        if self._drives_monitor:
            self._monitor.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)  # type: ignore[union-attr]

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._release(trainer)
        if self._drives_monitor:
            self._monitor.on_exception(trainer, pl_module, exception)  # type: ignore[union-attr]

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._release(trainer)
        if self._drives_monitor:
            self._monitor.teardown(trainer, pl_module, stage)  # type: ignore[union-attr]

    @override
    def state_dict(self) -> dict[str, Any]:
        # Plain containers of str/float/bool and tensors only: loadable with torch.load(weights_only=True).
        state = {
            "settings": self.settings,
            "layers": list(self._layer_names),
            "initial": {name: {k: v.detach().cpu() for k, v in vals.items()} for name, vals in self._initial.items()},
        }
        if self._drives_monitor:
            state["monitor"] = self._monitor.state_dict()  # type: ignore[union-attr]
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("settings", {})
        changed = {k: (v, self.settings[k]) for k, v in saved.items() if k in self.settings and self.settings[k] != v}
        if changed:
            rank_zero_warn(
                "BNInit is resuming from a checkpoint made with other settings; continuing with the current ones: "
                + ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            )
        # The values at the start of the original fit, so drift stays relative to them after a resume.
        self._initial = {name: dict(vals) for name, vals in state_dict.get("initial", {}).items()}
        if self._monitor is not None and "monitor" in state_dict:
            self._monitor.load_state_dict(state_dict["monitor"])

    def _release(self, trainer: pl.Trainer) -> None:
        if self._update is not None:
            self._update.detach(trainer.optimizers)

    def _input_module(self, pl_module: pl.LightningModule) -> torch.nn.Module:
        if isinstance(self.input_norm, str):
            try:
                return pl_module.get_submodule(self.input_norm)
            except AttributeError as err:
                names = [n for n, _ in pl_module.named_children()]
                raise ValueError(
                    f"BNInit(input_norm={self.input_norm!r}): {type(pl_module).__name__} has no submodule of that "
                    f"name; pass True for the LightningModule's own forward or one of its submodules, e.g. {names}."
                ) from err
        return pl_module

    def _attach_input_norm(self, pl_module: pl.LightningModule) -> None:
        module = self._input_module(pl_module)
        if find_input_norm(module) is not None:
            return
        channels = self.input_channels
        if channels is None:
            channels = infer_input_channels(module, getattr(pl_module, "example_input_array", None))
            if channels is None:
                raise ValueError(
                    f"BNInit(input_norm={self.input_norm!r}) cannot tell how many channels the input of "
                    f"{type(module).__name__} has: set BNInit(input_channels=...) or the LightningModule's "
                    "example_input_array."
                )
            _info(f"BNInit: input BN on {type(module).__name__} with {channels} channels.")
        attach_input_norm(module, channels, self.init_scale)

    def _record_lazy_initial_values(self, pl_module: pl.LightningModule) -> None:
        # Lazy layers materialize on their first forward, after setup, and are then set to (init_scale, 0) by the
        # hook init_bn_ left on them; their values may have moved since, so record what they were set to.
        pending = []
        for name in self._pending_lazy:
            if name in self._initial:  # restored from a checkpoint
                continue
            bn = pl_module.get_submodule(name)
            if isinstance(bn, _BatchNorm) and is_materialized(bn):
                self._initial[name] = {
                    "scale": torch.full_like(bn.weight, self.init_scale).detach(),
                    "shift": torch.zeros_like(bn.bias).detach(),
                }
            else:
                pending.append(name)
        self._pending_lazy = pending


    # -- the BN monitor and the loggers ------------------------------------------------------------------------------

    @property
    def monitor(self) -> BNMonitor | None:
        """The :class:`~lightning_bninit.BNMonitor` of this callback (``None`` with ``monitor=False``)."""
        return self._monitor

    def _setup_monitor(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # A BNMonitor given to the Trainer does the monitoring (Lightning calls its hooks); this callback's own
        # monitor then stays idle, so nothing is logged twice.
        given = [cb for cb in trainer.callbacks if isinstance(cb, BNMonitor)]  # type: ignore[attr-defined]
        self._drives_monitor = self._monitor is not None and not given
        if self._monitor is not None and (self._drives_monitor or self._monitor in given):
            self._monitor.assign(self._layer_names, self._initial)
        if self._drives_monitor:
            self._monitor.setup(trainer, pl_module, stage)  # type: ignore[union-attr]

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_hyperparams({"bninit": self.settings})
        if self._drives_monitor:
            self._monitor.on_train_start(trainer, pl_module)  # type: ignore[union-attr]

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._drives_monitor:
            self._monitor.on_train_batch_start(trainer, pl_module, batch, batch_idx)  # type: ignore[union-attr]

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._drives_monitor:
            self._monitor.on_train_end(trainer, pl_module)  # type: ignore[union-attr]


@rank_zero_only
def _info(message: str) -> None:
    _log.info(message)


def _snapshot(bn: _BatchNorm) -> dict[str, torch.Tensor]:
    return {"scale": bn.weight.detach().clone(), "shift": bn.bias.detach().clone()}


__all__ = ["BNInit"]
