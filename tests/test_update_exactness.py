"""The revised update equals a hand-built three-group optimizer, to float64 round-off, across optimizers."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch

from support.groups import GroupsInPlace
from support.helpers import (
    Classifier, assert_same_params, dataset, loader, optimizer_cases, plain_loop, reference_fit, tiny_net, trainer,
)
from lightning_bninit import BNInit, bn_param_groups, find_bn_layers, init_bn_

# C is a power of two, so the scales' lr is the same double whichever side divides by c: the step split's
# (lr * r) / c and the three groups' (lr / c) * r under a schedule (factor r) differ only in the exponent, which
# commutes with rounding (with c = 100 they can differ in the last bit, which Adam-type steps amplify). Both sides
# then do the same arithmetic and are compared for equality.
LR, WD, INIT, C = 0.05, 1e-2, 0.1, 128.0
STEPS, EPOCHS = 6, 2

OPTIMIZERS = optimizer_cases(LR, WD)

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
    in_place = GroupsInPlace()
    trainer(precision="64-true", callbacks=[callback or BNInit(INIT, C), in_place], **trainer_kwargs).fit(
        model, loader(dataset() if ds is None else ds, 8)
    )
    assert in_place.checks == trainer_kwargs["max_epochs"] * trainer_kwargs["limit_train_batches"] + 1
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


def grad_divided_fit(start, make_optimizer, divisor: float, exempt: bool = True):
    """The wrong reading of the rule: BN scales at the full lr, their gradients divided by c."""
    net = copy.deepcopy(start)
    init_bn_(net, INIT)
    for bn in find_bn_layers(net).values():
        bn.weight.register_hook(lambda grad: grad / divisor)
    groups = [{k: v for k, v in g.items() if k != "bninit"}
              for g in bn_param_groups(net, lr=make_optimizer.keywords["lr"], weight_decay=WD, scale_lr_divisor=1.0,
                                       exempt_weight_decay=exempt)]
    optimizer = make_optimizer(groups)
    plain_loop(net, optimizer, None, dataset(), STEPS, EPOCHS)
    return net


@pytest.mark.parametrize(("name", "exempt"), [("adam", True), ("rmsprop", True), ("sgd_momentum", False)])
def test_differs_from_dividing_the_gradient(name: str, exempt: bool) -> None:
    """lr / c is not grad / c for Adam-type optimizers (they normalize the gradient) nor with weight decay on the
    scales: the two trajectories differ by far more than round-off, and the callback follows lr / c."""
    torch.manual_seed(2)
    start, trained = fit_with_callback(OPTIMIZERS[name], None, callback=BNInit(INIT, C, exempt_weight_decay=exempt))
    divided = grad_divided_fit(start, OPTIMIZERS[name], C, exempt)
    reference = copy.deepcopy(start)
    init_bn_(reference, INIT)
    groups = [{k: v for k, v in g.items() if k != "bninit"} for g in bn_param_groups(
        reference, lr=OPTIMIZERS[name].keywords["lr"], weight_decay=WD, scale_lr_divisor=C, exempt_weight_decay=exempt)]
    plain_loop(reference, OPTIMIZERS[name](groups), None, dataset(), STEPS, EPOCHS)
    gap = max(float((a - b).abs().max()) for a, b in zip(trained.parameters(), divided.parameters()))
    assert gap > 1e-6, gap
    assert_same_params(trained, reference)


def test_grad_divided_reference_equals_lr_divided_for_plain_sgd() -> None:
    """Guards the reference above: without momentum, weight decay on the scales or adaptivity, grad / c and lr / c
    are the same update, and the two references agree."""
    torch.manual_seed(2)
    sgd = partial(torch.optim.SGD, lr=LR, weight_decay=WD)
    start = tiny_net().double()
    expected = reference_fit(start, dataset(), sgd, None, STEPS, EPOCHS, init_scale=INIT, divisor=C, lr=LR,
                             weight_decay=WD)
    # c is a power of two: lr * (grad / c) and (lr / c) * grad are the same double, so the runs are equal.
    assert_same_params(grad_divided_fit(start, sgd, C), expected)


def test_gradient_accumulation_and_clipping() -> None:
    """Clipping by value, which is elementwise. Lightning clips by norm after ``on_before_optimizer_step``, where the
    groups are split: the norm then sums the same per-parameter norms in the split's order, and the clip factor can
    differ from the reference's in the last bit. Norm clipping is compared exactly in ``test_attach.py``, whose
    plain loop clips before the step."""
    torch.manual_seed(3)
    start, trained = fit_with_callback(
        OPTIMIZERS["sgd_momentum"], SCHEDULERS["cosine"], ds=dataset(96), accumulate_grad_batches=2,
        gradient_clip_val=0.05, gradient_clip_algorithm="value",
    )
    expected = reference_fit(
        start, dataset(96), OPTIMIZERS["sgd_momentum"], SCHEDULERS["cosine"], STEPS, EPOCHS,
        init_scale=INIT, divisor=C, lr=LR, weight_decay=WD, accumulate=2, clip_value=0.05,
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
            # a = fl(INIT - fl(lr / c) g) and b = fl(INIT - lr g), the product rounded or fused alike; fl(lr / c) and
            # the division below are exact (c a power of two), and so are a - INIT and b - INIT (Sterbenz: a, b
            # within a factor 2 of INIT). What is left is the rounding of a and of b: <= U |a| + U |b| / c.
            bound = 2.0**-53 * (a.abs() + b.abs() / C)
            assert torch.all(((a - INIT) - (b - INIT) / C).abs() <= bound)
        elif name == "0.weight":
            assert torch.equal(a, b)  # not a BN parameter: the same step in both runs
