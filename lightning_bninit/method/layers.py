"""Finding the batch-norm layers of a model and the roles of their parameters."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parameter import UninitializedParameter

from lightning_bninit.method.settings import ONE_D, ExemptWeightDecay, Pattern

SCALE = "scale"
SHIFT = "shift"
#: the role of every other parameter: it steps with its group as it is
OTHER = "other"


def matches(name: str, patterns: Iterable[Pattern]) -> bool:
    """Whether a qualified module name matches any glob string or compiled regular expression."""
    for pattern in patterns:
        if isinstance(pattern, re.Pattern):
            if pattern.fullmatch(name):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def find_bn_layers(
    model: nn.Module, include: Iterable[Pattern] = (), exclude: Iterable[Pattern] = ()
) -> dict[str, _BatchNorm]:
    """Every batch-norm layer of ``model`` with affine parameters, by qualified name, in network order.

    Covers ``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, the lazy variants and subclasses (anything deriving from
    ``torch.nn.modules.batchnorm._BatchNorm``). ``include`` keeps only names matching one of its patterns (all when
    empty); ``exclude`` then drops names matching one of its patterns.
    """
    include, exclude = tuple(include), tuple(exclude)
    found = {}
    for name, module in model.named_modules():
        if not isinstance(module, _BatchNorm) or not module.affine:
            continue
        if include and not matches(name, include):
            continue
        if exclude and matches(name, exclude):
            continue
        found[name] = module
    return found


def is_materialized(bn: _BatchNorm) -> bool:
    """False for a lazy layer whose parameters are not created yet (before its first forward)."""
    return not isinstance(bn.weight, UninitializedParameter)


def is_trainable(bn: _BatchNorm) -> bool:
    return bool(bn.weight.requires_grad)


def is_at(bn: _BatchNorm, scale: float) -> bool:
    """Whether the layer's scale is ``scale`` everywhere and its shift all zeros."""
    with torch.no_grad():
        return bool(torch.all(bn.weight == scale)) and bool(torch.all(bn.bias == 0))


def is_default_init(bn: _BatchNorm) -> bool:
    """Whether the layer is at PyTorch's ``reset_parameters`` values (scale 1, shift 0)."""
    return is_at(bn, 1.0)


def param_roles(layers: Iterable[_BatchNorm]) -> dict[torch.Tensor, str]:
    """Map each BN scale to :data:`SCALE` and each BN shift to :data:`SHIFT`.

    Keyed by the parameter tensors themselves (hashed by identity), which survive
    ``SyncBatchNorm.convert_sync_batchnorm`` and DDP wrapping, unlike the module objects.
    """
    roles: dict[torch.Tensor, str] = {}
    for bn in layers:
        roles[bn.weight] = SCALE
        roles[bn.bias] = SHIFT
    return roles


def is_vector(param: torch.Tensor) -> bool:
    """Whether ``param`` has at most one dimension of size > 1: a bias, a BN parameter, a PReLU slope, a scalar
    (the authors' ``train.py`` tests ``ndim == 1``, the same for every parameter of their ResNet)."""
    return sum(size > 1 for size in param.shape) <= 1


def update_roles(
    model: nn.Module, layers: Iterable[_BatchNorm], exempt_weight_decay: ExemptWeightDecay
) -> dict[torch.Tensor, str]:
    """The roles the revised update gives: :func:`param_roles` of the treated ``layers`` and, with
    ``exempt_weight_decay="1d"``, :data:`SHIFT` (the group's lr, no weight decay) for every other parameter of
    ``model`` that :func:`is_vector` (biases, BN parameters of untreated layers), frozen ones included.

    Raises:
        ValueError: with ``"1d"``, for a lazy parameter not materialized yet, whose shape is not known.
    """
    roles = param_roles(layers)
    if exempt_weight_decay != ONE_D:
        return roles
    for name, param in model.named_parameters():
        if param in roles:  # frozen ones too: they may be unfrozen later (fine-tuning), and must then be undecayed
            continue
        if isinstance(param, UninitializedParameter):
            raise ValueError(
                f"exempt_weight_decay={ONE_D!r} decides by shape, and parameter {name!r} is a lazy parameter without "
                "one yet; run one forward pass before applying the method, or use exempt_weight_decay=True."
            )
        if is_vector(param):
            roles[param] = SHIFT
    return roles
