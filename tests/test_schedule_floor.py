"""What the BN scales' learning rate is under a schedule, with the step split (``attach``; ``BNInit`` uses the same
split) and with separate param groups (``bn_param_groups``, the authors' code).

The split steps the scales with ``scheduled_lr / c``; a separate group is scheduled from its own base lr ``lr / c``.
Without a floor the two are the same number up to rounding (bit for bit when c is a power of two); with a floor
(``CosineAnnealingLR(eta_min=...)``, ``ReduceLROnPlateau(min_lr=...)``) the split's scales floor at ``floor / c`` and
the separate group's at ``floor``. For a cosine: separate - split = eta_min (1 - 1/c) (1 - f_t),
f_t = (1 + cos(pi t / T)) / 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from support.helpers import dataset, loader, tiny_net
from lightning_bninit import attach, bn_param_groups, init_bn_

LR, ETA_MIN, T = 0.1, 1e-4, 6
MIN_LR = LR / 512  # the plateau's floor: reached exactly by LR / 4**k (exact scalings), below LR / c for c = 128
U = 2.0**-53  # unit roundoff of float64: fl(x op y) = (x op y)(1 + d), |d| <= U

Schedule = Callable[[torch.optim.Optimizer], Any]


def cosine(eta_min: float) -> Schedule:
    return lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T, eta_min=eta_min)


def plateau(opt: torch.optim.Optimizer) -> Any:
    return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.25, patience=0, min_lr=MIN_LR)


def step_schedule(scheduler: Any) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(1.0)  # never improves: a reduction after every step, down to min_lr
    else:
        scheduler.step()


def scale_lrs_with_attach(make: Schedule, divisor: float) -> tuple[list[float], list[float]]:
    """The lr the first BN scale steps with inside each ``optimizer.step()`` (seen by a pre-hook registered after
    attach's), and the user's group lr at that step."""
    torch.manual_seed(0)
    net = tiny_net().double()
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9, weight_decay=1e-2)
    attach(net, optimizer, scale_lr_divisor=divisor)
    seen: list[float] = []
    optimizer.register_step_pre_hook(lambda opt, *_: seen.append(_lr_of(opt, net[1].weight)))
    users = _train(net, optimizer, make(optimizer))
    return seen, users


def scale_lrs_with_groups(make: Schedule, divisor: float) -> list[float]:
    torch.manual_seed(0)
    net = tiny_net().double()
    init_bn_(net, 0.1)
    optimizer = torch.optim.SGD(bn_param_groups(net, lr=LR, weight_decay=1e-2, scale_lr_divisor=divisor), lr=LR,
                                momentum=0.9)
    seen: list[float] = []
    optimizer.register_step_pre_hook(lambda opt, *_: seen.append(_lr_of(opt, net[1].weight)))
    _train(net, optimizer, make(optimizer))
    return seen


def _lr_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> float:
    (lr,) = [g["lr"] for g in optimizer.param_groups if any(p is param for p in g["params"])]
    return lr


def _train(net: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> list[float]:
    """T + 1 steps, the schedule stepped after each: the last step runs at the schedule's end (cosine: t = T)."""
    users = []
    batches = iter(loader(dataset(8 * (T + 1))))
    for _ in range(T + 1):
        x, y = next(batches)
        users.append(optimizer.param_groups[0]["lr"])
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        step_schedule(scheduler)
    return users


@pytest.mark.parametrize(("make", "floor"), [(cosine(ETA_MIN), ETA_MIN), (plateau, MIN_LR)],
                         ids=["cosine_eta_min", "plateau_min_lr"])
def test_a_floor_is_floor_over_c_with_the_split_and_floor_with_separate_groups(make: Schedule, floor: float) -> None:
    c = 128.0
    split, users = scale_lrs_with_attach(make, c)
    separate = scale_lrs_with_groups(make, c)
    assert split == [lr / c for lr in users]  # the split's arithmetic, at every step
    # The end of the schedule is exactly its floor: cosine's factor is 1 + cos(pi) = 0 at t = T (cos(pi) is -1.0 in
    # float64), and the plateau schedule's max(lr * factor, min_lr) has reached min_lr.
    assert users[-1] == floor
    assert split[-1] == floor / c
    assert separate[-1] == floor
    assert all(s >= floor for s in separate) and split[-1] < floor


def test_cosine_gap_is_the_formula() -> None:
    """separate - split = eta_min (1 - 1/c) (1 - f_t): the difference grows as the schedule reaches its floor."""
    c = 128.0
    split, _ = scale_lrs_with_attach(cosine(ETA_MIN), c)
    separate = scale_lrs_with_groups(cosine(ETA_MIN), c)
    for t, (a, b) in enumerate(zip(split, separate)):
        f = (1 + math.cos(math.pi * t / T)) / 2
        gap = ETA_MIN * (1 - 1 / c) * (1 - f)
        # Both sides schedule with the same computed ratios r_k = fl(n_k / n_(k-1)), n_k = fl(1 + cos(pi k / T))
        # (n_k is the double the formula's f uses, times 2), so in exact arithmetic on those ratios
        # b - a = eta_min (1 - 1/c) (1 - F_t) with F_t = f (1 + d)^t: within eta_min t U of the formula. The
        # recursion lr_k = fl(fl(r_k fl(lr_(k-1) - eta_min)) + eta_min) adds 3 roundings a step, each <= U times a
        # value <= its base lr, and r_k <= 1 carries an earlier error over unamplified: <= (3t + 1) U LR / c for the
        # separate group (its base fl(LR / c) one more rounding), <= 3t U LR / c + U a for the split's
        # fl(lr_t / c). The test's own b - a and gap add <= U |b - a| + 5 U eta_min; one U eta_min more covers the
        # second-order terms (relative size t U). In all:
        bound = 2 * (3 * t + 1) * U * LR / c + (t + 7) * U * ETA_MIN
        assert abs((b - a) - gap) <= bound, (t, b - a, gap, bound)


@pytest.mark.parametrize("c", [128.0, 100.0])
def test_without_a_floor_split_and_separate_groups_agree_to_rounding(c: float) -> None:
    """No floor: the split's ``fl(fl(r_t ... fl(r_1 lr)) / c)`` against the separate group's
    ``fl(r_t ... fl(r_1 fl(lr / c)))`` (torch's cosine recursion with eta_min = 0: ``r_t * (lr - 0) + 0``, the
    subtraction and addition of 0 exact, r_t the same double on both sides). Each side is the exact
    (lr / c) r_1 ... r_t times t + 1 factors (1 + d), |d| <= U, so their ratio lies within
    ((1 + U) / (1 - U))^(t + 1) = exp(2 (t + 1) atanh U) of 1, i.e. |sep - split| <= 2 (t + 1) U (1 + 1e-6) |split|;
    the factor 1 + 1e-6 covers the neglected terms (relative size (t + 1) U ~ 1e-15) and the rounding of the
    bound itself. For c a power of two the division by c is exact and commutes with rounding: equality."""
    split, _ = scale_lrs_with_attach(cosine(0.0), c)
    separate = scale_lrs_with_groups(cosine(0.0), c)
    assert split[-1] == separate[-1] == 0.0
    if math.log2(c).is_integer():
        assert split == separate
        return
    for t, (a, b) in enumerate(zip(split, separate)):
        assert abs(a - b) <= 2 * (t + 1) * U * (1 + 1e-6) * abs(a), (t, a, b)
