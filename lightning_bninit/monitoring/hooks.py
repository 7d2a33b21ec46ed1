"""Forward hooks that measure x̂ on the monitor's logging steps only (registered and removed around one step)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_bninit.monitoring.stats import xhat_stats


class XhatHook:
    """Forward hook that accumulates :func:`xhat_stats` of the layer's input (elementwise max over calls)."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def __call__(self, module: _BatchNorm, args: tuple, output: Any) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            return
        uses_batch_stats = module.training or module.running_mean is None
        if not uses_batch_stats:
            return
        with torch.no_grad():
            x = args[0]
            stats = sync_bn_stats(module, x)
            value = xhat_stats(x, module.eps, module.weight, module.bias, **stats)
        self.value = value if self.value is None else torch.maximum(self.value, value)

    def take(self) -> torch.Tensor | None:
        """The accumulated value, and forget it."""
        value, self.value = self.value, None
        return value


def sync_bn_stats(module: _BatchNorm, x: torch.Tensor) -> dict[str, Any]:
    """Global mean, biased variance and count for a ``SyncBatchNorm`` in a process group of several ranks.

    Two small all-reduces per layer, on logging steps only; ``{}`` for any other layer or a single process.
    """
    if not isinstance(module, nn.SyncBatchNorm):
        return {}
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return {}
    group = module.process_group or dist.group.WORLD
    if dist.get_world_size(group) < 2:
        return {}
    xf = x.detach().float()
    channels = xf.shape[1]
    dims = [0, *range(2, xf.dim())]
    local = torch.cat([xf.sum(dim=dims), torch.tensor([xf.numel() / channels], device=xf.device)])
    dist.all_reduce(local, group=group)
    count = local[-1]
    mean = local[:-1] / count
    shape = [1, channels] + [1] * (xf.dim() - 2)
    sq = ((xf - mean.reshape(shape)) ** 2).sum(dim=dims)
    dist.all_reduce(sq, group=group)
    return {"mean": mean, "var": sq / count, "count": int(count.item())}
