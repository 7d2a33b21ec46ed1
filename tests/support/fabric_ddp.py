"""Run by test_fabric.py as its own process: Fabric DDP on two CPU ranks (gloo; Fabric relaunches this script for
rank 1). Trains the tiny network (one pretrained-looking BN layer) with ``attach`` before ``fabric.setup`` (with the
input BN), with the hand-built three groups, and with ``attach`` after ``fabric.setup`` (without input BN), each rank
on its own shard; each rank saves the three sets of parameters and how many warnings it gave."""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path

import torch
from lightning.fabric import Fabric
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from helpers import dataset, loader, tiny_net  # noqa: E402

from lightning_bninit import attach, bn_param_groups, init_bn_  # noqa: E402
from lightning_bninit.method.input_norm import attach_input_norm  # noqa: E402

LR, WD = 0.05, 1e-2
C = 128.0  # a power of two: the split and the three groups compute the same scale lr (tests/test_fabric.py)


def train(fabric: Fabric, start: nn.Module, how: str) -> tuple[nn.Module, int]:
    """``how``: ``"before"`` / ``"after"`` (attach around fabric.setup; the input BN only before, where DDP sees it),
    or ``"groups"`` (the hand-built three groups)."""
    net = copy.deepcopy(start)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if how == "groups":
            attach_input_norm(net, 3, 0.1)
            init_bn_(net, 0.1, exclude="bninit_input_norm")
            groups = [{k: v for k, v in g.items() if k != "bninit"}
                      for g in bn_param_groups(net, lr=LR, weight_decay=WD, scale_lr_divisor=C)]
            optimizer = torch.optim.SGD(groups, lr=LR, momentum=0.9)
        else:
            optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9, weight_decay=WD)
            if how == "before":
                attach(net, optimizer, scale_lr_divisor=C, input_norm=True)
        model, optimizer = fabric.setup(net, optimizer)
        if how == "after":
            attach(model, optimizer, scale_lr_divisor=C)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=8)
    data = fabric.setup_dataloaders(loader(dataset(n=64, dtype=torch.float32), 4))
    for epoch in range(2):
        for x, y in data:
            fabric.backward(nn.functional.cross_entropy(model(x), y))
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
    mine = [w for w in caught if "lightning_bninit" in str(w.filename) or "attach" in str(w.message)]
    return net, len(mine)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    fabric.launch()
    torch.manual_seed(0)
    start = tiny_net()
    with torch.no_grad():
        start[9].weight.fill_(0.5)  # looks pretrained: one warning, from rank zero only
    treated, n_warnings = train(fabric, start, "before")
    reference, _ = train(fabric, start, "groups")
    after, _ = train(fabric, start, "after")
    params = lambda m: {k: v.detach().clone() for k, v in m.named_parameters()}  # noqa: E731
    torch.save({"attach": params(treated), "groups": params(reference), "after": params(after),
                "warnings": n_warnings, "input_norm": hasattr(treated, "bninit_input_norm")},
               out / f"rank{fabric.global_rank}.pt")
    # Tear the gloo group down before the interpreter exits: left to the interpreter's shutdown, its threads can
    # abort the process ("terminate called without an active exception") after the results are written.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
