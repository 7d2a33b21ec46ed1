"""``attach`` with Lightning Fabric: either order around ``fabric.setup``, exact ``fabric.save`` / ``fabric.load``
resume, DDP on two CPU processes, and the Fabric example."""

from __future__ import annotations

import copy
import csv
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.fabric import Fabric
from torch import nn

from support.helpers import assert_same_params, dataset, loader, tiny_net
from support.launch import ROOT, load_script, run_script
from lightning_bninit import attach, bn_param_groups, init_bn_

# C a power of two: the scales' lr is the same double with the split, (lr * r) / c, and in the three groups,
# (lr / c) * r, so the runs are compared for equality (README, "Bit for bit, and c").
LR, WD, INIT, C, STEPS = 0.05, 1e-2, 0.1, 128.0, 6


def sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=LR, momentum=0.9, weight_decay=WD)


def cosine(optimizer: torch.optim.Optimizer) -> Any:
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2 * STEPS)


def fabric_steps(fabric: Fabric, model: nn.Module, optimizer: Any, scheduler: Any, skip: int = 0,
                 groups: int = 1) -> None:
    """Steps ``skip`` to ``STEPS - 1`` of the loop (one pass over the deterministic data), float64."""
    for i, (x, y) in enumerate(loader(dataset(), 8)):
        if i >= STEPS:
            break
        if i < skip:
            continue
        loss = nn.functional.cross_entropy(model(x), y)
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        assert len(optimizer.param_groups) == groups  # the user's groups between steps


def fabric_fit(start: nn.Module, order: str) -> nn.Module:
    """``order``: attach ``"before"`` or ``"after"`` fabric.setup, or ``"groups"``: the three-group optimizer."""
    fabric = Fabric(accelerator="cpu", devices=1, precision="64-true")
    net = copy.deepcopy(start)
    if order == "groups":
        init_bn_(net, INIT)
        optimizer = sgd([{k: v for k, v in g.items() if k != "bninit"}
                         for g in bn_param_groups(net, lr=LR, weight_decay=WD, scale_lr_divisor=C)])
        model, optimizer = fabric.setup(net, optimizer)
    elif order == "before":
        optimizer = sgd(net.parameters())
        attach(net, optimizer, init_scale=INIT, scale_lr_divisor=C)
        model, optimizer = fabric.setup(net, optimizer)
    else:
        model, optimizer = fabric.setup(net, sgd(net.parameters()))
        handle = attach(model, optimizer, init_scale=INIT, scale_lr_divisor=C)
        assert handle.layer_names == ["1", "4", "9"]  # the names of the wrapped module
    fabric_steps(fabric, model, optimizer, cosine(optimizer), groups=3 if order == "groups" else 1)
    return net


@pytest.mark.parametrize("order", ["before", "after"])
def test_either_order_around_setup_matches_three_groups(order: str) -> None:
    # Fabric's "64-true" casts the model's output to float32, so the reference runs under Fabric too.
    torch.manual_seed(0)
    start = tiny_net().double()
    assert_same_params(fabric_fit(start, order), fabric_fit(start, "groups"), rtol=0, atol=0)


def test_input_norm_after_setup_is_refused_with_the_order_to_use() -> None:
    fabric = Fabric(accelerator="cpu", devices=1)
    net = tiny_net()
    model, optimizer = fabric.setup(net, sgd(net.parameters()))
    with pytest.raises(ValueError, match=r"needs the model before fabric.setup wraps it.*attach\(model, optimizer"):
        attach(model, optimizer, input_norm=True)
    assert not hasattr(net, "bninit_input_norm")


