"""The paper's optional input normalization: a BN layer on the raw input instead of a fixed mean and std."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_bninit.compat import is_forward_redirected
from lightning_bninit.method.init import reset_bn_

RELU_STD = 0.58
"""sigma_act in the paper: the std of ReLU(z) for z ~ N(0, 1), sqrt((1 - 1/pi) / 2) = 0.5840, rounded as the paper
and the official code do. The input BN's scale is ``init_scale * RELU_STD`` so that the input is on the scale of the
activations that the other BN layers see."""

ATTRIBUTE = "bninit_input_norm"
"""Name under which the input BN is registered in the module whose input it normalizes (so it is in checkpoints)."""


class InputNorm(_BatchNorm):
    """Batch norm over dimension 1 of an input of any rank >= 2, with its shift frozen at 0."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"InputNorm expects an input of shape (N, C, ...), got shape {tuple(input.shape)}.")


def _normalize_first_arg(
    module: nn.Module, args: tuple, kwargs: dict[str, Any]
) -> tuple[tuple, dict[str, Any]] | None:
    # A module-level function (not a closure) so that the hook survives pickling and deepcopy of the model.
    if is_forward_redirected(module):
        # Lightning's forward redirection (DDP, FSDP, DeepSpeed) patches `forward` and calls the module with the
        # batch to reach `training_step`; the real forward, called from there, is normalized.
        return None
    if not args or not isinstance(args[0], torch.Tensor):
        raise ValueError(
            f"BNInit(input_norm=...) normalizes the first positional argument of {type(module).__name__}.forward, "
            f"which must be a tensor; got {type(args[0]).__name__ if args else 'no positional argument'}."
        )
    return (getattr(module, ATTRIBUTE)(args[0]), *args[1:]), kwargs


def find_input_norm(module: nn.Module) -> _BatchNorm | None:
    """The input BN registered in ``module``: an :class:`InputNorm`, or the ``SyncBatchNorm`` that
    ``Trainer(sync_batchnorm=True)`` converted it to."""
    existing = getattr(module, ATTRIBUTE, None)
    return existing if isinstance(existing, _BatchNorm) else None


def attach_input_norm(module: nn.Module, num_channels: int, init_scale: float) -> _BatchNorm:
    """Register an :class:`InputNorm` in ``module`` that normalizes the first argument of its ``forward``.

    Idempotent: a module that already has one keeps it (and its trained values).
    """
    existing = find_input_norm(module)
    if existing is not None:
        return existing
    # Built in the module's device and float dtype, then filled: a checkpoint loaded into a float32 layer of a float64
    # model would be rounded, and so would a scale filled in float32 and cast (float32(γ₀ · 0.58) ≠ γ₀ · 0.58).
    reference = next((p for p in module.parameters() if p.is_floating_point()), None)
    factory = {} if reference is None else {"device": reference.device, "dtype": reference.dtype}
    norm = InputNorm(num_channels, **factory)
    reset_bn_(norm, init_scale * RELU_STD)
    norm.bias.requires_grad_(False)
    module.add_module(ATTRIBUTE, norm)
    module.register_forward_pre_hook(_normalize_first_arg, with_kwargs=True)
    return norm


def infer_input_channels(module: nn.Module, example_input: Any = None) -> int | None:
    """The number of input channels: from an example input's dimension 1, else the first conv's ``in_channels`` or
    the first linear layer's ``in_features``, in module order."""
    if isinstance(example_input, torch.Tensor) and example_input.dim() >= 2:
        return int(example_input.shape[1])
    for sub in module.modules():
        if isinstance(sub, nn.modules.conv._ConvNd):
            return int(sub.in_channels)
        if isinstance(sub, nn.Linear):
            return int(sub.in_features)
    return None


def is_input_norm(bn: _BatchNorm) -> bool:
    return isinstance(bn, InputNorm)
