"""GroupSplitter, the pure core of the revised update: how each param group is split for one step."""

from __future__ import annotations

import pytest
import torch

from support.helpers import tiny_net
from lightning_bninit import bn_param_groups, find_bn_layers
from lightning_bninit.method.layers import param_roles
from lightning_bninit.method.update import GroupSplitter


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
