"""Plain PyTorch training loop for the CIFAR-10 example: no Lightning, no callback.

The same network (``cifar_resnet18``), the same on-device batches (``DeviceBatches``), the same SGD
(momentum 0.9, weight decay on conv/linear weights), the same per-step cosine schedule and bf16
autocast on CUDA. To cost what the Lightning example with ``BNInit(input_norm=True)`` computes, the
network gets an input ``BatchNorm2d(3)`` (shift frozen at 0) and the optimizer the official code's three
parameter groups (weights with decay; other 1-D params without; BN scales without decay at lr / c).

    python benchmarks/plain_cifar_loop.py --device cpu --subset 512 --width 16 --epochs 2
    python benchmarks/plain_cifar_loop.py --device cuda --epochs 15          # full data, bf16

Prints one JSON line with seconds per epoch and the final test accuracy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from cifar10.data import (  # noqa: E402
    DeviceBatches, find_data_path, load_cifar10, subset_indices,
)
from cifar10.model import cifar_resnet18, cosine  # noqa: E402


def load_tensors(data_path: Optional[str], subset: Optional[int], test_subset: Optional[int], device):
    arrays = load_cifar10(find_data_path(data_path))
    x_tr, y_tr, x_te, y_te = arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]
    nc = len(arrays["classes"])
    if subset:
        k = subset_indices(y_tr, subset, nc)
        x_tr, y_tr = x_tr[k], y_tr[k]
    if test_subset:
        k = subset_indices(y_te, test_subset, nc)
        x_te, y_te = x_te[k], y_te[k]
    t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return (t(x_tr), t(y_tr)), (t(x_te), t(y_te)), nc


class InputBNNet(nn.Module):
    def __init__(self, net: nn.Module, init_scale: float = 0.1, sigma_act: float = 0.58) -> None:
        super().__init__()
        self.input_bn = nn.BatchNorm2d(3)
        nn.init.constant_(self.input_bn.weight, init_scale * sigma_act)
        nn.init.zeros_(self.input_bn.bias)
        self.input_bn.bias.requires_grad_(False)
        self.net = net

    def forward(self, x):
        return self.net(self.input_bn(x))


def param_groups(model: nn.Module, lr: float, weight_decay: float, c: float, init_scale: float) -> list[dict]:
    """The official code's groups; also sets every (non-input) BN scale to ``init_scale``."""
    bn_scales = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            if m is not getattr(model, "input_bn", None):
                nn.init.constant_(m.weight, init_scale)
            bn_scales.append(m.weight)
    ids = {id(p) for p in bn_scales}
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1 and id(p) not in ids]
    return [
        {"params": decay, "weight_decay": weight_decay, "lr": lr},
        {"params": other, "weight_decay": 0.0, "lr": lr},
        {"params": bn_scales, "weight_decay": 0.0, "lr": lr / c},
    ]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_plain(
    train: tuple, test: tuple, num_classes: int, device: torch.device, epochs: int = 1, width: int = 64,
    batch_size: int = 128, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4,
    init_scale: float = 0.1, c: float = 100.0, seed: int = 1, channels_last: bool = True,
    compile: bool | str = False, bf16: Optional[bool] = None, evaluate: bool = True, fused: bool = False,
) -> dict:
    """Train ``epochs`` epochs; return seconds per epoch (synchronised) and the test accuracy."""
    torch.manual_seed(seed)
    bf16 = (device.type == "cuda") if bf16 is None else bf16
    model = InputBNNet(cifar_resnet18(num_classes, width), init_scale).to(device)
    opt = torch.optim.SGD(param_groups(model, lr, weight_decay, c, init_scale), lr=lr, momentum=momentum,
                          **({"fused": True} if fused else {}))
    batches = DeviceBatches(*train, batch_size=batch_size, train=True, seed=seed, channels_last=channels_last)
    total = epochs * len(batches)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine(s, total))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model, **({} if compile is True else {"mode": compile})) if compile else model
    epoch_s = []
    for _ in range(epochs):
        model.train()
        sync(device)
        t0 = time.perf_counter()
        for x, y in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(fwd(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        sync(device)
        epoch_s.append(time.perf_counter() - t0)
    out = {"epoch_seconds": epoch_s, "final_loss": float(loss.detach())}
    if evaluate:
        model.eval()
        correct = n = 0
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for x, y in DeviceBatches(*test, batch_size=1000, train=False, channels_last=channels_last):
                correct += int((fwd(x).argmax(1) == y).sum())
                n += len(y)
        out["test_acc"] = correct / max(n, 1)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data-path", default=None)
    ap.add_argument("--subset", type=int, default=None)
    ap.add_argument("--test-subset", type=int, default=None)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--init-scale", type=float, default=0.1)
    ap.add_argument("--c", type=float, default=100.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--compile", default="", help="torch.compile mode ('' = off, 'default', 'max-autotune-no-cudagraphs', ...)")
    ap.add_argument("--fused", action="store_true", help="SGD(fused=True)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    train, test, nc = load_tensors(a.data_path, a.subset, a.test_subset, device)
    compile_mode: bool | str = (True if a.compile == "default" else a.compile) or False
    res = run_plain(train, test, nc, device, a.epochs, a.width, a.batch_size, a.lr, 0.9, a.weight_decay,
                    a.init_scale, a.c, a.seed, not a.no_channels_last, compile_mode, fused=a.fused)
    res["median_epoch_seconds"] = statistics.median(res["epoch_seconds"][1:] or res["epoch_seconds"])
    res["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
