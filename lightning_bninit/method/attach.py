"""``attach``: the method in one call for plain PyTorch loops and Lightning Fabric (other wrappers: attach first).

Same treatment as the ``BNInit`` callback (:mod:`~lightning_bninit.method.application`), with the revised update
applied at every ``optimizer.step()`` by the optimizer's own step hooks; the user's param groups stay as built.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any, Union

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from lightning_bninit import compat
from lightning_bninit.method.layers import SCALE, find_bn_layers, update_roles
from lightning_bninit.method.param_groups import GROUP_MARKER
from lightning_bninit.method.settings import ExemptWeightDecay, MethodSettings, Patterns
from lightning_bninit.method.step_hooks import check_not_attached
from lightning_bninit.method.input_norm import find_input_norm
from lightning_bninit.method.application import ATTACH, MethodApplication, add_input_norm, apply_method, input_module
from lightning_bninit.method.update import GroupSplitter, is_separable, is_single_group, unsupported_optimizer_message

_log = logging.getLogger("lightning_bninit")


class BNInitHandle:
    """What :func:`attach` returns: the treated layers, their initial values, and the update's on/off switch.

    Its :meth:`state_dict` / :meth:`load_state_dict` make it a stateful object for ``fabric.save`` / ``fabric.load``
    (or any checkpoint dict): saved next to the model and optimizer, a resumed run continues exactly.
    """

    def __init__(self, model: nn.Module, treatment: MethodApplication, optimizers: list[Optimizer]) -> None:
        self._model = model
        self._treatment = treatment
        self._optimizers = optimizers

    @property
    def layer_names(self) -> list[str]:
        """Qualified names of the treated BN layers, in network order (the input BN first)."""
        return list(self._treatment.layer_names)

    @property
    def initial_values(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per treated layer, its ``"scale"`` and ``"shift"`` at the start of training (kept across a resume); lazy
        layers appear once their first forward has created them."""
        if self._treatment.pending_lazy:
            self._treatment.record_lazy(self._model)
        return self._treatment.initial

    @property
    def settings(self) -> dict[str, Any]:
        """The settings, as plain values."""
        return self._treatment.settings.plain()

    @property
    def optimizers(self) -> list[Optimizer]:
        """The optimizers the update is attached to (every one given: BN parameters may join one later)."""
        return list(self._optimizers)

    def remove(self) -> None:
        """Detach the update from every optimizer (their own groups in place); the BN values set stay as they are."""
        self._treatment.update.detach()
        self._optimizers = []

    def state_dict(self) -> dict[str, Any]:
        """Settings, layer names and initial values: plain containers and CPU tensors (``weights_only``-safe)."""
        self.initial_values  # noqa: B018 - records lazy layers materialized since
        return self._treatment.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the initial values of a saved handle (the model's and optimizer's states are loaded as usual).

        Warns when the state was made with other settings or for other layers; the current settings stay.
        """
        saved_layers = list(state_dict.get("layers", self._treatment.layer_names))
        if saved_layers != self._treatment.layer_names:
            _warn(f"attach: the saved state is of the BN layers {saved_layers}, this model's are "
                  f"{self._treatment.layer_names}; their initial values are taken by name.")
        self._treatment.load_initial(state_dict, _warn, ATTACH)


def attach(
    model: nn.Module,
    optimizer: Union[Optimizer, Sequence[Optimizer]],
    *,
    init_scale: float = 0.1,
    scale_lr_divisor: float = 100.0,
    exempt_weight_decay: ExemptWeightDecay = True,
    input_norm: Union[bool, str] = False,
    input_channels: Union[int, None] = None,
    include: Patterns = None,
    exclude: Patterns = None,
    force: bool = False,
    separable_optimizers: Sequence[type[Optimizer]] = (),
) -> BNInitHandle:
    """Apply Revisiting Batch Norm Initialization to ``model`` trained by ``optimizer``, in one call.

    Re-initializes the BN layers as :class:`~lightning_bninit.BNInit` does and registers step hooks on each
    optimizer, so that every ``optimizer.step()`` makes the revised update; between steps the optimizer's own param
    groups are in place. The result equals :func:`~lightning_bninit.bn_param_groups` with the same arguments under a
    schedule without a floor. With Lightning Fabric, call it before ``fabric.setup`` (required for ``input_norm``).

    Args:
        model: the model (or what ``fabric.setup`` returned for it).
        optimizer: one optimizer or a list of them, built on the model's parameters in any way.
        init_scale, scale_lr_divisor, exempt_weight_decay, input_channels, include, exclude, force,
            separable_optimizers: as for :class:`~lightning_bninit.BNInit`.
        input_norm: as for ``BNInit``; the new layer's scale joins the param group of that module's first
            parameter, or the BN scale group if that group was built by :func:`~lightning_bninit.bn_param_groups`.

    Returns:
        A :class:`BNInitHandle`: ``remove()`` detaches the update, ``state_dict()`` / ``load_state_dict()`` resume.

    Raises:
        ValueError: a bad setting (named), an optimizer that already has the update, or ``input_norm`` on a
            model that ``fabric.setup`` or DDP already wrapped.
        TypeError: not an optimizer, or one holding BN parameters whose step may couple param groups (the message
            names the ways out). Nothing is changed before these checks.

    Example::

        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        handle = lightning_bninit.attach(model, optimizer)           # gamma 0.1, c 100
    """
    settings = MethodSettings(
        init_scale=init_scale, scale_lr_divisor=scale_lr_divisor, exempt_weight_decay=exempt_weight_decay,
        input_norm=input_norm, input_channels=input_channels, include=include, exclude=exclude, force=force,
        separable_optimizers=separable_optimizers,
    )
    model = _unwrap_model(model, settings)
    optimizers = _unwrap_optimizers(optimizer)
    _check_optimizers(model, settings, optimizers)
    if settings.input_norm:
        _add_trained_input_norm(model, settings, optimizers)
    treatment = apply_method(model, settings, ATTACH, _warn)
    treatment.warn_if_empty(model, ATTACH, _warn)
    return BNInitHandle(model, treatment, _attach_all(treatment, optimizers))


def _attach_all(treatment: MethodApplication, optimizers: list[Optimizer]) -> list[Optimizer]:
    # Every optimizer gets the hooks: BN parameters may join one later (a param group added during training).
    for opt in optimizers:
        treatment.attach(opt, ATTACH)
    if treatment.layer_names and not any(treatment.update.splitter.holds_any(opt) for opt in optimizers):
        _warn(f"attach: none of the {len(optimizers)} optimizer(s) given holds a parameter of the "
              f"{len(treatment.layer_names)} BN layer(s) it treats, so their update is unchanged (their values were "
              "set) unless their parameters join one later. Pass the optimizer that trains them.")
    return list(optimizers)


def _unwrap_model(model: nn.Module, settings: MethodSettings) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"attach expects the model as a torch.nn.Module, got {type(model).__name__}.")
    inner = compat.fabric_module(model)
    wrapped_by = "fabric.setup" if inner is not None else None
    if isinstance(model, nn.parallel.DistributedDataParallel):
        inner, wrapped_by = model.module, "DistributedDataParallel"
    if inner is None:
        return model
    if settings.input_norm:
        raise ValueError(
            f"attach(..., input_norm={settings.input_norm!r}) needs the model before {wrapped_by} wraps it: the "
            "input BN is a new layer, which the wrapper (DDP's gradient synchronization) would not know. Call "
            "attach(model, optimizer, ...) first, then fabric.setup(model, optimizer)."
        )
    return _unwrap_model(inner, settings)


def _unwrap_optimizers(optimizer: Union[Optimizer, Sequence[Optimizer]]) -> list[Optimizer]:
    items = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    unwrapped = []
    for item in items:
        inner = compat.fabric_optimizer(item)
        item = item if inner is None else inner
        if not isinstance(item, Optimizer):
            raise TypeError(
                f"attach expects a torch.optim.Optimizer or a list of them, got {type(item).__name__}: {item!r}."
            )
        unwrapped.append(item)
    if not unwrapped:
        raise ValueError("attach needs at least one optimizer, got an empty list.")
    return unwrapped


def _check_optimizers(model: nn.Module, settings: MethodSettings, optimizers: list[Optimizer]) -> None:
    # Before anything changes the model: an optimizer that cannot take the update is refused up front.
    layers = find_bn_layers(model, settings.include, settings.exclude)
    roles = update_roles(model, layers.values(), settings.exempt_weight_decay)
    probe = GroupSplitter(roles, settings.scale_lr_divisor, settings.exempt_weight_decay)
    for opt in optimizers:
        check_not_attached(opt)
        separable = is_separable(opt, settings.separable_optimizers) and not is_single_group(type(opt))
        if not separable and probe.needs_split(opt):
            raise TypeError(unsupported_optimizer_message(opt, ATTACH.name))


def _add_trained_input_norm(model: nn.Module, settings: MethodSettings, optimizers: list[Optimizer]) -> None:
    module = input_module(model, settings, ATTACH)
    existing = find_input_norm(module)
    held = {id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]}
    if existing is not None and all(id(p) in held for p in existing.parameters() if p.requires_grad):
        return  # attached before (e.g. the same model again after remove())
    optimizer, group = _group_of_first_parameter(module, existing, optimizers, settings)  # before anything is added
    norm, _ = add_input_norm(model, settings, ATTACH, _info)
    names = {id(p): n for n, p in model.named_parameters()}
    for param in norm.parameters():
        if param.requires_grad and id(param) not in held:
            _add_to_group(optimizer, group, param, names[id(param)], settings)


def _add_to_group(
    optimizer: Optimizer, group: dict[str, Any], param: torch.Tensor, name: str, settings: MethodSettings
) -> None:
    # A group built by bn_param_groups is left alone by the split: the input BN's scale joins that optimizer's BN
    # scale group (made like bn_param_groups makes one, if it has none) so that it steps as every BN scale does.
    if GROUP_MARKER in group:
        scales = [g for g in optimizer.param_groups if g.get(GROUP_MARKER) == SCALE]
        if not scales:
            made = {k: v for k, v in group.items() if k not in ("params", "param_names")}
            made.update({"params": [], "lr": group["lr"] / settings.scale_lr_divisor, GROUP_MARKER: SCALE})
            if settings.exempt_weight_decay:
                made["weight_decay"] = 0.0
            if "param_names" in group:
                made["param_names"] = []
            optimizer.add_param_group(made)
            scales = [optimizer.param_groups[-1]]
        group = scales[0]
    group["params"].append(param)
    if "param_names" in group:
        group["param_names"].append(name)


def _group_of_first_parameter(
    module: nn.Module, norm: _BatchNorm | None, optimizers: list[Optimizer], settings: MethodSettings
) -> tuple[Optimizer, dict[str, Any]]:
    own = {id(p) for p in norm.parameters()} if norm is not None else set()
    where = {id(p): (opt, group) for opt in optimizers for group in opt.param_groups for p in group["params"]}
    for param in module.parameters():
        if id(param) not in own and id(param) in where:
            return where[id(param)]
    raise ValueError(
        f"attach(..., input_norm={settings.input_norm!r}) adds a BN layer on the input of {type(module).__name__}; its "
        "scale is trained by the optimizer param group of that module's first parameter, but no optimizer given to "
        "attach holds a parameter of it. Pass the optimizer that trains it."
    )


def _is_rank_zero() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _warn(message: str) -> None:
    if _is_rank_zero():
        warnings.warn(message, UserWarning, stacklevel=3)


def _info(message: str) -> None:
    if _is_rank_zero():
        _log.info(message)