def test_fabric_save_and_load_resume_exactly(tmp_path: Path) -> None:
    torch.manual_seed(1)
    start = tiny_net().double()

    def build() -> tuple[Fabric, nn.Module, Any, Any, Any]:
        fabric = Fabric(accelerator="cpu", devices=1, precision="64-true")
        net = copy.deepcopy(start)
        optimizer = torch.optim.Adam(net.parameters(), lr=LR, weight_decay=WD)
        handle = attach(net, optimizer, input_norm=True)
        model, optimizer = fabric.setup(net, optimizer)
        return fabric, model, optimizer, cosine(optimizer), handle

    fabric, model, optimizer, scheduler, _ = build()
    fabric_steps(fabric, model, optimizer, scheduler)
    full = model.module

    fabric, model, optimizer, scheduler, handle = build()
    half = STEPS // 2
    for i, (x, y) in enumerate(loader(dataset(), 8)):
        if i == half:
            break
        fabric.backward(nn.functional.cross_entropy(model(x), y))
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    fabric.save(tmp_path / "ckpt", {"model": model, "optimizer": optimizer, "scheduler": scheduler, "bninit": handle})

    fabric, model, optimizer, scheduler, handle = build()
    with torch.no_grad():
        handle.initial_values["1"]["scale"].fill_(7.0)  # must be replaced by the saved values
    rest = fabric.load(tmp_path / "ckpt", {"model": model, "optimizer": optimizer, "scheduler": scheduler,
                                           "bninit": handle})
    assert rest == {}
    assert torch.all(handle.initial_values["1"]["scale"] == INIT)
    fabric_steps(fabric, model, optimizer, scheduler, skip=half)
    assert_same_params(model.module, full, rtol=0, atol=0)


@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_ranks_identical(tmp_path: Path) -> None:
    run_script("fabric_ddp.py", tmp_path, cwd=tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key, value in ranks[0]["attach"].items():
        assert torch.equal(value, ranks[1]["attach"][key]), key
        assert torch.equal(value, ranks[0]["groups"][key]), key  # the three-group optimizer, under the same DDP
    for key, value in ranks[0]["after"].items():  # attach after fabric.setup, on the DDP-wrapped objects
        assert torch.equal(value, ranks[1]["after"][key]), key
    assert ranks[0]["after"]["1.weight"].ne(0.1).any() and (ranks[0]["after"]["1.weight"] - 0.1).abs().max() < 0.01
    scale = ranks[0]["attach"]["1.weight"]
    assert not torch.equal(scale, torch.full_like(scale, INIT)) and (scale - INIT).abs().max() < 0.01
    assert ranks[0]["input_norm"] and ranks[0]["warnings"] == 1 and ranks[1]["warnings"] == 0


def test_fabric_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("sklearn")
    example = load_script("examples/fabric/train.py")
    example.main(["--epochs", "1", "--log-every", "5", "--out", str(tmp_path)])
    with open(tmp_path / "fabric_digits" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(0, 18, 5))  # 1197 images / 64 = 18 steps
    layers = ["00_features_0_1", "01_features_1_1", "02_features_3_1"]  # the keys' labels: network order, no dots
    for row in rows:
        assert float(row["train_loss"]) > 0
        drifts = [float(row[f"bn_scale_drift_rel/{layer}"]) for layer in layers]
        assert float(row["bn/all/scale_drift_rel"]) == pytest.approx(sum(drifts) / 3, rel=1e-5)
        ratios = [float(row[f"bn_xhat_bound_ratio/{layer}"]) for layer in layers]
        assert float(row["bn/all/xhat_bound_ratio"]) == pytest.approx(max(ratios), rel=1e-6)
    assert float(rows[0]["bn/all/scale_min"]) == pytest.approx(0.1, abs=1e-3)  # attach set gamma 0.1
    assert re.search(r"test accuracy [01]\.\d+ after 18 steps", capsys.readouterr().out)


def test_fabric_example_default_budget_and_what_it_prints() -> None:
    example = load_script("examples/fabric/train.py")
    base = (ROOT / "examples" / "digits" / "base.yaml").read_text()
    assert f"max_epochs: {example.DEFAULT_EPOCHS}" in base  # the quickstart's chosen budget, not a second number
    args = example.parse([])
    assert args.epochs == example.DEFAULT_EPOCHS
    assert "measured 0.9820 for the bninit arm" in example.explain(0.98, 720, args)
    assert "0.9887 for the standard arm" in example.explain(0.98, 720, example.parse(["--init-scale", "1", "--c", "1"]))
    assert "not comparable" in example.explain(0.5, 360, example.parse(["--devices", "2"]))
