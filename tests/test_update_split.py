"""The group split of the revised update, in plain PyTorch: ``GroupSplitter`` (how each param group is split for one
step, and the split plan following the group's parameters), which optimizers the split is exact for (subclasses of
the separable optimizers), and the BN scales' learning rate under schedules with a floor.

Optimizer subclasses: Optimizer subclasses that keep their base class's step are accepted whatever the instantiation order.

PyTorch stores its step wrapper on the class of the first instance, so the order is process-global: each order runs
in a fresh process. Separability is decided by the class that defines ``step``, not by comparing ``step`` objects.

Schedule floors: What the BN scales' learning rate is under a schedule, with the step split (``attach``; ``BNInit`` uses the same
split) and with separate param groups (``bn_param_groups``, the authors' code).

The split steps the scales with ``scheduled_lr / c``; a separate group is scheduled from its own base lr ``lr / c``.
Without a floor the two are the same number up to rounding (bit for bit when c is a power of two); with a floor
(``CosineAnnealingLR(eta_min=...)``, ``ReduceLROnPlateau(min_lr=...)``) the split's scales floor at ``floor / c`` and
the separate group's at ``floor``. For a cosine: separate - split = eta_min (1 - 1/c) (1 - f_t),
f_t = (1 + cos(pi t / T)) / 2.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from support.helpers import dataset, loader, tiny_net
from support.launch import run_script
from lightning_bninit import attach, bn_param_groups, find_bn_layers, init_bn_
from lightning_bninit.method.layers import param_roles
from lightning_bninit.method.update import GroupSplitter, is_separable, step_owner

LR, ETA_MIN, T = 0.1, 1e-4, 6
MIN_LR = LR / 512  # the plateau's floor: reached exactly by LR / 4**k (exact scalings), below LR / c for c = 128
U = 2.0**-53  # unit roundoff of float64: fl(x op y) = (x op y)(1 + d), |d| <= U

Schedule = Callable[[torch.optim.Optimizer], Any]


# --- 1. GroupSplitter ----------------------------------------------------------------------------------------

def splitter(net: torch.nn.Module, c: float, exempt: bool = True) -> GroupSplitter:
    return GroupSplitter(param_roles(find_bn_layers(net).values()), c, exempt)


def shapes(optimizer: torch.optim.Optimizer) -> list[tuple[int, float, float]]:
    return [(len(g["params"]), g["lr"], g["weight_decay"]) for g in optimizer.param_groups]


def test_full_split_with_weight_decay() -> None:
    net = tiny_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-3)
    original = opt.param_groups
    split = splitter(net, 100.0)
    split.split(opt)
    assert shapes(opt) == [(7, 0.1, 1e-3), (3, pytest.approx(1e-3), 0.0), (3, 0.1, 0.0)]
    split.restore(opt)
    assert opt.param_groups is original and shapes(opt) == [(13, 0.1, 1e-3)]


def test_only_scales_move_when_there_is_no_decay_to_remove() -> None:
    net = tiny_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=0.0)
    split = splitter(net, 100.0)
    split.split(opt)
    assert shapes(opt) == [(10, 0.1, 0.0), (3, pytest.approx(1e-3), 0.0)]
    kept = opt.param_groups[0]["params"]
    order = [id(p) for p in net.parameters()]
    assert [order.index(id(p)) for p in kept] == sorted(order.index(id(p)) for p in kept)  # user's order kept


def test_baseline_arm_without_decay_leaves_the_optimizer_alone() -> None:
    net = tiny_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=0.0)
    original = opt.param_groups
    split = splitter(net, 1.0)
    split.split(opt)
    assert opt.param_groups is original
    split.restore(opt)
    assert opt.param_groups is original


def test_decay_removed_without_lr_change() -> None:
    net = tiny_net()
    opt = torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=1e-2)
    split = splitter(net, 1.0)
    split.split(opt)
    assert shapes(opt) == [(7, 0.1, 1e-2), (3, 0.1, 0.0), (3, 0.1, 0.0)]


def test_no_exemption_keeps_decay_on_scales() -> None:
    net = tiny_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-3)
    splitter(net, 10.0, exempt=False).split(opt)
    assert shapes(opt) == [(10, 0.1, 1e-3), (3, pytest.approx(0.01), 1e-3)]


def test_groups_built_by_bn_param_groups_are_left_alone() -> None:
    net = tiny_net()
    opt = torch.optim.SGD(bn_param_groups(net, lr=0.1, weight_decay=1e-3), lr=0.1)
    before = shapes(opt)
    splitter(net, 100.0).split(opt)
    assert shapes(opt) == before


def test_param_names_follow_their_params() -> None:
    net = tiny_net()
    opt = torch.optim.SGD(net.named_parameters(), lr=0.1, weight_decay=1e-3)
    splitter(net, 100.0).split(opt)
    by_id = {id(p): n for n, p in net.named_parameters()}
    for group in opt.param_groups:
        assert group["param_names"] == [by_id[id(p)] for p in group["params"]]
    assert opt.param_groups[1]["param_names"] == ["1.weight", "4.weight", "9.weight"]


def test_a_changed_group_is_planned_again() -> None:
    net = tiny_net()
    head = torch.nn.BatchNorm1d(3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-3)
    split = GroupSplitter(param_roles([*find_bn_layers(net).values(), head]), 100.0, True)
    split.split(opt), split.restore(opt)
    opt.add_param_group({"params": list(head.parameters())})
    split.split(opt)
    # The new group holds BN parameters only: it becomes a scale group and a shift group.
    assert shapes(opt) == [(7, 0.1, 1e-3), (3, pytest.approx(1e-3), 0.0), (3, 0.1, 0.0),
                           (1, pytest.approx(1e-3), 0.0), (1, 0.1, 0.0)]


def test_a_parameter_replaced_in_place_is_stepped() -> None:
    net = tiny_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-3)
    split = GroupSplitter(param_roles(find_bn_layers(net).values()), 100.0, True)
    split.split(opt), split.restore(opt)
    new = nn.Parameter(torch.zeros(3))
    opt.param_groups[0]["params"][0] = new  # same list, same length
    split.split(opt)
    stepped = [p for g in opt.param_groups for p in g["params"]]
    assert any(p is new for p in stepped) and not any(p is net[0].weight for p in stepped)


# --- 2. optimizer subclasses ---------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["subclass_first", "base_first"])
def test_subclasses_keep_the_exact_update_in_either_order(order: str) -> None:
    result = json.loads(run_script("optimizer_subclass.py", order, timeout=240).stdout.strip().splitlines()[-1])
    # The process really was in the situation asked for: PyTorch gave the subclasses a step of their own, or not.
    assert set(result["own_step"].values()) == {order == "subclass_first"}
    for name, diff in result["max_diff"].items():
        assert diff < 1e-10, name  # the trajectory of bn_param_groups, in float64
    assert re.search(r"optimizer \S*Overrides: .*separable_optimizers=\[\S*Overrides\]", result["refused_override"])


def test_step_owner_looks_through_pytorchs_wrapper_only() -> None:
    class Named(torch.optim.SGD):
        pass

    class Overrides(torch.optim.SGD):
        def step(self, closure=None):  # noqa: ANN001, ANN201
            return super().step(closure)

    params = [torch.nn.Parameter(torch.zeros(1))]
    for cls in (Named, Overrides):
        cls(params, lr=0.1)  # instantiated: PyTorch wraps (or has wrapped) their step
    assert step_owner(Named) is torch.optim.SGD and step_owner(torch.optim.AdamW) is step_owner(torch.optim.Adam)
    assert step_owner(Overrides) is Overrides
    assert is_separable(Named(params, lr=0.1)) and not is_separable(Overrides(params, lr=0.1))
    assert is_separable(Overrides(params, lr=0.1), extra=[Overrides])
    assert not is_separable(torch.optim.LBFGS(params))


# --- 3. schedule floors --------------------------------------------------------------------------------------

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
