"""DDP check of the BN monitor, run as ``python tests/_ddp_monitor_script.py OUT_DIR`` (Lightning relaunches it for
rank 1). Rank 1 plants one outlier in channel 0 of every batch; each rank writes its local ``xhat_absmax`` of the first
BN layer per step to ``OUT_DIR/rank<r>.json``; a CSVLogger writes to ``OUT_DIR/logs``."""

from __future__ import annotations

import json
import os
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_bninit import BNInit
from lightning_bninit import BNMonitor
from lightning_bninit.monitoring.stats import xhat_stats


class Model(pl.LightningModule):
    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 2))
        self.out_dir = out_dir
        self.local: dict[int, float] = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.global_rank == 1:
            x = x.clone()
            x[:, 0] = 0.0
            x[0, 0] = 100.0
        step = self.trainer.fit_loop.epoch_loop._batches_that_stepped
        self.local[step] = xhat_stats(x, self.net[0].eps)[0].item()
        return nn.functional.cross_entropy(self.net(x), y)

    def on_train_end(self) -> None:
        with open(os.path.join(self.out_dir, f"rank{self.global_rank}.json"), "w") as f:
            json.dump(self.local, f)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(out_dir: str) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(48, 2), torch.randint(0, 2, (48,)))
    trainer = pl.Trainer(
        strategy="ddp", devices=2, accelerator="cpu", max_steps=3, log_every_n_steps=1,
        logger=CSVLogger(os.path.join(out_dir, "logs"), name="", version="run"),
        callbacks=[BNInit(monitor=BNMonitor(full=True, console_summary=False))],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Model(out_dir), DataLoader(data, batch_size=8))


if __name__ == "__main__":
    main(sys.argv[1])
