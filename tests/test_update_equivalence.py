"""The revised update equals a hand-built three-group optimizer, to float64 round-off, across optimizers."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch

from support.helpers import Classifier, assert_same_params, dataset, loader, reference_fit, tiny_net, trainer
from lightning_bninit import BNInit

LR, WD, INIT, C = 0.05, 1e-2, 0.1, 100.0
STEPS, EPOCHS = 6, 2

OPTIMIZERS = {
    "sgd": partial(torch.optim.SGD, lr=LR, weight_decay=WD),
    "sgd_momentum": partial(torch.optim.SGD, lr=LR, momentum=0.9, weight_decay=WD),
    "sgd_nesterov": partial(torch.optim.SGD, lr=LR, momentum=0.9, nesterov=True, weight_decay=WD),
    "adam": partial(torch.optim.Adam, lr=LR, weight_decay=WD),
    "adam_amsgrad": partial(torch.optim.Adam, lr=LR, weight_decay=WD, amsgrad=True),
    "adamw": partial(torch.optim.AdamW, lr=LR, weight_decay=WD),
    "rmsprop": partial(torch.optim.RMSprop, lr=LR / 10, weight_decay=WD),
    "rmsprop_momentum_centered": partial(torch.optim.RMSprop, lr=LR / 10, momentum=0.9, centered=True, weight_decay=WD),
    "adagrad": partial(torch.optim.Adagrad, lr=LR, weight_decay=WD),
    "nadam": partial(torch.optim.NAdam, lr=LR, weight_decay=WD),
    "radam": partial(torch.optim.RAdam, lr=LR, weight_decay=WD),
    "adamax": partial(torch.optim.Adamax, lr=LR, weight_decay=WD),
}

SCHEDULERS = {
    "none": None,
    "cosine": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS * EPOCHS),
    # Each group's own lr as its peak, so the hand-built reference keeps its scale group at 1/c of the others.
    "onecycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=STEPS * EPOCHS
    ),
}


def fit_with_callback(make_optimizer, make_scheduler, net=None, callback=None, ds=None, **trainer_kwargs):
    net = tiny_net().double() if net is None else net
    start = copy.deepcopy(net)
    model = Classifier(net, make_optimizer, make_scheduler)
    trainer_kwargs.setdefault("max_epochs", EPOCHS)
    trainer_kwargs.setdefault("limit_train_batches", STEPS * trainer_kwargs.get("accumulate_grad_batches", 1))
    trainer(precision="64-true", callbacks=[callback or BNInit(INIT, C)], **trainer_kwargs).fit(
        model, loader(dataset() if ds is None else ds, 8)
    )
    return start, model.net


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_matches_three_group_optimizer(name: str) -> None:
    torch.manual_seed(0)
    start, trained = fit_with_callback(OPTIMIZERS[name], SCHEDULERS["cosine"])
    expected = reference_fit(
        start, dataset(), OPTIMIZERS[name], SCHEDULERS["cosine"], STEPS, EPOCHS,
        init_scale=INIT, divisor=C, lr=OPTIMIZERS[name].keywords["lr"], weight_decay=WD,
    )
    assert_same_params(trained, expected)


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
@pytest.mark.parametrize("name", ["sgd_momentum", "adamw"])
def test_follows_any_lr_schedule(name: str, scheduler: str) -> None:
    torch.manual_seed(1)
    start, trained = fit_with_callback(OPTIMIZERS[name], SCHEDULERS[scheduler])
    expected = reference_fit(
        start, dataset(), OPTIMIZERS[name], SCHEDULERS[scheduler], STEPS, EPOCHS,
        init_scale=INIT, divisor=C, lr=LR, weight_decay=WD,
    )
    assert_same_params(trained, expected)


def test_differs_from_dividing_the_gradient() -> None:
    """Guards the test itself: for Adam, lr / c is not grad / c, and the reference tells them apart."""
    torch.manual_seed(2)
    start, trained = fit_with_callback(OPTIMIZERS["adam"], None)
    plain = reference_fit(start, dataset(), OPTIMIZERS["adam"], None, STEPS, EPOCHS,
                          init_scale=INIT, divisor=1.0, lr=LR, weight_decay=WD)
    with pytest.raises(AssertionError):
        assert_same_params(trained, plain)


def test_gradient_accumulation_and_clipping() -> None:
    torch.manual_seed(3)
    start, trained = fit_with_callback(
        OPTIMIZERS["sgd_momentum"], SCHEDULERS["cosine"], ds=dataset(96), accumulate_grad_batches=2,
        gradient_clip_val=0.05,
    )
    expected = reference_fit(
        start, dataset(96), OPTIMIZERS["sgd_momentum"], SCHEDULERS["cosine"], STEPS, EPOCHS,
        init_scale=INIT, divisor=C, lr=LR, weight_decay=WD, accumulate=2, clip_norm=0.05,
    )
    assert_same_params(trained, expected)


def test_scales_move_c_times_less_with_sgd() -> None:
    """A direct reading of the rule: with plain SGD and no decay the scale update is exactly 1/c of the usual one."""
    torch.manual_seed(4)
    sgd = partial(torch.optim.SGD, lr=LR)
    start, treated = fit_with_callback(sgd, None, max_epochs=1, limit_train_batches=1)
    _, usual = fit_with_callback(sgd, None, net=copy.deepcopy(start), callback=BNInit(INIT, 1.0),
                                 max_epochs=1, limit_train_batches=1)
    for (name, a), (_, b) in zip(treated.named_parameters(), usual.named_parameters()):
        if name == "1.weight":
            torch.testing.assert_close(a - INIT, (b - INIT) / C, rtol=1e-9, atol=1e-15)
        elif name == "0.weight":
            torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
