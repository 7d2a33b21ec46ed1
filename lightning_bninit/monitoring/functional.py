"""The monitor's statistics as a plain function, for loops without a Trainer (Fabric, plain PyTorch).

:func:`bn_statistics` returns what ``BNMonitor`` logs on a logging step (``bn/<layer>/<stat>`` and ``bn/all/<stat>``,
``docs/design.md``) as a dict of floats; the caller logs it wherever it likes. The x̂ statistics need the BN inputs
of a forward pass: run that forward inside :func:`capture_xhat` on the steps you log.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_bninit import compat
from lightning_bninit.method.input_norm import InputNorm
from lightning_bninit.method.layers import find_bn_layers, is_materialized
from lightning_bninit.monitoring.hooks import XhatHook
from lightning_bninit.monitoring.stats import PARAM_STATS, XHAT_STATS, param_stats, reduce_over_ranks, to_metrics

Initial = Mapping[str, Mapping[str, torch.Tensor]]
AllGather = Callable[[torch.Tensor], torch.Tensor]


class XhatCapture:
    """What :func:`capture_xhat` recorded: per layer, the x̂ statistics of its inputs (max over the calls)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.hooks = {name: XhatHook() for name in names}

    def values(self) -> dict[str, torch.Tensor]:
        """Per layer that saw a batch in training mode, ``[xhat_absmax, xhat_bound_ratio, xhat_frac_gt3,
        out_absmax]``."""
        return {name: hook.value for name, hook in self.hooks.items() if hook.value is not None}


@contextmanager
def capture_xhat(
    model: nn.Module, layers: Sequence[str] | None = None, enabled: bool = True
) -> Iterator[XhatCapture]:
    """Forward hooks on the BN layers for the duration of the ``with`` block (none with ``enabled=False``).

    Args:
        model: the model, or the module ``fabric.setup`` returned.
        layers: qualified names of the BN layers to watch (e.g. ``handle.layer_names``); default: every BN layer
            with affine parameters.
        enabled: ``False`` registers nothing (for the steps you do not log), so the forward costs nothing extra.
    """
    model = _unwrapped(model)
    watched = _layers(model, layers)
    capture = XhatCapture(list(watched) if enabled else [])
    handles = [watched[name].register_forward_hook(hook) for name, hook in capture.hooks.items()]
    try:
        yield capture
    finally:
        for handle in handles:
            handle.remove()


def bn_statistics(
    model: nn.Module,
    initial: Initial | None = None,
    xhat: XhatCapture | None = None,
    *,
    layers: Sequence[str] | None = None,
    all_gather: AllGather | None = None,
) -> dict[str, float]:
    """The BN monitor's statistics of ``model`` now, as ``{"bn/<layer>/<stat>": value, "bn/all/<stat>": value}``.

    Args:
        model: the model, or the module ``fabric.setup`` returned.
        initial: per layer, its ``"scale"`` and ``"shift"`` at the start (``handle.initial_values`` of
            :func:`~lightning_bninit.attach`); the drift statistics are left out without it.
        xhat: what :func:`capture_xhat` recorded during this step's forward; the x̂ statistics are left out without it.
        layers: qualified names of the layers (default: the keys of ``initial``, else every affine BN layer).
        all_gather: under DDP, a function gathering a tensor from every rank (``fabric.all_gather``): x̂ statistics
            are then the max over ranks (``xhat_frac_gt3`` the mean), as ``BNMonitor`` logs them. Call it on every
            rank.

    Returns:
        Floats, one host synchronization for all of them; statistics that are unknown (NaN) are left out.

    Raises:
        ValueError: for a layer name that is not a BN layer of ``model``.

    Example::

        with capture_xhat(model, enabled=step % 50 == 0) as xhat:
            loss = loss_fn(model(x), y)
        if step % 50 == 0:
            fabric.log_dict(bn_statistics(model, handle.initial_values, xhat, all_gather=fabric.all_gather), step)
    """
    model = _unwrapped(model)
    watched = _arg_validation(model, initial, layers)
    rows = _update(watched, initial, xhat, all_gather)
    return _compute(list(watched), rows)


def _unwrapped(model: nn.Module) -> nn.Module:
    inner = compat.fabric_module(model)
    model = model if inner is None else inner
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _layers(model: nn.Module, names: Sequence[str] | None) -> dict[str, _BatchNorm]:
    if names is None:
        found = find_bn_layers(model)
        return dict(sorted(found.items(), key=lambda kv: not isinstance(kv[1], InputNorm)))  # input BN first
    modules = dict(model.named_modules())
    bad = [n for n in names if not isinstance(modules.get(n), _BatchNorm)]
    if bad:
        raise ValueError(f"bn_statistics: {bad} are not BN layers of {type(model).__name__}.")
    return {n: modules[n] for n in names}  # type: ignore[misc]


def _arg_validation(model: nn.Module, initial: Initial | None, layers: Sequence[str] | None) -> dict[str, _BatchNorm]:
    names = layers if layers is not None else (list(initial) if initial else None)
    return {n: bn for n, bn in _layers(model, names).items() if is_materialized(bn)}


def _update(
    layers: dict[str, _BatchNorm], initial: Initial | None, xhat: XhatCapture | None, all_gather: AllGather | None
) -> torch.Tensor:
    """``[layers, len(STATS)]`` on the layers' device (NaN where unknown), x̂ reduced over ranks."""
    if not layers:
        return torch.zeros(0, len(PARAM_STATS) + len(XHAT_STATS))
    device = next(iter(layers.values())).weight.device
    params = [_param_row(name, bn, initial, device) for name, bn in layers.items()]
    measured = xhat.values() if xhat is not None else {}
    nan = torch.full((len(XHAT_STATS),), math.nan, device=device)
    x = torch.stack([measured[n].to(device) if n in measured else nan for n in layers])
    if all_gather is not None and xhat is not None:
        gathered = all_gather(x)
        if gathered.dim() == 3:  # [world, layers, 4]; a single process returns the tensor as it is
            x = reduce_over_ranks(gathered)
    return torch.cat([torch.stack(params), x], dim=1)


def _param_row(name: str, bn: _BatchNorm, initial: Initial | None, device: torch.device) -> torch.Tensor:
    init = (initial or {}).get(name)
    if init is None:
        zeros = torch.zeros_like(bn.weight, dtype=torch.float32)
        row = param_stats(bn.weight, bn.bias, zeros, zeros)
        return torch.cat([row[:-2], torch.full((2,), math.nan, device=row.device)]).to(device)
    return param_stats(bn.weight, bn.bias, init["scale"].to(device), init["shift"].to(device)).to(device)


def _compute(names: list[str], rows: torch.Tensor) -> dict[str, float]:
    return to_metrics(names, rows.tolist())
