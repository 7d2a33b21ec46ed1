"""Re-initialization of batch-norm scales (plain PyTorch, no Lightning needed)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_bninit.method.layers import find_bn_layers, is_default_init, is_materialized, is_trainable
from lightning_bninit.method.settings import Patterns, check_bool, check_init_scale, check_patterns


@dataclass
class InitReport:
    """What :func:`init_bn_` did, by qualified layer name."""

    initialized: list[str] = field(default_factory=list)
    """Layers whose scale was set to ``init_scale`` and shift to 0."""
    not_default: list[str] = field(default_factory=list)
    """Layers left alone because their parameters were not at PyTorch's default (pretrained or already set)."""
    frozen: list[str] = field(default_factory=list)
    """Layers whose scale does not require grad (now): they are initialized or kept by their values like any other,
    since they may be unfrozen later (``BaseFinetuning``); ``exclude`` leaves a layer alone."""
    lazy: list[str] = field(default_factory=list)
    """Lazy layers not materialized yet (they are initialized on their first forward)."""


def reset_bn_(bn: _BatchNorm, init_scale: float) -> None:
    """Set one layer's scale to ``init_scale`` and its shift to 0, in place."""
    with torch.no_grad():
        bn.weight.fill_(init_scale)
        bn.bias.zero_()


def init_bn_(
    model: nn.Module,
    init_scale: float = 0.1,
    include: Patterns = None,
    exclude: Patterns = None,
    force: bool = False,
) -> InitReport:
    """Set the scale of every batch-norm layer of ``model`` to ``init_scale`` and its shift to 0.

    Which layers are set is decided by their values, never by whether they are frozen: layers whose parameters are
    not at PyTorch's default (scale 1, shift 0) were initialized by someone (pretrained, zero-initialized residual
    scales) and are left alone unless ``force=True``; frozen layers (``requires_grad=False``) at the default are set
    too, since they may be unfrozen later; lazy layers that are not materialized yet are initialized right after
    their first forward creates their parameters.

    Args:
        model: any ``nn.Module``.
        init_scale: the new scale, a finite number > 0 (the paper suggests 0.1).
        include: glob patterns (``fnmatch``) or compiled regular expressions on qualified module names; when given,
            only matching layers are touched.
        exclude: patterns of layers to leave alone.
        force: also re-initialize layers whose parameters are not at PyTorch's default.

    Returns:
        An :class:`InitReport` naming the layers initialized and those left alone, and why.

    Raises:
        ValueError: for an ``init_scale`` that is not a finite number > 0, a ``force`` that is not True or False, or a
            pattern that is neither a string nor a compiled ``re.Pattern``.

    Example::

        model = torchvision.models.resnet18()
        report = init_bn_(model, init_scale=0.1)
        assert len(report.initialized) == 20
    """
    init_scale = check_init_scale(init_scale)
    force = check_bool(force, "force")
    layers = find_bn_layers(model, check_patterns(include, "include"), check_patterns(exclude, "exclude"))
    return init_layers_(layers, init_scale, force)


def init_layers_(layers: dict[str, _BatchNorm], init_scale: float, force: bool) -> InitReport:
    """:func:`init_bn_` on these layers (by qualified name), settings already checked."""
    report = InitReport()
    for name, bn in layers.items():
        if not is_materialized(bn):
            _init_after_materialization(bn, init_scale)
            report.lazy.append(name)
            continue
        if not is_trainable(bn):
            report.frozen.append(name)
        if force or is_default_init(bn):
            reset_bn_(bn, init_scale)
            report.initialized.append(name)
        else:
            report.not_default.append(name)
    return report


def _init_after_materialization(bn: _BatchNorm, init_scale: float) -> None:
    # Lazy modules create their parameters in a forward pre-hook registered at construction; ours runs after it,
    # so the parameters exist (same Parameter objects the optimizer holds) before the first normalization. Values
    # loaded before that forward (a resumed run: load_state_dict materializes the layer) are kept.
    def hook(module: nn.Module, args: tuple) -> None:
        reset_bn_(module, init_scale)  # type: ignore[arg-type]
        cancel()

    def loaded(module: nn.Module, incompatible_keys: object) -> None:
        if is_materialized(module):  # type: ignore[arg-type]
            cancel()

    def cancel() -> None:
        handle.remove()
        load_handle.remove()

    handle = bn.register_forward_pre_hook(hook)
    load_handle = bn.register_load_state_dict_post_hook(loaded)
