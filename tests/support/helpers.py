"""Small models and a hand-written reference loop for the callback's tests (the pure-PyTorch part: ``loops``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_bninit import bn_param_groups

if __package__:  # imported as `support.helpers` by the tests
    from .loops import (  # noqa: F401 - re-exported
        OptimizerFactory, PlainSGD, assert_same_params, dataset, loader, optimizer_cases, plain_loop, reference_fit,
        tiny_net,
    )
else:  # imported as `helpers` by the scripts tests/support/launch.py runs
    from loops import (  # type: ignore[no-redef]  # noqa: F401
        OptimizerFactory, PlainSGD, assert_same_params, dataset, loader, optimizer_cases, plain_loop, reference_fit,
        tiny_net,
    )


class Classifier(pl.LightningModule):
    """A LightningModule whose optimizer and scheduler come from factories (built on ``self.parameters()``)."""

    def __init__(
        self,
        net: nn.Module,
        make_optimizer: OptimizerFactory,
        make_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        grouped: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.make_optimizer = make_optimizer
        self.make_scheduler = make_scheduler
        self.grouped = grouped
        self.inf_at: set[int] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        if self.global_step in self.inf_at:
            loss = loss * float("inf")  # makes a GradScaler skip this step
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> Any:
        # ``grouped``: the hand-built reference, bn_param_groups(lr=..., weight_decay=..., scale_lr_divisor=...).
        params = self.parameters() if self.grouped is None else bn_param_groups(self, **self.grouped)
        optimizer = self.make_optimizer(params)
        if self.make_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.make_scheduler(optimizer), "interval": "step"}}


def trainer(**kwargs: Any) -> pl.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, deterministic=True,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)
