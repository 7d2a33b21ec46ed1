"""The monitor's statistics as small functional steps, shared by ``BNMonitor`` and :func:`bn_statistics`.

:func:`bn_statistics` returns what ``BNMonitor`` logs on a logging step (``bn_<stat>/<label>`` and
``bn/all/<stat>``, ``docs/design.md``) as a dict of floats, for loops without a Trainer (Fabric, plain PyTorch); the
caller logs it wherever it likes. The x̂ statistics need the BN inputs of a forward pass: run that forward inside
:func:`capture_xhat` on the steps you log. The steps, in the order the callback runs them too: :func:`watched_layers`
(which layers), :func:`update` (one ``[layers, len(STATS)]`` tensor: parameters, x̂, reduced over ranks) and
:func:`compute` (the logged keys from its host copy).
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
from lightning_bninit.monitoring.stats import (
    DEFAULT_BOUND_RATIO, DEFAULT_SCALE_COLLAPSE, PARAM_STATS, XHAT_STATS, layer_labels, param_stats, reduce_over_ranks,
    to_metrics,
)

Initial = Mapping[str, Mapping[str, torch.Tensor]]
AllGather = Callable[[torch.Tensor], torch.Tensor]


class XhatCapture:
    """What :func:`capture_xhat` recorded: per layer, the x̂ statistics of its inputs (max over the calls)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.hooks = {name: XhatHook() for name in names}

    def values(self) -> dict[str, torch.Tensor]:
        """Per layer that saw a batch in training mode, its :data:`~lightning_bninit.monitoring.stats.XHAT_STATS`."""
        return {name: hook.value for name, hook in self.hooks.items() if hook.value is not None}

    def take(self) -> dict[str, torch.Tensor]:
        """:meth:`values`, and forget them (the callback reuses one capture over its logging steps)."""
        values = self.values()
        for hook in self.hooks.values():
            hook.value = None
        return values


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
    watched = watched_layers(model, layers)
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
    full: bool = False,
    alert_bound_ratio: float = DEFAULT_BOUND_RATIO,
    alert_scale_collapse: float = DEFAULT_SCALE_COLLAPSE,
) -> dict[str, float]:
    """The BN monitor's statistics of ``model`` now: the keys ``BNMonitor`` logs with the same options.

    Args:
        model: the model, or the module ``fabric.setup`` returned.
        initial: per layer, its ``"scale"`` and ``"shift"`` at the start (``handle.initial_values`` of
            :func:`~lightning_bninit.attach`); the drift statistics are left out without it.
        xhat: what :func:`capture_xhat` recorded during this step's forward; the x̂ statistics are left out without it.
        layers: qualified names of the layers (default: the keys of ``initial``, else every affine BN layer).
        all_gather: under DDP, a function gathering a tensor from every rank (``fabric.all_gather``): x̂ statistics
            are then the max over ranks (``xhat_frac_gt3`` the mean), as ``BNMonitor`` logs them. Call it on every
            rank.
        full: every statistic per layer, not only the compact ``scale_drift_rel``, ``xhat_bound_ratio`` and
            ``shift_drift`` (as ``BNMonitor(full=True)``).
        alert_bound_ratio, alert_scale_collapse: the thresholds of the ``bn/all/layers_near_bound`` and
            ``bn/all/layers_collapsed`` counts (``BNMonitor``'s options of the same names).

    Returns:
        ``{"bn_<stat>/<label>": value, "bn/all/<stat>": value}`` as floats, one host synchronization for all of them;
        statistics that are unknown (NaN) are left out.

    Raises:
        ValueError: for a layer name that is not a BN layer of ``model``.

    Example::

        with capture_xhat(model, enabled=step % 50 == 0) as xhat:
            loss = loss_fn(model(x), y)
        if step % 50 == 0:
            fabric.log_dict(bn_statistics(model, handle.initial_values, xhat, all_gather=fabric.all_gather), step)
    """
    model = _unwrapped(model)
    names = layers if layers is not None else (list(initial) if initial else None)
    watched = watched_layers(model, names)
    rows = update(watched, initial, xhat.values() if xhat is not None else None, all_gather)
    return compute(layer_labels(list(watched)), rows.tolist(), full=full, bound_ratio=alert_bound_ratio,
                   scale_collapse=alert_scale_collapse)


def _unwrapped(model: nn.Module) -> nn.Module:
    inner = compat.fabric_module(model)
    model = model if inner is None else inner
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def watched_layers(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, _BatchNorm]:
    """The BN layers by qualified name: ``names`` in that order, or every affine BN layer, the input BN first.

    Raises:
        ValueError: for a name that is not a BN layer of ``model``.
    """
    if names is None:
        found = find_bn_layers(model)
        return dict(sorted(found.items(), key=lambda kv: not isinstance(kv[1], InputNorm)))  # input BN first
    modules = dict(model.named_modules())
    bad = [n for n in names if not isinstance(modules.get(n), _BatchNorm)]
    if bad:
        raise ValueError(f"bn_statistics: {bad} are not BN layers of {type(model).__name__}.")
    return {n: modules[n] for n in names}  # type: ignore[misc]


def update(
    layers: Mapping[str, _BatchNorm],
    initial: Initial | None,
    xhat: Mapping[str, torch.Tensor] | None,
    all_gather: AllGather | None = None,
) -> torch.Tensor:
    """``[layers, len(STATS)]`` on the layers' device, NaN where unknown: a lazy layer not materialized yet, drift
    without initial values, x̂ of a layer that saw no batch; with ``xhat`` and ``all_gather`` (call it on every rank)
    the x̂ columns are reduced over ranks."""
    if not layers:
        return torch.zeros(0, len(PARAM_STATS) + len(XHAT_STATS))
    device = next(iter(layers.values())).weight.device
    params = torch.stack([param_row(bn, (initial or {}).get(name), device) for name, bn in layers.items()])
    nan = torch.full((len(XHAT_STATS),), math.nan, device=device)
    measured = xhat or {}
    x = torch.stack([measured[n].to(device) if n in measured else nan for n in layers])
    if all_gather is not None and xhat is not None:
        gathered = all_gather(x)
        if gathered.dim() == 3:  # [world, layers, 5]; a single process returns the tensor as it is
            x = reduce_over_ranks(gathered)
    return torch.cat([params, x], dim=1)


def param_row(bn: _BatchNorm, init: Mapping[str, torch.Tensor] | None, device: torch.device) -> torch.Tensor:
    """:data:`PARAM_STATS` of one layer; the drift columns NaN without ``init``, all NaN before materialization."""
    if not is_materialized(bn):
        return torch.full((len(PARAM_STATS),), math.nan, device=device)
    if init is None:
        zeros = torch.zeros_like(bn.weight, dtype=torch.float32)
        row = param_stats(bn.weight, bn.bias, zeros, zeros).to(device)
        drift = [PARAM_STATS.index(s) for s in ("scale_drift", "shift_drift", "scale_drift_rel", "scale_absmax_rel")]
        row[drift] = math.nan
        return row
    return param_stats(bn.weight, bn.bias, init["scale"], init["shift"]).to(device)


#: The last functional step: the logged keys from the host copy of :func:`update` (the one definition is
#: :func:`~lightning_bninit.monitoring.stats.to_metrics`).
compute = to_metrics
