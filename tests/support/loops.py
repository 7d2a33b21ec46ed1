"""Pure-PyTorch test helpers (no Lightning import, so that child processes start fast): the tiny BN network, its
data, the optimizer settings of the equivalence tests, a plain training loop and the hand-built reference."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_bninit import bn_param_groups, init_bn_

OptimizerFactory = Callable[[Any], torch.optim.Optimizer]


def optimizer_cases(lr: float, wd: float) -> dict[str, OptimizerFactory]:
    """PyTorch's separable optimizers in the settings the equivalence tests use (RMSprop at lr / 10)."""
    return {
        "sgd": partial(torch.optim.SGD, lr=lr, weight_decay=wd),
        "sgd_momentum": partial(torch.optim.SGD, lr=lr, momentum=0.9, weight_decay=wd),
        "sgd_nesterov": partial(torch.optim.SGD, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd),
        "adam": partial(torch.optim.Adam, lr=lr, weight_decay=wd),
        "adam_amsgrad": partial(torch.optim.Adam, lr=lr, weight_decay=wd, amsgrad=True),
        "adamw": partial(torch.optim.AdamW, lr=lr, weight_decay=wd),
        "rmsprop": partial(torch.optim.RMSprop, lr=lr / 10, weight_decay=wd),
        "rmsprop_momentum_centered": partial(torch.optim.RMSprop, lr=lr / 10, momentum=0.9, centered=True,
                                             weight_decay=wd),
        "adagrad": partial(torch.optim.Adagrad, lr=lr, weight_decay=wd),
        "nadam": partial(torch.optim.NAdam, lr=lr, weight_decay=wd),
        "radam": partial(torch.optim.RAdam, lr=lr, weight_decay=wd),
        "adamax": partial(torch.optim.Adamax, lr=lr, weight_decay=wd),
    }


def tiny_net() -> nn.Sequential:
    """Conv-BN-ReLU, Conv-BN-ReLU, pool, Linear-BN1d, Linear: BN in 2d and 1d, biases on the non-BN layers."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3),
    )


def dataset(n: int = 48, seed: int = 0, dtype: torch.dtype = torch.float64) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 6, 6, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return TensorDataset(x, y)


def loader(ds: TensorDataset, batch_size: int = 8) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=False)


def reference_fit(
    net: nn.Module,
    ds: TensorDataset,
    make_optimizer: OptimizerFactory,
    make_scheduler: Callable[[torch.optim.Optimizer], Any] | None,
    steps_per_epoch: int,
    epochs: int,
    *,
    init_scale: float,
    divisor: float,
    lr: float,
    weight_decay: float,
    batch_size: int = 8,
    accumulate: int = 1,
    clip_norm: float | None = None,
    clip_value: float | None = None,
) -> nn.Module:
    """The paper's method written by hand: re-init, a three-group optimizer, a plain loop."""
    net = copy.deepcopy(net)
    init_bn_(net, init_scale)
    groups = bn_param_groups(net, lr=lr, weight_decay=weight_decay, scale_lr_divisor=divisor)
    for group in groups:
        group.pop("bninit")
    optimizer = make_optimizer(groups)
    plain_loop(net, optimizer, make_scheduler(optimizer) if make_scheduler else None, ds, steps_per_epoch, epochs,
               batch_size=batch_size, accumulate=accumulate, clip_norm=clip_norm, clip_value=clip_value)
    return net


def plain_loop(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    ds: TensorDataset,
    steps_per_epoch: int,
    epochs: int,
    *,
    batch_size: int = 8,
    accumulate: int = 1,
    clip_norm: float | None = None,
    clip_value: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
    inf_at: frozenset[int] = frozenset(),
    after_step: Callable[[int], None] | None = None,
) -> None:
    """A plain training loop: accumulation, clipping (after unscaling), an optional GradScaler that skips the steps
    in ``inf_at`` (an infinite loss), the scheduler stepped every optimizer step, ``after_step(step)`` after it."""
    data = loader(ds, batch_size)
    net.train()
    step = 0
    for _ in range(epochs):
        for i, (x, y) in enumerate(data):
            if i >= steps_per_epoch * accumulate:
                break
            loss = nn.functional.cross_entropy(net(x), y) / accumulate
            if step in inf_at:
                loss = loss * float("inf")
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if (i + 1) % accumulate:
                continue
            if scaler is not None:
                scaler.unscale_(optimizer)
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), clip_norm)
            if clip_value is not None:
                torch.nn.utils.clip_grad_value_(net.parameters(), clip_value)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad()
            if scheduler is not None:
                scheduler.step()
            if after_step is not None:
                after_step(step)
            step += 1


class PlainSGD(torch.optim.Optimizer):
    """A third-party optimizer whose step treats each group on its own: p -= lr * (grad + weight_decay * p)."""

    def __init__(self, params: Any, lr: float, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            self._update()
        return loss

    def _update(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad + group["weight_decay"] * p, alpha=-group["lr"])


def assert_same_params(a: nn.Module, b: nn.Module, rtol: float = 0.0, atol: float = 0.0) -> None:
    """Equal parameters: by default bit for bit, for runs whose arithmetic is the same operation for operation (a
    tolerance, where one is passed, must be derived from the rounding of the operations that differ)."""
    sa, sb = dict(a.named_parameters()), dict(b.named_parameters())
    assert sa.keys() == sb.keys()
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
