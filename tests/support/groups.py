"""One check that the optimizer shows the user's own param groups around a step, in a plain loop or in a Trainer."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch


class GroupsInPlace(pl.Callback):
    """The optimizer shows the user's own groups (the list and dicts it was built with) and the learning rate the
    scheduler set, so nothing of a step's split is left for user code to see.

    In a plain loop: ``GroupsInPlace(optimizer, scheduler)``, called after every step (and scheduler step) as
    ``plain_loop(..., after_step=check)``. In a Trainer: ``GroupsInPlace()`` as a callback; it takes the first
    optimizer at the start of training and checks after every batch and at the end, against every scheduler the
    Trainer holds. ``checks`` counts the checks made."""

    def __init__(self, optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None) -> None:
        self.scheduler = scheduler
        self.checks = 0
        if optimizer is not None:
            self._remember(optimizer)

    def _remember(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.groups, self.dicts = optimizer.param_groups, [id(g) for g in optimizer.param_groups]

    def _check(self, schedulers: list[Any]) -> None:
        assert self.optimizer.param_groups is self.groups
        assert [id(g) for g in self.optimizer.param_groups] == self.dicts
        for scheduler in schedulers:
            assert [g["lr"] for g in self.groups] == scheduler.get_last_lr()
        self.checks += 1

    def __call__(self, step: int) -> None:
        self._check([] if self.scheduler is None else [self.scheduler])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remember(trainer.optimizers[0])
        self.checks = 0

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._check([config.scheduler for config in trainer.lr_scheduler_configs])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check([config.scheduler for config in trainer.lr_scheduler_configs])
