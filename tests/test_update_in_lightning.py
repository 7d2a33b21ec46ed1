"""The revised update under mixed precision, skipped steps, manual optimization and several optimizers.

Each test trains twice with identical numerics: once with the user's plain optimizer and BNInit, once with the
hand-built three groups of ``bn_param_groups`` (which BNInit recognizes and leaves alone). Equal results show the
update is the paper's and is not applied twice.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

from support.helpers import Classifier, assert_same_params, dataset, loader, tiny_net, trainer
from lightning_bninit import BNInit, bn_param_groups

LR, WD, C = 0.05, 1e-2, 100.0
SGD = partial(torch.optim.SGD, lr=LR, momentum=0.9, weight_decay=WD)
GROUPED = {"lr": LR, "weight_decay": WD, "scale_lr_divisor": C}
COSINE = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8)  # noqa: E731


class GroupCount(pl.Callback):
    """Records how many param groups the user's optimizer shows whenever Lightning hands control to user code."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.steps = 0

    def on_fit_start(self, trainer: pl.Trainer, *args: Any) -> None:
        trainer.optimizers[0].register_step_post_hook(lambda *_: setattr(self, "steps", self.steps + 1))

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.seen.add(len(trainer.optimizers[0].param_groups))


def twin_fits(inf_at: set[int] = frozenset(), **trainer_kwargs: Any) -> tuple[nn.Module, nn.Module, list[GroupCount]]:
    torch.manual_seed(0)
    net = tiny_net()
    counters = [GroupCount(), GroupCount()]
    results = []
    for grouped, counter in zip((None, GROUPED), counters):
        model = Classifier(copy.deepcopy(net), SGD, COSINE, grouped=grouped)
        model.inf_at = set(inf_at)
        trainer(callbacks=[BNInit(scale_lr_divisor=C), counter], max_epochs=2, limit_train_batches=4,
                **trainer_kwargs).fit(model, loader(dataset(dtype=torch.float32)))
        results.append(model.net)
    return results[0], results[1], counters


def test_bf16_mixed() -> None:
    treated, reference, (counter, reference_counter) = twin_fits(precision="bf16-mixed")
    assert_same_params(treated, reference, rtol=0, atol=0)
    assert counter.seen == {1} and reference_counter.seen == {3}  # never a leftover split in user code
    assert counter.steps == reference_counter.steps == 8


def test_fp16_gradscaler_with_skipped_steps() -> None:
    # A GradScaler on CPU exercises the AMP path: the hook runs before scaler.step, which may skip the step.
    make_plugin = lambda: MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))  # noqa: E731
    skips = {1, 4}
    torch.manual_seed(0)
    net = tiny_net()
    runs = []
    for grouped in (None, GROUPED):
        model = Classifier(copy.deepcopy(net), SGD, COSINE, grouped=grouped)
        model.inf_at = skips
        counter = GroupCount()
        t = trainer(callbacks=[BNInit(scale_lr_divisor=C), counter], max_epochs=2, limit_train_batches=4,
                    plugins=[make_plugin()])
        t.fit(model, loader(dataset(dtype=torch.float32)))
        runs.append((model.net, counter, t.optimizers[0]))
    (treated, counter, optimizer), (reference, _, _) = runs
    assert_same_params(treated, reference, rtol=0, atol=0)
    assert counter.steps == 8 - len(skips)  # the scaler did skip those steps
    assert counter.seen == {1}
    assert len(optimizer.param_groups) == 1 and len(optimizer.param_groups[0]["params"]) == len(list(net.parameters()))


class TwoOptimizersManual(pl.LightningModule):
    """Manual optimization: the body and the head each have their own optimizer (SGD and Adam)."""

    def __init__(self, grouped: bool) -> None:
        super().__init__()
        self.automatic_optimization = False
        torch.manual_seed(0)
        net = tiny_net()
        self.body, self.head = net[:8], net[8:]
        self.grouped = grouped

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        for opt in self.optimizers():
            opt.zero_grad()
        loss = nn.functional.cross_entropy(self.head(self.body(x)), y)
        self.manual_backward(loss)
        for opt in self.optimizers():
            opt.step()

    def configure_optimizers(self) -> Any:
        def params(module: nn.Module, wd: float) -> Any:
            if self.grouped:
                return bn_param_groups(module, lr=LR, weight_decay=wd, scale_lr_divisor=C)
            return module.parameters()

        return (
            torch.optim.SGD(params(self.body, WD), lr=LR, momentum=0.9, weight_decay=WD),
            torch.optim.Adam(params(self.head, 0.0), lr=LR),
        )


def test_manual_optimization_with_two_optimizers() -> None:
    trained = []
    for grouped in (False, True):
        model = TwoOptimizersManual(grouped).double()
        trainer(precision="64-true", callbacks=[BNInit(scale_lr_divisor=C)], max_epochs=2,
                limit_train_batches=3).fit(model, loader(dataset()))
        trained.append(model)
    assert_same_params(*trained)
    assert not torch.allclose(trained[0].head[1].weight, torch.full_like(trained[0].head[1].weight, 0.1))


def test_divisor_one_without_exemption_leaves_optimizer_untouched() -> None:
    """init_scale=1, c=1, no exemption is plain training: identical to no callback at all."""
    torch.manual_seed(0)
    net = tiny_net().double()
    trained = []
    for callbacks in ([], [BNInit(1.0, 1.0, exempt_weight_decay=False)]):
        model = Classifier(copy.deepcopy(net), SGD, COSINE)
        trainer(precision="64-true", callbacks=callbacks, max_epochs=1, limit_train_batches=4).fit(
            model, loader(dataset())
        )
        trained.append(model.net)
    assert_same_params(*trained, rtol=0, atol=0)
