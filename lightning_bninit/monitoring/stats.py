"""The statistics the monitor logs, as pure functions on tensors (no hooks, no Lightning).

Keys (0.3): per BN layer ``bn_<stat>/<label>``, one section per statistic in W&B and TensorBoard, where ``<label>``
is the layer's position in network order and its name with the dots escaped (``07_layer1_0_bn1``: W&B reads dots as
nesting, and both UIs sort a section by name); network summaries ``bn/all/<stat>``: the max over layers of
:data:`ALL_MAX`, the min of :data:`ALL_MIN`, the mean of :data:`ALL_MEAN`, and the alert counts. By default only
:data:`COMPACT_STATS` are logged per layer; ``full=True`` logs every name in :data:`STATS`. Definitions:
``docs/design.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

PARAM_STATS = (
    "scale_mean", "scale_std", "scale_min", "scale_max", "shift_mean", "shift_std", "scale_drift", "shift_drift",
    "scale_drift_rel", "scale_absmax_rel",
)
XHAT_STATS = ("xhat_absmax", "xhat_bound_ratio", "xhat_frac_gt3", "out_absmax", "m")
STATS = PARAM_STATS + XHAT_STATS
"""Per-layer statistic names, in the column order of the monitor's history rows."""
COMPACT_STATS = ("scale_drift_rel", "xhat_bound_ratio", "shift_drift")
"""What is logged per layer by default: drift relative to γ₀, peak |x̂| / sqrt(m − 1), shift drift."""

ALL_MAX = ("xhat_absmax", "xhat_bound_ratio", "out_absmax", "scale_max")
ALL_MIN = ("scale_min",)
ALL_MEAN = ("scale_drift", "shift_drift", "xhat_frac_gt3", "scale_drift_rel")
PREFIX = "bn"
DEFAULT_BOUND_RATIO = 0.8
"""Alert when a layer's peak |x̂| reaches this fraction of its bound sqrt(m − 1)."""
DEFAULT_SCALE_COLLAPSE = 0.1
"""Alert when every channel's |γ| of a layer falls below this fraction of its mean |γ₀|."""


def escape(layer: str) -> str:
    """A layer name without dots (W&B would read them as nesting): ``layer1.0.bn1`` -> ``layer1_0_bn1``."""
    return layer.replace(".", "_")


def layer_labels(layer_names: Sequence[str]) -> list[str]:
    """Per layer, ``<index>_<escaped name>``: network order is the order of names in every UI, and labels are unique."""
    width = max(2, len(str(max(len(layer_names) - 1, 0))))
    return [f"{i:0{width}d}_{escape(name)}" for i, name in enumerate(layer_names)]


