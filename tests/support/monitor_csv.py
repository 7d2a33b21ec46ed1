"""What the monitor's tests through a CSVLogger share: the rows of ``metrics.csv``, a Trainer that writes them, the
optimizer they train with, and a classifier that logs its loss and records when BN forward hooks were present."""

from __future__ import annotations

import csv
import os

import torch
from torch import nn

from .helpers import Classifier, trainer as make_trainer


def csv_rows(log_dir: str) -> list[dict[str, str]]:
    with open(os.path.join(log_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def csv_values(rows: list[dict[str, str]], key: str) -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


def csv_trainer(tmp_path, **kwargs):
    from lightning.pytorch.loggers import CSVLogger

    kwargs.setdefault("logger", CSVLogger(str(tmp_path), name="", version="run"))
    return make_trainer(**kwargs)


def sgd_momentum(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


class LoggingClassifier(Classifier):
    """Logs its loss on every step, and records whether BN forward hooks were present on each step."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hooked_steps: list[int] = []

    def training_step(self, batch, batch_idx):
        if any(m._forward_hooks for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
            self.hooked_steps.append(self.trainer.fit_loop.epoch_loop._batches_that_stepped)
        loss = super().training_step(batch, batch_idx)
        self.log("loss", loss, on_step=True, on_epoch=False)
        return loss
