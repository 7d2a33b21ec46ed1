"""Digits: a small BatchNorm CNN on scikit-learn's 8x8 handwritten digits (CPU, seconds per run).

The data set is ``sklearn.datasets.load_digits`` (1797 grey 8x8 images, pixel values 0..16, scaled
to [0, 1]); it ships with scikit-learn, so nothing is downloaded. The train/val/test split is made
once with seed 0 and does not depend on the run seed, as in the paper (seed 0 makes the split,
seeds 1..15 the runs), so paired runs see the same data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy


class DigitsDataModule(LightningDataModule):
    """8x8 digits with a fixed split.

    Args:
        batch_size: mini-batch size.
        val_size: images held out for validation.
        test_size: images held out for testing.
        split_seed: seed of the split (kept fixed across runs).
    """

    def __init__(self, batch_size: int = 64, val_size: int = 300, test_size: int = 300, split_seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N x 1 x 8 x 8, [0, 1]
        y = torch.tensor(data.target, dtype=torch.long)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.hparams.split_seed))
        n_test, n_val = self.hparams.test_size, self.hparams.val_size
        test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
        self.train_set = TensorDataset(x[train], y[train])
        self.val_set = TensorDataset(x[val], y[val])
        self.test_set = TensorDataset(x[test], y[test])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class DigitsCNN(LightningModule):
    """Conv-BN-ReLU x3 + linear head; SGD with momentum and a per-step cosine schedule.

    Args:
        width: channels of the first block (doubled after the pooling).
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay (BNInit exempts BN parameters when asked to).
    """

    def __init__(self, width: int = 16, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            _block(1, width), _block(width, width), nn.MaxPool2d(2),  # 8x8 -> 4x4
            _block(width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, 10)
        for m in self.modules():  # Kaiming normal (fan-in, ReLU), as in the paper's setup
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        self.val_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=10, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.test_acc(logits, y)
        self.log("test_loss", F.cross_entropy(logits, y))
        self.log("test_acc", self.test_acc)

    def configure_optimizers(self):  # noqa: ANN201 - Lightning's optimizer/scheduler dict
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum,
                              weight_decay=self.hparams.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.trainer.estimated_stepping_batches))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