def metric_key(label: str, stat: str) -> str:
    """``bn_<stat>/<label>`` for a layer label, ``bn/all/<stat>`` for ``label="all"``."""
    return f"{PREFIX}/all/{stat}" if label == "all" else f"{PREFIX}_{stat}/{label}"


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
    """``[xhat_absmax, xhat_bound_ratio, xhat_frac_gt3, out_absmax, m]`` for a BN input ``x`` of shape ``(N, C, ...)``.

    x̂ = (x - mean) / sqrt(var + eps) per channel, with the biased batch variance, as BN computes it in training mode;
    all in float32 whatever the input dtype. ``m`` is the number of values per channel the layer normalizes over.
    ``mean``/``var``/``count`` (shape ``(C,)`` and the values per channel) replace the batch's own statistics, e.g.
    with the global ones of ``SyncBatchNorm``. Returns a float32 tensor of 5 on ``x``'s device, without synchronizing
    with the host.
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
    return torch.stack([absmax, ratio, frac, out_absmax, torch.full_like(absmax, float(m))])


def param_stats(
    scale: torch.Tensor, shift: torch.Tensor, scale_init: torch.Tensor, shift_init: torch.Tensor
) -> torch.Tensor:
    """:data:`PARAM_STATS` of one layer (float32): ``scale_mean, scale_std, scale_min, scale_max, shift_mean,
    shift_std, scale_drift, shift_drift, scale_drift_rel, scale_absmax_rel``.

    Stds are population stds over channels; drifts are mean absolute differences from the initial values;
    ``scale_drift_rel`` = ``scale_drift / mean |γ₀|`` and ``scale_absmax_rel`` = ``max |γ| / mean |γ₀|`` (NaN for
    γ₀ = 0).
    """
    w = scale.detach().float()
    b = shift.detach().float()
    w0 = scale_init.to(w)
    w_std, w_mean = torch.std_mean(w, unbiased=False)
    b_std, b_mean = torch.std_mean(b, unbiased=False)
    drift = (w - w0).abs().mean()
    gamma0 = w0.abs().mean()
    gamma0 = torch.where(gamma0 > 0, gamma0, torch.full_like(gamma0, float("nan")))
    return torch.stack([
        w_mean, w_std, w.amin(), w.amax(), b_mean, b_std, drift, (b - shift_init.to(b)).abs().mean(),
        drift / gamma0, w.abs().amax() / gamma0,
    ])


def summarize(rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Network-level values from a ``[layers, len(STATS)]`` tensor (NaN entries, e.g. missing x̂, are ignored)."""
    out = {}
    for stat in ALL_MAX + ALL_MIN + ALL_MEAN:
        col = rows[:, STATS.index(stat)]
        valid = col[~torch.isnan(col)]
        if valid.numel() == 0:
            continue
        out[stat] = valid.amax() if stat in ALL_MAX else valid.amin() if stat in ALL_MIN else valid.mean()
    return out


def alert_flags(
    values: Sequence[Sequence[float]], bound_ratio: float, scale_collapse: float
) -> tuple[list[bool], list[bool]]:
    """Per layer, whether its peak |x̂| / sqrt(m − 1) is at least ``bound_ratio`` and whether its largest |γ| is
    below ``scale_collapse`` times its mean |γ₀| (unknown values raise no flag)."""
    r, s = STATS.index("xhat_bound_ratio"), STATS.index("scale_absmax_rel")
    near = [not math.isnan(row[r]) and row[r] >= bound_ratio for row in values]
    collapsed = [not math.isnan(row[s]) and row[s] < scale_collapse for row in values]
    return near, collapsed


def to_metrics(
    labels: Sequence[str],
    values: Sequence[Sequence[float]],
    *,
    full: bool = False,
    bound_ratio: float = DEFAULT_BOUND_RATIO,
    scale_collapse: float = DEFAULT_SCALE_COLLAPSE,
) -> dict[str, float]:
    """The logged keys of one step: ``bn_<stat>/<label>`` from ``values[layer][stat]`` (in :data:`STATS` order; only
    :data:`COMPACT_STATS` unless ``full``), the ``bn/all/<stat>`` summaries and the alert counts
    ``bn/all/layers_near_bound`` and ``bn/all/layers_collapsed``; NaN values (not measured) are left out."""
    metrics: dict[str, float] = {}
    columns = [(STATS.index(s), s) for s in (STATS if full else COMPACT_STATS)]
    for label, row in zip(labels, values):
        for k, stat in columns:
            if not math.isnan(row[k]):
                metrics[metric_key(label, stat)] = row[k]
    for stat, v in summarize(torch.tensor(values, dtype=torch.float64).reshape(-1, len(STATS))).items():
        metrics[metric_key("all", stat)] = float(v)
    if values:
        near, collapsed = alert_flags(values, bound_ratio, scale_collapse)
        metrics[metric_key("all", "layers_near_bound")] = float(sum(near))
        metrics[metric_key("all", "layers_collapsed")] = float(sum(collapsed))
    return metrics


def reduce_over_ranks(gathered: torch.Tensor) -> torch.Tensor:
    """x̂ statistics ``[world, layers, 5]`` gathered from every rank -> ``[layers, 5]``: max over ranks, except
    ``xhat_frac_gt3``, the mean over ranks (every rank sees a batch of the same size)."""
    out = gathered.amax(0)
    out[:, XHAT_STATS.index("xhat_frac_gt3")] = gathered[:, :, XHAT_STATS.index("xhat_frac_gt3")].mean(0)
    return out
