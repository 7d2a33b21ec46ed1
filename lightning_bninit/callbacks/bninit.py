"""BNInit: the method of Revisiting Batch Norm Initialization in any Lightning fit, with its BN monitor."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.optim import Optimizer
from typing_extensions import override

from lightning_bninit.callbacks.bn_monitor import BNMonitor, MonitorArg, make_monitor
from lightning_bninit.method.schedules import cyclic_schedule_warning
from lightning_bninit.method.settings import ExemptWeightDecay, MethodSettings, Pattern
from lightning_bninit.method.step_hooks import RevisedUpdate
from lightning_bninit.method.application import BNINIT, MethodApplication, add_input_norm, apply_method

PatternArg = Union[str, Sequence[str], None]
_log = logging.getLogger(__name__)
#: 0.2 stored the state under "BNInit" followed by the settings; 0.1 and 0.3 under Lightning's default, "BNInit".
STATE_KEY_0_2_PREFIX = "BNInit{"
"""The key of the callback's state in checkpoints written by 0.1 (before the key named the settings)."""


class BNInit(Callback):
    r"""Revisiting Batch Norm Initialization (Davis & Frank, ECCV 2022) for any Lightning training run.

    At ``setup`` of ``fit`` every batch-norm layer at PyTorch's default gets scale ``init_scale`` and shift 0 (layers
    built later, in ``LightningModule.setup`` or ``configure_model``, at the start of fit). At each optimizer step, BN
    scales move by exactly what the user's optimizer would move them with its learning rate divided by
    ``scale_lr_divisor``, and BN scales and shifts get no weight decay. The user's model, ``configure_optimizers``
    and LR schedulers stay as they are: the result equals an optimizer built with
    :func:`~lightning_bninit.bn_param_groups` (three param groups) with the same arguments, to float round-off
    (bit for bit when ``scale_lr_divisor`` is a power of two), under any schedule without a floor; a floor
    (``eta_min``, ``min_lr``) is ``floor / scale_lr_divisor`` for the scales here and ``floor`` in the three groups.

    Args:
        init_scale: the initial BN scale (gamma), a finite number > 0. The paper suggests 0.1; 1.0 is PyTorch's
            default.
        scale_lr_divisor: ``c`` in the paper: BN scales step with the optimizer's learning rate divided by this
            finite number >= 1. 100 in the paper; 1 keeps the optimizer's learning rate.
        exempt_weight_decay: ``True``: give BN scales and shifts no weight decay (coupled, as in SGD/Adam/RMSprop,
            or decoupled, as in AdamW); ``"1d"``: also every other parameter with at most one dimension of size > 1
            (biases such as the classifier's), as the authors' ``train.py`` does; ``False``: decay them all.
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
            By default such layers were initialized by someone (pretrained, or zero-initialized residual scales):
            their values are kept (with one warning that lists them and says which) and they still get the revised
            update. ``True`` gives every layer ``init_scale``, as in the paper. Frozen layers are decided the same way
            (by their values), so callback order does not matter.
        separable_optimizers: optimizer classes, beyond PyTorch's own, whose ``step`` updates each param group
            independently; only for these can the update be applied exactly. Subclasses that keep the ``step`` of a
            separable class qualify without being listed.
        monitor: log per-layer BN statistics of the treated layers (scale/shift, drift from the initial values,
            normalized-activation magnitudes) to the Trainer's loggers, with a
            :class:`~lightning_bninit.BNMonitor`; ``False`` turns it off; a ``BNMonitor(...)`` sets its options
            (e.g. its own ``log_every_n_steps``). A ``BNMonitor`` given to the Trainer takes its place.

    Attributes:
        method_settings: the validated :class:`~lightning_bninit.method.MethodSettings` (the options above but
            ``monitor``); :attr:`settings` gives them as plain values.

    Raises:
        ValueError: for an ``init_scale`` that is not a finite number > 0, a ``scale_lr_divisor`` that is not a
            finite number >= 1, a ``bool`` option that is not ``True`` or ``False``, an ``exempt_weight_decay``
            other than ``True``, ``False`` or ``"1d"``, a pattern that is neither a string nor a compiled
            ``re.Pattern``, ``LBFGS`` in ``separable_optimizers``; at setup, for a
            second ``BNInit`` on the same Trainer, and at the start of fit for an optimizer that already has the
            update from :func:`~lightning_bninit.attach` (either would apply the update twice).
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
        exempt_weight_decay: ExemptWeightDecay = True,
        input_norm: Union[bool, str] = False,
        input_channels: Union[int, None] = None,
        include: PatternArg = None,
        exclude: PatternArg = None,
        force: bool = False,
        separable_optimizers: Sequence[type[Optimizer]] = (),
        monitor: MonitorArg = True,
    ) -> None:
        self.method_settings = MethodSettings(
            init_scale=init_scale, scale_lr_divisor=scale_lr_divisor, exempt_weight_decay=exempt_weight_decay,
            input_norm=input_norm, input_channels=input_channels, include=include, exclude=exclude, force=force,
            separable_optimizers=separable_optimizers,
        )
        self._treatment: MethodApplication | None = None
        self._restored_initial: dict[str, Any] | None = None
        self._monitor: BNMonitor | None = make_monitor(monitor)
        self._drives_monitor = False  # whether this callback calls its monitor's hooks (no other BNMonitor is given)

    # -- settings --------------------------------------------------------------------------------------------------

    @property
    def settings(self) -> dict[str, Any]:
        """The callback's settings, as plain values (saved in checkpoints, logged as run config, in its state key)."""
        return self.method_settings.plain()

    @property
    def layer_names(self) -> list[str]:
        """Qualified names of the BN layers this callback treats, in network order (after ``setup``)."""
        return list(self._treatment.layer_names) if self._treatment is not None else []

    @property
    def initial_values(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per layer, the ``"scale"`` and ``"shift"`` at the start of fit (kept across a resume)."""
        return self._treatment.initial if self._treatment is not None else {}

    @property
    def _update(self) -> RevisedUpdate | None:
        return self._treatment.update if self._treatment is not None else None

    # -- the method --------------------------------------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        others = [cb for cb in trainer.callbacks if isinstance(cb, BNInit)]  # type: ignore[attr-defined]
        if len(others) > 1:
            raise ValueError(
                f"{len(others)} BNInit callbacks were given to the Trainer; each would apply the revised update, so "
                "BN scales would step with lr / c twice over. Keep one BNInit (include/exclude choose its layers)."
            )
        # The input BN is structure, not initialization: it is added for every stage so that a checkpoint trained
        # with it loads for validate/test/predict too. Only fit touches existing weights.
        if self.method_settings.input_norm:
            add_input_norm(pl_module, self.method_settings, BNINIT, _info, getattr(pl_module, "example_input_array", None))
        if stage != "fit":
            return
        # Layers built later (LightningModule.setup, configure_model) are treated at the start of fit.
        self._treatment = apply_method(pl_module, self.method_settings, BNINIT, rank_zero_warn)
        if self._restored_initial is not None:  # a state loaded before setup (rare: by hand)
            self._treatment.load_initial(self._restored_initial, rank_zero_warn, BNINIT)
            self._restored_initial = None
        self._setup_monitor(trainer, pl_module, stage)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._treatment is None:
            return
        # After LightningModule.setup and configure_model, and after a checkpoint's weights were loaded (ckpt_path):
        # layers built there are treated now; when resuming their values come from the checkpoint and are kept.
        if self._treatment.add_late_layers(pl_module, BNINIT, rank_zero_warn, resuming=trainer.ckpt_path is not None):
            self._assign_monitor(trainer)
        self._treatment.warn_if_empty(pl_module, BNINIT, rank_zero_warn)
        for optimizer in trainer.optimizers:
            self._treatment.attach(optimizer, BNINIT)
        for config in trainer.lr_scheduler_configs:
            message = cyclic_schedule_warning(config.scheduler, self.method_settings.scale_lr_divisor)
            if message is not None:
                rank_zero_warn(message)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._treatment is not None and self._treatment.pending_lazy:
            self._treatment.record_lazy(pl_module)
        if self._drives_monitor:
            self._monitor.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)  # type: ignore[union-attr]

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._release()
        if self._drives_monitor:
            self._monitor.on_exception(trainer, pl_module, exception)  # type: ignore[union-attr]

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._release()
        if self._drives_monitor:
            self._monitor.teardown(trainer, pl_module, stage)  # type: ignore[union-attr]

    # -- checkpoints -------------------------------------------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        # Plain containers of str/float/bool and tensors only: loadable with torch.load(weights_only=True).
        state = self._treatment.state_dict() if self._treatment is not None else {
            "settings": self.settings, "layers": [], "initial": {}}
        if self._drives_monitor:
            state["monitor"] = self._monitor.state_dict()  # type: ignore[union-attr]
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The values at the start of the original fit, so drift stays relative to them after a resume.
        if self._treatment is not None:
            self._treatment.load_initial(state_dict, rank_zero_warn, BNINIT)
        else:
            self._restored_initial = state_dict
        if self._monitor is not None and "monitor" in state_dict:
            self._monitor.load_state_dict(state_dict["monitor"])

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning loads the state stored under this callback's state_key, Lightning's default "BNInit" (0.1 used it
        # too). 0.2 keyed it on the settings ("BNInit{...}"); there is at most one BNInit, so such a state is ours
        # (load_state_dict warns about changed settings).
        states = checkpoint.get("callbacks") or {}
        if self.state_key in states:
            return
        mine = [k for k in states if isinstance(k, str) and k.startswith(STATE_KEY_0_2_PREFIX)]
        if len(mine) == 1:
            self.load_state_dict(copy.deepcopy(states[mine[0]]))

    def _release(self) -> None:
        if self._treatment is not None:
            self._treatment.update.detach()

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
        self._assign_monitor(trainer)
        if self._drives_monitor:
            self._monitor.setup(trainer, pl_module, stage)  # type: ignore[union-attr]

    def _assign_monitor(self, trainer: pl.Trainer) -> None:
        given = [cb for cb in trainer.callbacks if isinstance(cb, BNMonitor)]  # type: ignore[attr-defined]
        if self._monitor is not None and (self._drives_monitor or self._monitor in given):
            self._monitor._assign(self.layer_names, self.initial_values)

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


__all__ = ["BNInit"]
