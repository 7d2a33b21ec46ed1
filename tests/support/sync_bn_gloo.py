"""Run by test_monitor_loggers.py: ``python sync_bn_gloo.py OUT``: the monitor's SyncBatchNorm path on two CPU processes.

``SyncBatchNorm.forward`` refuses CPU tensors when a process group is initialized (it synchronizes through CUDA or
PrivateUse1 kernels only), so the forward hook is called directly, as the layer's forward would call it: each rank
holds half of one batch. Each rank saves the global mean / variance / count that ``sync_bn_stats`` computed, and the
statistics ``bn_statistics`` returns after gathering over ranks with ``all_gather``; the test compares them with one
process's computation on the whole batch (``batch()`` below).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lightning_bninit.monitoring.functional import bn_statistics, capture_xhat
from lightning_bninit.monitoring.hooks import sync_bn_stats

WORLD = 2


def batch() -> torch.Tensor:
    """The whole batch: 8 images, 3 channels, 4x4, one outlier in channel 1 of image 5 (rank 1's half)."""
    x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 + 0.5
    x[5, 1, 2, 3] = 40.0
    return x


def model() -> nn.Module:
    net = nn.Sequential(nn.SyncBatchNorm(3))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([0.1, -0.5, 2.0]))
        net[0].bias.copy_(torch.tensor([0.0, 0.3, -1.0]))
    return net.train()


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.stack(parts)


def run(rank: int, out: str) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    net = model()
    bn = net[0]
    x = batch()[rank * 4:(rank + 1) * 4]
    try:
        bn(x)
        forward = "ran"
    except (ValueError, RuntimeError) as err:
        forward = f"refused: {err}"
    stats = sync_bn_stats(bn, x)
    with capture_xhat(net) as xhat:
        xhat.hooks["0"](bn, (x,), None)  # what the forward would have called
    initial = {"0": {"scale": torch.full((3,), 0.1), "shift": torch.zeros(3)}}
    logged = bn_statistics(net, initial, xhat, all_gather=all_gather, full=True)
    torch.save({"mean": stats["mean"], "var": stats["var"], "count": stats["count"], "forward": forward,
                "logged": logged, "local_xhat": xhat.values()["0"]}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    mp.spawn(run, args=(sys.argv[1],), nprocs=WORLD)
