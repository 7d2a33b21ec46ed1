"""A tiny LightningCLI script for the CLI tests (run as a subprocess).

Writes what the trainer really got to $BNINIT_TEST_OUT: the BNInit callbacks with their settings,
the BN scales at the start of training, and the final loss (to check that a saved config replays).
"""

import json
import os

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_bninit import BNInit
from lightning_bninit.cli import BNInitCLI


class TinyData(LightningDataModule):
    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(64, 8, generator=g), torch.randint(0, 2, (64,), generator=g)),
                          batch_size=16)


class TinyModel(LightningModule):
    def __init__(self, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
        self.final_loss = None

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.final_loss = float(loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)

    def on_train_start(self):
        self.gamma_at_start = sorted({round(float(v), 6) for v in self.net[1].weight})

    def on_train_end(self):
        cbs = [cb for cb in self.trainer.callbacks if isinstance(cb, BNInit)]
        info = {
            "bninit": [{key: cb.settings[key] for key in ("init_scale", "scale_lr_divisor", "exempt_weight_decay")}
                       for cb in cbs],
            "gamma_at_start": self.gamma_at_start,
            "final_loss": self.final_loss,
            "log_dir": self.trainer.log_dir,
        }
        with open(os.environ["BNINIT_TEST_OUT"], "w") as fh:
            json.dump(info, fh)


if __name__ == "__main__":
    BNInitCLI(TinyModel, TinyData)
