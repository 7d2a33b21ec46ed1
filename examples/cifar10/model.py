"""The paper's CIFAR ResNet-18, a narrow VGG-11 with BN, and a LightningModule that trains either.

``cifar_resnet18`` is torchvision's ResNet-18 (``torchvision.models.resnet18``) with the CIFAR stem of
the paper's official code: a 3x3 stride-1 first convolution and no max-pool; conv weights Kaiming
normal (fan-in, ReLU), all biases zero (the linear layer's weight keeps PyTorch's default init).
torchvision's ResNet has no width argument (``width_per_group`` only applies to Bottleneck blocks), so
for ``width != 64`` the four stages are rebuilt with torchvision's own ``ResNet._make_layer`` and
``BasicBlock`` at widths ``width * (1, 2, 4, 8)``; module names and structure stay those of
torchvision's resnet18, and ``width=64`` is exactly the paper's network (11.17 M parameters).

``cifar_vgg11_bn`` is VGG-11 with BN: eight 3x3 convs without bias at widths ``width * (1, 2, 4, 4, 8, 8,
8, 8)``, each followed by BN and ReLU, a 2x2 max-pool after the 1st, 2nd, 4th, 6th and 8th conv, global
average pooling and one linear layer (``width=16`` gives the widths 16, 32, 64, 64, 128, 128, 128, 128
of the project's CPU-sized experiment; ``width=64`` is the usual VGG-11). Same init as the ResNet.

Weight decay (``CIFARClassifier.configure_optimizers``): as in the official code, only the conv and
linear *weights* (parameters with more than one dimension) get weight decay; BN scales/shifts and
biases get none. With ``BNInit(exempt_weight_decay=True)`` the callback's exemption is therefore
already satisfied; the callback still moves the BN scales to their own group with ``lr / c``.
"""

from __future__ import annotations

import math
from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import nn

try:
    from lightning.pytorch import LightningModule
except ImportError:  # pragma: no cover
    LightningModule = nn.Module  # type: ignore[assignment,misc]


def init_weights(net: nn.Module) -> None:
    """Kaiming normal (fan-in, ReLU) conv weights, zero biases everywhere, BN gamma 1 / beta 0."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


ARCHS = ("resnet18", "vgg11")
"""Values of ``CIFARClassifier(arch=...)``."""

VGG11_MULTIPLIERS = (1, 2, 4, 4, 8, 8, 8, 8)
VGG11_POOL_AFTER = (0, 1, 3, 5, 7)
"""Indices (0-based) of the convs followed by a 2x2 max-pool: 32x32 -> 1x1 over five pools."""


def cifar_vgg11_bn(num_classes: int = 10, width: int = 64) -> nn.Module:
    """VGG-11 with BN for 32x32 inputs (see module doc): ``features`` (conv-BN-ReLU, pools), GAP, ``fc``."""
    layers: list[nn.Module] = []
    c_in = 3
    for i, mult in enumerate(VGG11_MULTIPLIERS):
        c_out = width * mult
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        if i in VGG11_POOL_AFTER:
            layers.append(nn.MaxPool2d(2))
        c_in = c_out
    net = nn.Sequential()
    net.add_module("features", nn.Sequential(*layers))
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flatten", nn.Flatten())
    net.add_module("fc", nn.Linear(c_in, num_classes))
    init_weights(net)
    return net


def build_net(arch: str, num_classes: int = 10, width: int = 64) -> nn.Module:
    """The network named ``arch`` (one of :data:`ARCHS`)."""
    if arch == "resnet18":
        return cifar_resnet18(num_classes, width)
    if arch == "vgg11":
        return cifar_vgg11_bn(num_classes, width)
    raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}.")


def cifar_resnet18(num_classes: int = 10, width: int = 64) -> nn.Module:
    """torchvision ResNet-18 with the CIFAR stem (3x3 stride-1 conv1, no max-pool); see module doc."""
    from torchvision.models import resnet18
    from torchvision.models.resnet import BasicBlock

    net = resnet18(weights=None, num_classes=num_classes)
    if width != 64:
        net.inplanes = width
        net.bn1 = nn.BatchNorm2d(width)
        net.layer1 = net._make_layer(BasicBlock, width, 2)
        net.layer2 = net._make_layer(BasicBlock, width * 2, 2, stride=2)
        net.layer3 = net._make_layer(BasicBlock, width * 4, 2, stride=2)
        net.layer4 = net._make_layer(BasicBlock, width * 8, 2, stride=2)
        net.fc = nn.Linear(width * 8 * BasicBlock.expansion, num_classes)
    net.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    init_weights(net)
    return net


class CIFARClassifier(LightningModule):
    """ResNet-18 or VGG-11-BN on CIFAR-10: SGD + momentum, per-step cosine schedule, torchmetrics accuracy.

    Args:
        num_classes: classes of the data set.
        width: channels of the first stage (64 = the paper's ResNet-18; 16 for CPU-sized runs).
        arch: ``"resnet18"`` (the paper's network) or ``"vgg11"`` (VGG-11 with BN, see module doc).
        lr: peak learning rate (cosine-annealed to 0 over all training steps, stepped every batch).
        momentum: SGD momentum.
        weight_decay: applied to conv/linear weights only (see module doc).
        nesterov: Nesterov momentum.
        channels_last: keep weights and inputs in channels-last memory format (faster convs on GPU).
        compile: ``torch.compile`` the network: False, True (default mode) or a mode string such as
            ``"max-autotune-no-cudagraphs"`` or ``"reduce-overhead"`` (CUDA graphs).
        fused: use SGD's fused kernel (``torch.optim.SGD(fused=True)``) instead of the foreach one.
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 64,
        arch: Literal["resnet18", "vgg11"] = "resnet18",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        nesterov: bool = False,
        channels_last: bool = False,
        compile: Union[bool, str] = False,
        fused: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build_net(arch, num_classes, width)
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self._compiled = False
        from torchmetrics.classification import MulticlassAccuracy

        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def configure_model(self) -> None:
        mode = self.hparams.compile
        if mode and not self._compiled:
            kwargs = {} if mode is True else {"mode": str(mode)}
            self.net = torch.compile(self.net, **kwargs)
            self._compiled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        # No per-step host sync: Lightning only reads the value every log_every_n_steps.
        self.log("train_loss", loss, on_step=True, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_acc.update(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y), on_epoch=True, batch_size=len(y))
        self.log("val_acc", self.val_acc, on_epoch=True, prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.test_acc.update(logits, y)
        self.log("test_loss", F.cross_entropy(logits, y), on_epoch=True, batch_size=len(y))
        self.log("test_acc", self.test_acc, on_epoch=True)

    def param_groups(self) -> list[dict]:
        """Conv/linear weights with weight decay; every other trainable parameter without."""
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.ndim > 1 else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def configure_optimizers(self):
        opt = torch.optim.SGD(
            self.param_groups(), lr=self.hparams.lr, momentum=self.hparams.momentum,
            nesterov=self.hparams.nesterov, **({"fused": True} if self.hparams.fused else {}),
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: cosine(step, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def cosine(step: int, total: int) -> float:
    """Cosine factor from 1 at step 0 to 0 at ``total`` (per-step schedule)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
