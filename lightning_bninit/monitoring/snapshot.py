"""The one place the monitor takes a layer's initial values, lazy layers included (after their first forward)."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_bninit.method.layers import is_materialized

Initial = MutableMapping[str, Mapping[str, torch.Tensor]]


def snapshot(bn: _BatchNorm) -> dict[str, torch.Tensor]:
    """``{"scale": γ, "shift": β}``, detached copies of the layer's values now."""
    return {"scale": bn.weight.detach().clone(), "shift": bn.bias.detach().clone()}


def snapshot_missing(layers: Mapping[str, _BatchNorm], into: Initial) -> None:
    """Record the values of every layer not in ``into`` yet: now if it is materialized, else right after the forward
    that materializes it (a lazy layer gets its parameters, and ``BNInit`` its values, in forward pre-hooks)."""
    for name, bn in layers.items():
        if name in into:
            continue
        if is_materialized(bn):
            into[name] = snapshot(bn)
        else:
            _snapshot_after_materialization(name, bn, into)


def _snapshot_after_materialization(name: str, bn: _BatchNorm, into: Initial) -> None:
    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        handle.remove()
        if name not in into and is_materialized(bn):
            into[name] = snapshot(bn)

    handle = bn.register_forward_hook(hook)
