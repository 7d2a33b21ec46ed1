"""``exempt_weight_decay="1d"`` reproduces the optimizer of the authors' ``train.py`` (``shared/docs/method.md``,
section 2), checked against a hand-written reimplementation of its rules on their CIFAR ResNet-18, in float64, at
every step.

What "exactly" means here: both sides do the same floating-point operations, so the parameters are compared for
equality. The one operation that differs is where the scales' learning rate is divided by c: the authors' group
holds ``lr / c`` and the cosine schedule multiplies it by its ratio each epoch, ``(lr / c) * r``, while the step
split divides the scheduled lr, ``(lr * r) / c``. For c a power of two the division only changes the exponent, which
commutes with rounding, so both are the same double; the trajectory tests therefore use c = 128. (c = 100 is
compared at the level of the learning rate, with a tolerance derived from the rounding: ``test_update_split.py``.)
The authors' cosine has ``eta_min = 1e-8``; the step split floors the scales at ``eta_min / c``, so only
``bn_param_groups(..., exempt_weight_decay="1d")`` follows it there (last test; ``test_update_split.py``).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from support.helpers import trainer
from lightning_bninit import BNInit, attach, bn_param_groups, init_bn_

torchvision = pytest.importorskip("torchvision")

LR, MOMENTUM, WD, INIT = 0.1, 0.9, 5e-4, 0.1
C = 128.0  # a power of two: (lr / c) * r == (lr * r) / c in binary floating point (module docstring)
EPOCHS, BATCHES, BATCH = 3, 2, 8
AUTHORS_ETA_MIN = 1e-8

Reference = tuple[list[str], "AuthorsNet"]  # fingerprints after each step, the trained network


def authors_resnet18() -> nn.Module:
    """torchvision's ResNet-18 as the authors train it on CIFAR: a 3x3 stride-1 first convolution, no max-pool,
    Kaiming-normal (fan-in, ReLU) convolutions, zero biases. Built in float32, as they do."""
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    nn.init.zeros_(net.fc.bias)
    return net


class AuthorsNet(nn.Module):
    """The input BN prepended to the network: scale init * 0.58, shift frozen at 0 (hand-written, no package code)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.input_bn = nn.BatchNorm2d(3)
        self.body = body
        with torch.no_grad():
            self.input_bn.weight.fill_(INIT * 0.58)
            for module in body.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.weight.fill_(INIT)
                    module.bias.zero_()
        self.input_bn.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.input_bn(x))


def authors_optimizer(net: AuthorsNet, divisor: float) -> torch.optim.SGD:
    """The official rules: multi-dimensional weights with decay; all other 1-D parameters without; BN scales (the
    input BN's included) without decay at lr / c."""
    scales = [m.weight for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    scale_ids = {id(p) for p in scales}
    trained = [p for p in net.parameters() if p.requires_grad and id(p) not in scale_ids]
    return torch.optim.SGD([
        {"params": [p for p in trained if p.ndim > 1], "weight_decay": WD},
        {"params": [p for p in trained if p.ndim == 1], "weight_decay": 0.0},
        {"params": scales, "lr": LR / divisor, "weight_decay": 0.0},
    ], lr=LR, momentum=MOMENTUM)


def cosine(optimizer: torch.optim.Optimizer, eta_min: float = 0.0) -> Any:
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS, eta_min=eta_min)


