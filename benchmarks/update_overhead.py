"""What the revised update adds to a training step: CIFAR ResNet-18, batch 128, with vs. without BNInit.

Three measurements:

1. A/B, interleaved: the same Lightning training run with ``BNInit`` and without it, alternating arms, timing each
   training step (forward, backward, optimizer step) from ``on_train_batch_start`` to ``on_train_batch_end`` after a
   warm-up; the ratio of the medians is printed.
2. Step-interleaved, in one run with ``BNInit``: the revised update is switched off on every other step, so both arms
   share the process, the data and the machine's state; run-level drift (other load, clocks) cancels out.
3. The update's own work per step (the step hooks: splitting the param groups when the closure returns, restoring
   them after the step), timed in isolation over many repetitions: a precise bound on the Python overhead, which run-to-run noise in (1)
   can hide.

Usage::

    python benchmarks/update_overhead.py                        # CPU, small defaults
    python benchmarks/update_overhead.py --device cuda --steps 60 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.cifar10.model import cifar_resnet18  # noqa: E402

from lightning_bninit import BNInit  # noqa: E402
from lightning_bninit.method.layers import find_bn_layers, param_roles  # noqa: E402
from lightning_bninit.method.step_hooks import RevisedUpdate  # noqa: E402
from lightning_bninit.method.update import GroupSplitter  # noqa: E402


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = cifar_resnet18()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, 1000), "interval": "step"}}


class StepTimer(pl.Callback):
    """Times each training step after the warm-up, filed under ``self.arm``."""

    def __init__(self, warmup: int, sync: bool) -> None:
        self.warmup, self.sync, self._t0 = warmup, sync, 0.0
        self.arm: bool = True
        self.times: dict[bool, list[float]] = {False: [], True: []}

    def on_train_batch_start(self, *args: Any) -> None:
        if self.sync:
            torch.cuda.synchronize()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.sync:
            torch.cuda.synchronize()
        if trainer.global_step > self.warmup:
            self.times[self.arm].append(time.perf_counter() - self._t0)


def one_run(with_callback: bool, args: argparse.Namespace, data: DataLoader) -> list[float]:
    torch.manual_seed(0)
    timer = StepTimer(args.warmup, args.device == "cuda")
    callbacks: list[pl.Callback] = [timer] + ([BNInit(monitor=False)] if with_callback else [])
    trainer = pl.Trainer(accelerator=args.device, devices=1, max_steps=args.steps + args.warmup, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         precision=args.precision, callbacks=callbacks)
    trainer.fit(Net(), data)
    return timer.times[True]


class AlternateUpdate(StepTimer):
    """Switches BNInit's group split off on even steps; times every step, by arm."""

    def __init__(self, bninit: BNInit, warmup: int, sync: bool) -> None:
        super().__init__(warmup, sync)
        self.bninit = bninit

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.arm = trainer.global_step % 2 == 1
        splitter = self.bninit._update.splitter
        if self.arm:
            splitter.__dict__.pop("split", None)
        else:
            splitter.split = lambda optimizer, *args: None  # this step runs the user's optimizer as it is
        super().on_train_batch_start(trainer, *args)


def interleaved_steps(args: argparse.Namespace, data: DataLoader) -> tuple[float, float]:
    torch.manual_seed(0)
    bninit = BNInit(monitor=False)
    timer = AlternateUpdate(bninit, args.warmup, args.device == "cuda")
    trainer = pl.Trainer(accelerator=args.device, devices=1, max_steps=args.interleaved_steps + args.warmup,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, precision=args.precision, callbacks=[bninit, timer])
    trainer.fit(Net(), data)
    return statistics.median(timer.times[False]), statistics.median(timer.times[True])


def split_cost(args: argparse.Namespace, reps: int = 2000) -> float:
    """The step hooks' own work for one step as Lightning makes it (a step given a closure): the pre-hook, the
    closure's wrapper (a no-op closure inside) and the post-hook, without the optimizer's update."""
    model = Net().to(args.device)
    opt = model.configure_optimizers()["optimizer"]
    update = RevisedUpdate(GroupSplitter(param_roles(find_bn_layers(model).values()), 100.0, True))
    update.attach(opt)

    def hooks_of_one_step() -> None:
        new_args, _ = update._pre_step(opt, (opt, lambda: None), {})  # type: ignore[misc]
        new_args[1]()
        update._post_step(opt, (), {})

    hooks_of_one_step()
    start = time.perf_counter()
    for _ in range(reps):
        hooks_of_one_step()
    update.detach()
    return (time.perf_counter() - start) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default=None, help="default: 32-true on CPU, bf16-mixed on CUDA")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs per arm, interleaved")
    parser.add_argument("--interleaved-steps", type=int, default=20, help="steps of the step-interleaved run")
    args = parser.parse_args()
    args.precision = args.precision or ("bf16-mixed" if args.device == "cuda" else "32-true")
    torch.set_float32_matmul_precision("high")

    n = args.batch_size * (max(args.steps, args.interleaved_steps) + args.warmup)
    ds = TensorDataset(torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,)))
    data = DataLoader(ds, batch_size=args.batch_size, drop_last=True)
    medians: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.repeats):
        for arm in ((False, True) if r % 2 == 0 else (True, False)):
            medians[arm].append(statistics.median(one_run(arm, args, data)))
            print(f"run {r} {'BNInit' if arm else 'plain '}: median step {medians[arm][-1] * 1e3:.2f} ms", flush=True)
    base, treated = statistics.median(medians[False]), statistics.median(medians[True])
    off, on = interleaved_steps(args, data)
    cost = split_cost(args)
    print(f"\ndevice={args.device} precision={args.precision} batch={args.batch_size} torch={torch.__version__}")
    print(f"median step without BNInit: {base * 1e3:.2f} ms")
    print(f"median step with BNInit:    {treated * 1e3:.2f} ms")
    print(f"ratio (with / without):     {treated / base:.4f}")
    print(f"step-interleaved, one run:  {off * 1e3:.2f} ms without the update, {on * 1e3:.2f} ms with it, "
          f"ratio {on / off:.4f}")
    print(f"step hooks (split+restore): {cost * 1e6:.1f} us per step = {cost / base:.4%} of a step")


if __name__ == "__main__":
    main()
