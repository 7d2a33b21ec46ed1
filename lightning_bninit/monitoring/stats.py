"""The statistics the monitor logs, as pure functions on tensors (no hooks, no Lightning).

Per BN layer, ``bn/<layer>/<stat>`` for each name in :data:`STATS`; network summaries ``bn/all/<stat>`` are the max
over layers of :data:`ALL_MAX` and the mean over layers of :data:`ALL_MEAN`. Definitions: ``docs/design.md``.
"""

from __future__ import annotations

import math

import torch

PARAM_STATS = (
    "scale_mean", "scale_std", "scale_min", "scale_max", "shift_mean", "shift_std", "scale_drift", "shift_drift",
)
XHAT_STATS = ("xhat_absmax", "xhat_bound_ratio", "xhat_frac_gt3", "out_absmax")
STATS = PARAM_STATS + XHAT_STATS
"""Per-layer statistic names, in the column order of the monitor's history rows."""

ALL_MAX = ("xhat_absmax", "xhat_bound_ratio", "out_absmax", "scale_max")
ALL_MEAN = ("scale_drift", "shift_drift", "xhat_frac_gt3")
PREFIX = "bn"


def metric_key(layer: str, stat: str) -> str:
    return f"{PREFIX}/{layer}/{stat}"


def xhat_stats(
    x: torch.Tensor,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    mean: torch.Tensor | None = None,
    var: torch.Tensor | None = None,
    count: int | None = None,
) -> torch.Tensor:
    """``[xhat_absmax, xhat_bound_ratio, xhat_frac_gt3, out_absmax]`` for a BN input ``x`` of shape ``(N, C, ...)``.

    x̂ = (x - mean) / sqrt(var + eps) per channel, with the biased batch variance, as BN computes it in training mode;
    all in float32 whatever the input dtype. ``mean``/``var``/``count`` (shape ``(C,)`` and the values per channel)
    replace the batch's own statistics, e.g. with the global ones of ``SyncBatchNorm``. Returns a float32 tensor of 4
    on ``x``'s device, without synchronizing with the host.
    """
    x = x.detach().float()
    channels = x.shape[1]
    dims = [0, *range(2, x.dim())]
    shape = [1, channels] + [1] * (x.dim() - 2)
    if mean is None or var is None:
        var_, mean_ = torch.var_mean(x, dim=dims, unbiased=False, keepdim=True)
    else:
        mean_, var_ = mean.float().reshape(shape), var.float().reshape(shape)
    m = count if count is not None else x.numel() // max(channels, 1)
    xhat = (x - mean_) * torch.rsqrt(var_ + eps)
    absx = xhat.abs()
    absmax = absx.amax()
    frac = (absx > 3).float().mean()
    if weight is not None:
        out = xhat * weight.detach().float().reshape(shape)
        if bias is not None:
            out = out + bias.detach().float().reshape(shape)
        out_absmax = out.abs().amax()
    else:
        out_absmax = absmax
    ratio = absmax / math.sqrt(m - 1) if m > 1 else torch.full_like(absmax, float("nan"))
    return torch.stack([absmax, ratio, frac, out_absmax])


def param_stats(
    scale: torch.Tensor, shift: torch.Tensor, scale_init: torch.Tensor, shift_init: torch.Tensor
) -> torch.Tensor:
    """``[scale_mean, scale_std, scale_min, scale_max, shift_mean, shift_std, scale_drift, shift_drift]`` (float32).

    Stds are population stds over channels; drifts are mean absolute differences from the initial values.
    """
    w = scale.detach().float()
    b = shift.detach().float()
    w_std, w_mean = torch.std_mean(w, unbiased=False)
    b_std, b_mean = torch.std_mean(b, unbiased=False)
    return torch.stack([
        w_mean, w_std, w.amin(), w.amax(), b_mean, b_std,
        (w - scale_init.to(w)).abs().mean(), (b - shift_init.to(b)).abs().mean(),
    ])


def summarize(rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Network-level values from a ``[layers, len(STATS)]`` tensor (NaN entries, e.g. missing x̂, are ignored)."""
    out = {}
    for stat in ALL_MAX + ALL_MEAN:
        col = rows[:, STATS.index(stat)]
        valid = col[~torch.isnan(col)]
        if valid.numel() == 0:
            continue
        out[stat] = valid.amax() if stat in ALL_MAX else valid.mean()
    return out


def to_metrics(layer_names: list[str], values: list[list[float]]) -> dict[str, float]:
    """The logged keys of one step: ``bn/<layer>/<stat>`` from ``values[layer][stat]`` (in :data:`STATS` order) and
    the ``bn/all/<stat>`` summaries; NaN values (not measured) are left out."""
    metrics: dict[str, float] = {}
    for name, row in zip(layer_names, values):
        for stat, v in zip(STATS, row):
            if not math.isnan(v):
                metrics[metric_key(name, stat)] = v
    for stat, v in summarize(torch.tensor(values, dtype=torch.float64).reshape(-1, len(STATS))).items():
        metrics[metric_key("all", stat)] = float(v)
    return metrics


def reduce_over_ranks(gathered: torch.Tensor) -> torch.Tensor:
    """x̂ statistics ``[world, layers, 4]`` gathered from every rank -> ``[layers, 4]``: max over ranks, except
    ``xhat_frac_gt3``, the mean over ranks (every rank sees a batch of the same size)."""
    return torch.stack([
        gathered[:, :, 0].amax(0), gathered[:, :, 1].amax(0), gathered[:, :, 2].mean(0), gathered[:, :, 3].amax(0),
    ], dim=1)