def data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(BATCHES * BATCH, 3, 8, 8, generator=g, dtype=torch.float64)  # images in [0, 1]
    y = torch.randint(0, 10, (BATCHES * BATCH,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def ordered(input_bn: nn.Module, body: nn.Module) -> list[torch.Tensor]:
    """The parameters in one order for every run: the input BN's, then the network's own."""
    return [input_bn.weight, input_bn.bias, *(p for n, p in body.named_parameters() if "bninit_input_norm" not in n)]


def fingerprint(params: list[torch.Tensor]) -> str:
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    assert flat.dtype == torch.float64
    return hashlib.sha256(flat.numpy().tobytes()).hexdigest()


def plain_fit(net: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, params: Callable[[], list]) -> list:
    """SGD over the batches, the scheduler stepped per epoch; the parameters' fingerprint after every step."""
    prints = []
    net.train()
    for _ in range(EPOCHS):
        for x, y in data():
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
            prints.append(fingerprint(params()))
        scheduler.step()
    return prints


def reference_run(start: nn.Module, divisor: float = C, eta_min: float = 0.0) -> tuple[list[str], AuthorsNet]:
    net = AuthorsNet(copy.deepcopy(start)).double()
    optimizer = authors_optimizer(net, divisor)
    return plain_fit(net, optimizer, cosine(optimizer, eta_min), lambda: ordered(net.input_bn, net.body)), net


def attach_run(start: nn.Module, exempt: Any) -> tuple[list[str], nn.Module]:
    net = copy.deepcopy(start)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    attach(net, optimizer, init_scale=INIT, scale_lr_divisor=C, exempt_weight_decay=exempt, input_norm=True)
    net.double()  # built and treated in float32 like the reference, trained in float64 (as Lightning's 64-true)
    return plain_fit(net, optimizer, cosine(optimizer), lambda: ordered(net.bninit_input_norm, net)), net


class UserModule(pl.LightningModule):
    """The user's side: ``SGD(self.parameters(), weight_decay=...)`` and a per-epoch cosine, nothing else."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.net = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine(optimizer), "interval": "epoch"}}


class Fingerprints(pl.Callback):
    def __init__(self) -> None:
        self.prints: list[str] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.prints.append(fingerprint(ordered(pl_module.bninit_input_norm, pl_module.net)))


def bninit_run(start: nn.Module) -> tuple[list[str], nn.Module]:
    module, prints = UserModule(copy.deepcopy(start)), Fingerprints()
    callback = BNInit(INIT, C, exempt_weight_decay="1d", input_norm=True, monitor=False)
    trainer(precision="64-true", callbacks=[callback, prints], max_epochs=EPOCHS).fit(module, data())
    return prints.prints, module


def first_difference(a: list[str], b: list[str]) -> int | None:
    assert len(a) == len(b) == EPOCHS * BATCHES
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


@pytest.fixture(scope="module")
def start() -> nn.Module:
    torch.manual_seed(0)
    return authors_resnet18()


@pytest.fixture(scope="module")
def reference(start: nn.Module) -> Reference:
    return reference_run(start)


def test_one_d_through_a_trainer_equals_the_authors_optimizer_at_every_step(
    start: nn.Module, reference: Reference
) -> None:
    prints, module = bninit_run(start)
    assert first_difference(prints, reference[0]) is None
    for got, want in zip(ordered(module.bninit_input_norm, module.net), ordered(*_parts(reference[1]))):
        assert torch.equal(got, want)


def test_one_d_through_attach_equals_the_authors_optimizer_at_every_step(
    start: nn.Module, reference: Reference
) -> None:
    prints, _ = attach_run(start, "1d")
    assert first_difference(prints, reference[0]) is None


def test_bn_only_exemption_parts_from_the_authors_at_the_second_step(
    start: nn.Module, reference: Reference
) -> None:
    """``True`` decays ``fc.bias``: zero at the start, so the first step agrees and the second does not."""
    prints, _ = attach_run(start, True)
    assert first_difference(prints, reference[0]) == 1


def test_bn_param_groups_one_d_equals_the_authors_with_their_floor_and_c_100(start: nn.Module) -> None:
    """The three groups follow the authors' cosine floor too (eta_min = 1e-8, a floor of each group's own) and any c:
    both sides compute ``lr / c`` once and schedule each group from its own base lr."""
    expected, _ = reference_run(start, divisor=100.0, eta_min=AUTHORS_ETA_MIN)
    net = copy.deepcopy(start)
    init_bn_(net, INIT)
    net = AuthorsNet(net)  # the input BN as the authors add it; init_bn_ left it alone (not in net yet)
    groups = bn_param_groups(net, lr=LR, weight_decay=WD, scale_lr_divisor=100.0, exempt_weight_decay="1d")
    names = {id(p): n for n, p in net.named_parameters()}
    assert [sorted(names[id(p)] for p in g["params"]) for g in groups] == _authors_names(net)
    net.double()
    optimizer = torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM)
    prints = plain_fit(net, optimizer, cosine(optimizer, AUTHORS_ETA_MIN), lambda: ordered(net.input_bn, net.body))
    assert first_difference(prints, expected) is None


def _authors_names(net: AuthorsNet) -> list[list[str]]:
    """Names in the authors' groups, in ``bn_param_groups``' order: decayed weights, BN scales, other 1-D params."""
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    scales = {f"{name}.weight" for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)}
    return [sorted(n for n, p in named if p.ndim > 1),
            sorted(n for n, p in named if n in scales),
            sorted(n for n, p in named if p.ndim == 1 and n not in scales)]


def _parts(net: AuthorsNet) -> tuple[nn.Module, nn.Module]:
    return net.input_bn, net.body


def test_exempt_weight_decay_values_are_checked_and_the_grid_takes_one_d() -> None:
    from lightning_bninit.experiments.grid import _CHOICES, expand_grid
    from lightning_bninit.method.settings import EXEMPT_WEIGHT_DECAY_VALUES

    assert set(_CHOICES["exempt_weight_decay"]) == {v for v in EXEMPT_WEIGHT_DECAY_VALUES if isinstance(v, str)}
    for bad in ("1D", 1, None):
        with pytest.raises(ValueError, match=rf"exempt_weight_decay must be True, False or '1d'.*got .*{bad!r}"):
            BNInit(exempt_weight_decay=bad)
    with pytest.raises(ValueError, match="exempt_weight_decay must be"):
        bn_param_groups(nn.BatchNorm1d(2), lr=0.1, exempt_weight_decay="yes")
    arms = expand_grid({"exempt_weight_decay": [True, "1d"]}, ["standard", "bninit"])
    assert list(arms.aliases) == ["exempt_weight_decay-true"]  # a built-in arm's settings
    assert arms.arms == {"exempt_weight_decay-1d": ["--bninit=true", "--bninit.exempt_weight_decay=1d"]}


def test_one_d_refuses_lazy_parameters_without_a_shape() -> None:
    net = nn.Sequential(nn.LazyLinear(4), nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match=r"exempt_weight_decay='1d' decides by shape, and parameter '0.weight'"):
        attach(net, torch.optim.SGD(net.parameters(), lr=0.1), exempt_weight_decay="1d")

