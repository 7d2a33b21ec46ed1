"""The method applied to one model, once: what ``BNInit.setup`` and :func:`~lightning_bninit.attach` share.

:func:`apply_method` finds the BN layers, re-initializes them (by their values, as :func:`~lightning_bninit.init_bn_`
says), adds the input BN when asked, and builds the revised update; the
:class:`MethodApplication` it returns keeps the layers' values at the start and attaches optimizers. Messages name the
caller (``BNInit`` or ``attach``) and reach the user through the ``warn`` / ``info`` functions it passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from lightning_bninit.method.init import InitReport, init_layers_
from lightning_bninit.method.input_norm import attach_input_norm, find_input_norm, infer_input_channels
from lightning_bninit.method.layers import find_bn_layers, is_at, is_materialized, update_roles
from lightning_bninit.method.settings import MethodSettings
from lightning_bninit.method.step_hooks import RevisedUpdate
from lightning_bninit.method.update import (
    GroupSplitter, is_separable, is_single_group, unsupported_optimizer_message,
)

InitialValues = dict[str, dict[str, torch.Tensor]]
Say = Callable[[str], None]


@dataclass(frozen=True)
class Caller:
    """Who applies the method, for messages: ``name`` and how one of its options is written (``option % "x=1"``)."""

    name: str
    option: str

    def with_option(self, option: str) -> str:
        return self.option % option


BNINIT = Caller("BNInit", "BNInit(%s)")
ATTACH = Caller("attach", "attach(model, optimizer, %s)")


@dataclass
class MethodApplication:
    """The BN layers one model's treatment covers, their values at the start, and the revised update.

    ``layer_names`` are in network order, the input BN first; ``initial`` holds each layer's ``"scale"`` and
    ``"shift"`` at the start (lazy layers join once materialized, see :meth:`record_lazy`).
    """

    settings: MethodSettings
    report: InitReport
    layer_names: list[str]
    initial: InitialValues
    update: RevisedUpdate
    pending_lazy: list[str] = field(default_factory=list)

    def attach(self, optimizer: Optimizer, caller: Caller) -> None:
        """Register the update on ``optimizer`` (every optimizer: BN parameters may join one later, in a param group
        added mid-fit); a no-op when this treatment already did.

        Raises:
            TypeError: for an optimizer whose step may couple param groups while it holds BN parameters that need a
                split (the message names the ways out); one that holds none now raises so at its first step that
                would need one.
            ValueError: for an optimizer that already has the update attached by someone else.
        """
        if self.update.is_attached(optimizer):
            return
        separable = is_separable(optimizer, self.settings.separable_optimizers) and not is_single_group(
            type(optimizer))
        refusal = None if separable else unsupported_optimizer_message(optimizer, caller.name)
        if refusal is not None and self.update.splitter.needs_split(optimizer):
            raise TypeError(refusal)
        self.update.attach(optimizer, refusal)

    def add_late_layers(self, model: nn.Module, caller: Caller, warn: Say, resuming: bool) -> list[str]:
        """Treat the BN layers ``model`` has now that it had not at :func:`apply_method` (built in ``LightningModule.setup``
        or ``configure_model``); returns their names. When ``resuming``, their values came from the checkpoint and
        are kept."""
        roles = self.update.splitter.roles
        found = find_bn_layers(model, self.settings.include, self.settings.exclude)
        new = {name: bn for name, bn in found.items() if bn.weight not in roles}
        # the new layers' roles, and with exempt_weight_decay="1d" those of the other vector parameters built late
        late = update_roles(model, new.values(), self.settings.exempt_weight_decay)
        late = {p: role for p, role in late.items() if p not in roles}
        if late:
            self.update.splitter.add_roles(late)
        if not new:
            return []
        if not resuming:
            report = init_layers_(new, self.settings.init_scale, self.settings.force)
            _warn_kept(report, new, self.settings, caller, warn)
        self.layer_names.extend(new)
        for name, bn in new.items():
            if name in self.initial:
                continue
            if is_materialized(bn):
                self.initial[name] = _snapshot(bn)
            else:
                self.pending_lazy.append(name)
        return list(new)

    def warn_if_empty(self, model: nn.Module, caller: Caller, warn: Say) -> None:
        if not self.layer_names:
            patterns = self.settings.include or self.settings.exclude
            warn(
                f"{caller.name} found no batch-norm layer with affine parameters in {type(model).__name__}"
                f"{' matching include/exclude' if patterns else ''}; training continues unchanged."
            )

    def record_lazy(self, model: nn.Module) -> None:
        """Record the values lazy layers were set to when their first forward materialized them."""
        pending = []
        for name in self.pending_lazy:
            if name in self.initial:  # restored from a checkpoint
                continue
            bn = model.get_submodule(name)
            if isinstance(bn, _BatchNorm) and is_materialized(bn):
                self.initial[name] = {
                    "scale": torch.full_like(bn.weight, self.settings.init_scale).detach(),
                    "shift": torch.zeros_like(bn.bias).detach(),
                }
            else:
                pending.append(name)
        self.pending_lazy = pending

    def state_dict(self) -> dict[str, Any]:
        """Settings, layers and initial values as plain containers and CPU tensors (``weights_only``-safe)."""
        return {
            "settings": self.settings.plain(),
            "layers": list(self.layer_names),
            "initial": {name: {k: v.detach().cpu() for k, v in vals.items()} for name, vals in self.initial.items()},
        }

    def load_initial(self, state: dict[str, Any], warn: Say, caller: Caller) -> None:
        """Take the initial values of a saved state (so drift stays relative to the original start); warn when it was
        made with other settings, which are not taken."""
        warn_changed_settings(state, self.settings, warn, caller)
        self.initial.clear()
        self.initial.update({name: dict(vals) for name, vals in state.get("initial", {}).items()})


def warn_changed_settings(state: dict[str, Any], settings: MethodSettings, warn: Say, caller: Caller) -> None:
    current = settings.plain()
    saved = state.get("settings", {})
    changed = {k: (v, current[k]) for k, v in saved.items() if k in current and current[k] != v}
    if changed:
        warn(
            f"{caller.name} is resuming from a checkpoint made with other settings; continuing with the current ones: "
            + ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        )


def input_module(model: nn.Module, settings: MethodSettings, caller: Caller) -> nn.Module:
    """The module whose forward's first argument the input BN normalizes (``model`` itself for ``True``).

    Raises:
        ValueError: when ``input_norm`` names a submodule ``model`` does not have.
    """
    if not isinstance(settings.input_norm, str):
        return model
    try:
        return model.get_submodule(settings.input_norm)
    except AttributeError as err:
        names = [n for n, _ in model.named_children()]
        when = (" BNInit adds the input BN in its setup, before LightningModule.setup and configure_model run, "
                "because the optimizer and the DDP wrapper must see it: build that submodule in __init__, or pass "
                "input_norm=True (the LightningModule's own forward, with input_channels)."
                if caller is BNINIT else "")
        raise ValueError(
            f"{caller.with_option(f'input_norm={settings.input_norm!r}')}: {type(model).__name__} has no submodule "
            f"of that name (now); pass True for the model's own forward or one of its submodules, e.g. {names}.{when}"
        ) from err


def add_input_norm(
    model: nn.Module, settings: MethodSettings, caller: Caller, info: Say, example_input: Any = None
) -> tuple[_BatchNorm, bool]:
    """The input BN of ``model`` (see :func:`~lightning_bninit.method.input_norm.attach_input_norm`) and whether it
    was added now.

    Raises:
        ValueError: when the number of input channels can be neither read from ``example_input`` nor inferred.
    """
    module = input_module(model, settings, caller)
    existing = find_input_norm(module)
    if existing is not None:
        return existing, False
    channels = settings.input_channels
    if channels is None:
        channels = infer_input_channels(module, example_input)
        if channels is None:
            example = " or the LightningModule's example_input_array" if caller is BNINIT else ""
            late = (" (it has no conv or linear layer yet: layers built in configure_model or LightningModule.setup "
                    "come after BNInit's setup)" if caller is BNINIT else "")
            raise ValueError(
                f"{caller.with_option(f'input_norm={settings.input_norm!r}')} cannot tell how many channels the "
                f"input of {type(module).__name__} has{late}: set {caller.with_option('input_channels=...')}{example}."
            )
        info(f"{caller.name}: input BN on {type(module).__name__} with {channels} channels.")
    return attach_input_norm(module, channels, settings.init_scale), True


def apply_method(model: nn.Module, settings: MethodSettings, caller: Caller, warn: Say) -> MethodApplication:
    """Re-initialize the BN layers of ``model`` and build the revised update (no optimizer attached yet).

    The input BN, if ``model`` has one (:func:`add_input_norm` first), is treated whatever ``include`` says, and
    first; its values are left as they were set. Which layers are re-initialized is decided by their values, not by
    whether they are frozen (:func:`~lightning_bninit.init_bn_`); layers not at PyTorch's default keep their values
    (one ``warn`` naming them and why) unless ``force``; lazy layers are set on their first forward. Every treated
    layer gets the revised update whenever its parameters are in an optimizer. The caller warns when there is no
    layer (:meth:`MethodApplication.warn_if_empty`), once it has looked for layers built late.
    """
    norm = find_input_norm(input_module(model, settings, caller)) if settings.input_norm else None
    input_names = [n for n, m in model.named_modules() if norm is not None and m is norm]
    layers = find_bn_layers(model, settings.include, (*settings.exclude, *input_names))
    report = init_layers_(layers, settings.init_scale, settings.force)
    _warn_kept(report, layers, settings, caller, warn)
    layers = {**{name: norm for name in input_names}, **layers}
    initial = {n: _snapshot(bn) for n, bn in layers.items() if is_materialized(bn)}
    roles = update_roles(model, layers.values(), settings.exempt_weight_decay)
    splitter = GroupSplitter(roles, settings.scale_lr_divisor, settings.exempt_weight_decay)
    return MethodApplication(
        settings=settings, report=report, layer_names=list(layers), initial=initial,
        update=RevisedUpdate(splitter), pending_lazy=[n for n in layers if n not in initial],
    )


def _warn_kept(
    report: InitReport, layers: dict[str, _BatchNorm], settings: MethodSettings, caller: Caller, warn: Say
) -> None:
    kept = [n for n in report.not_default if not is_at(layers[n], settings.init_scale)]
    zeros = [n for n in kept if _scale_is_zero(layers[n])]
    pretrained = [n for n in kept if n not in zeros]
    force = caller.with_option("force=True")
    if zeros:
        warn(
            f"{caller.name} kept {len(zeros)} BN layer(s) whose scales are all 0, as zero-initialized residual scales "
            f"are (timm's zero_init_last, torchvision's zero_init_residual=True): {', '.join(zeros)}. They start at 0 "
            f"and get the revised update (lr / {settings.scale_lr_divisor:g}, so they grow from 0 that much more "
            f"slowly). Pass {force} to set every BN scale to init_scale={settings.init_scale:g} (gamma_0 everywhere, "
            f"as in the paper), or exclude them to train them as the model's author set them."
        )
    if pretrained:
        warn(
            f"{caller.name} left the values of {len(pretrained)} BN layer(s) alone because they are not at PyTorch's "
            f"default (scale 1, shift 0) and look pretrained or already initialized: {', '.join(pretrained)}. "
            f"They still get the revised update. Pass {force} to re-initialize them too."
        )


def _scale_is_zero(bn: _BatchNorm) -> bool:
    with torch.no_grad():
        return bool(torch.all(bn.weight == 0))


def _snapshot(bn: _BatchNorm) -> dict[str, torch.Tensor]:
    return {"scale": bn.weight.detach().clone(), "shift": bn.bias.detach().clone()}
