"""Run by test_ddp.py as its own process: 2-rank DDP fit with BNInit; each rank saves its parameters.

``python ddp_fit.py OUT`` runs on CPU (gloo); ``python ddp_fit.py OUT gpu`` runs on two GPUs (NCCL) with
``sync_batchnorm=True``, where PyTorch really synchronizes the BN statistics across processes.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from helpers import Classifier, dataset, loader, tiny_net, trainer  # noqa: E402

from lightning_bninit import BNInit  # noqa: E402


class RecordBNTypes(pl.Callback):
    """Which BN classes the network trains with (after Lightning's SyncBatchNorm conversion)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.types = sorted({type(m).__name__ for m in pl_module.modules()
                             if isinstance(m, nn.modules.batchnorm._BatchNorm)})


if __name__ == "__main__":
    out, gpu = Path(sys.argv[1]), sys.argv[2:] == ["gpu"]
    torch.manual_seed(0)
    net = tiny_net()
    with torch.no_grad():
        net[9].weight.fill_(0.5)  # looks pretrained: exactly one warning is expected, from rank zero
    model = Classifier(net, partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-2))
    types = RecordBNTypes()
    extra: dict[str, Any] = {"accelerator": "gpu", "sync_batchnorm": True} if gpu else {}
    t = trainer(strategy="ddp", devices=2, callbacks=[BNInit(input_norm=True), types], max_epochs=2,
                limit_train_batches=3, deterministic=False, **extra)
    t.fit(model, loader(dataset(dtype=torch.float32), 4))
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save({"state": state, "bn_types": types.types}, out / f"rank{t.global_rank}.pt")
