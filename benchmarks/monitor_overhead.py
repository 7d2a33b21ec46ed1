"""Overhead of BNInit's BN monitor: CIFAR ResNet-18 (3x3 conv1, no max-pool), batch 128, CPU, synthetic data.

Arms, interleaved round by round (order alternating), each a short ``Trainer.fit`` with a TensorBoardLogger (so the
live heat maps, the custom-scalars layout and the end-of-fit figures are really drawn and written):

- ``off``: ``BNInit(monitor=False)``;
- ``on``: ``BNInit()`` with ``log_every_n_steps=50`` (the steps measured here are non-logging steps unless
  ``--steps`` >= 50);
- ``log``: ``BNInit()`` with ``log_every_n_steps=1`` (every step is a monitoring step), the live heat maps redrawn
  every 2nd logging step (``refresh_every=2``), so that both kinds of logging step are timed.

The overall cost at ``log_every_n_steps=50`` is reported from the time inside the monitor's hooks, with the heat maps
redrawn on every logging step (the worst case) and every 10th (the default ``refresh_every``).

A step's time is the wall time between consecutive ``on_train_batch_start`` calls (forward, backward, optimizer step,
callbacks, logger). The first ``--warmup`` steps of each fit are dropped; medians over all rounds are reported, and
the overall overhead at ``log_every_n_steps=50`` is ``(49 * median(on) + median(log)) / (50 * median(off)) - 1``.
With ``--steps 100`` or more the ``on`` arm also contains real logging steps and its mean is reported directly.

    python benchmarks/monitor_overhead.py --rounds 3 --steps 8            # short version (~3 min on 2 cores)
    python benchmarks/monitor_overhead.py --rounds 5 --steps 110          # direct: two logging steps per fit
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.cifar10.model import cifar_resnet18  # noqa: E402

from lightning_bninit import BNInit, BNMonitor  # noqa: E402


class Module(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = cifar_resnet18()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []
        self.logging: list[bool] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.starts.append(time.perf_counter())
        n = trainer.log_every_n_steps
        self.logging.append((trainer.fit_loop.epoch_loop._batches_that_stepped + 1) % n == 0)

    def on_train_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.starts.append(time.perf_counter())

    def times(self, warmup: int) -> list[tuple[float, bool]]:
        return [(b - a, log) for a, b, log in zip(self.starts, self.starts[1:], self.logging)][warmup:]


HOOK_TIMES: dict[str, list[float]] = {"plain": [], "logging": [], "refresh": []}
"""Wall time inside the monitor's own hooks per step (start + end): non-logging steps, logging steps, and logging
steps that also redraw the live heat maps (every ``refresh_every``-th)."""


FORWARD_HOOK_TIMES: list[float] = []
"""Wall time of each x̂ forward-hook call (inside the forward of logging steps)."""


def _time_forward_hooks() -> None:
    from lightning_bninit.monitoring import hooks

    call = hooks.XhatHook.__call__

    def timed(self: Any, *a: Any) -> None:
        t = time.perf_counter()
        call(self, *a)
        FORWARD_HOOK_TIMES.append(time.perf_counter() - t)

    hooks.XhatHook.__call__ = timed  # type: ignore[method-assign]


def _timed_monitor(callback: BNInit) -> None:
    monitor = callback.monitor
    assert monitor is not None
    start, end = monitor.on_train_batch_start, monitor.on_train_batch_end
    pending: list[float] = []

    def on_train_batch_start(*args: Any) -> None:
        t = time.perf_counter()
        start(*args)
        pending.append(time.perf_counter() - t)

    def on_train_batch_end(*args: Any) -> None:
        armed = monitor._armed
        refresh = armed and monitor.refresh_every and (len(monitor.history.steps) + 1) % monitor.refresh_every == 0
        t = time.perf_counter()
        end(*args)
        kind = "refresh" if refresh else "logging" if armed else "plain"
        HOOK_TIMES[kind].append(pending.pop() + time.perf_counter() - t)

    monitor.on_train_batch_start = on_train_batch_start  # type: ignore[method-assign]
    monitor.on_train_batch_end = on_train_batch_end  # type: ignore[method-assign]


def run(arm: str, steps: int, batch: int, data: TensorDataset, root: str) -> list[tuple[float, bool]]:
    torch.manual_seed(0)
    monitor = arm != "off"
    every = 1 if arm == "log" else 50
    timer = StepTimer()
    # the 'log' arm redraws the live heat maps on every 2nd logging step, so both kinds of logging step are timed
    callback = BNInit(monitor=BNMonitor(refresh_every=2) if monitor else False)
    if monitor:
        _timed_monitor(callback)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, log_every_n_steps=every,
        logger=TensorBoardLogger(root, name=arm), callbacks=[callback, timer],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Module(), DataLoader(data, batch_size=batch, shuffle=False))
    return timer.times(args.warmup)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per fit (incl. warm-up)")
    parser.add_argument("--log-steps", type=int, default=6, help="steps per fit of the 'log' arm")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    args = parser.parse_args()
    _time_forward_hooks()
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    n = args.batch * max(args.steps, args.log_steps)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    results: dict[str, list[tuple[float, bool]]] = {"off": [], "on": [], "log": []}
    with tempfile.TemporaryDirectory() as root:
        for r in range(args.rounds):
            order = ["off", "on", "log"] if r % 2 == 0 else ["log", "on", "off"]
            for arm in order:
                steps = args.log_steps if arm == "log" else args.steps
                results[arm] += run(arm, steps, args.batch, data, root)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{arm} {statistics.median(t for t, _ in v):.3f}s" for arm, v in results.items()), flush=True)

    off = statistics.median(t for t, _ in results["off"])
    on_nonlog = statistics.median(t for t, log in results["on"] if not log)
    on_log = statistics.median(t for t, _ in results["log"])
    overall = (49 * on_nonlog + on_log) / (50 * off)
    print(f"\nCIFAR ResNet-18, batch {args.batch}, CPU ({torch.get_num_threads()} threads), "
          f"{args.rounds} rounds x {args.steps} steps ({args.warmup} warm-up dropped), medians:")
    print(f"  monitor off                  : {off:.4f} s/step  (n={len(results['off'])})")
    print(f"  monitor on, non-logging steps: {on_nonlog:.4f} s/step  -> {100 * (on_nonlog / off - 1):+.2f}%")
    print(f"  monitor on, logging steps    : {on_log:.4f} s/step  -> {100 * (on_log / off - 1):+.2f}%")
    print(f"  overall, log_every_n_steps=50: {100 * (overall - 1):+.2f}%  (49 non-logging + 1 logging step)")
    hook_nonlog = statistics.median(HOOK_TIMES["plain"])
    hook_log = statistics.median(HOOK_TIMES["logging"])
    hook_refresh = statistics.median(HOOK_TIMES["refresh"])
    print("  time inside the monitor's hooks (precise, insensitive to machine noise):")
    print(f"    non-logging step: {1e6 * hook_nonlog:.1f} us = {100 * hook_nonlog / off:.4f}% of a step")
    print(f"    logging step    : {1e3 * hook_log:.1f} ms = {100 * hook_log / off:.2f}% of a step "
          "(+ the forward hooks' work, inside the forward)")
    print(f"    + live heat maps: {1e3 * hook_refresh:.1f} ms = {100 * hook_refresh / off:.2f}% of a step "
          "(a logging step that redraws them)")
    n_log = len(HOOK_TIMES["logging"]) + len(HOOK_TIMES["refresh"])
    fwd = sum(FORWARD_HOOK_TIMES) / max(n_log, 1)
    print(f"    x̂ forward hooks : {1e3 * fwd:.1f} ms per logging step = {100 * fwd / off:.2f}% of a step")
    for k in (1, 10):
        logging_step = hook_refresh / k + hook_log * (1 - 1 / k) + fwd
        total = (49 * hook_nonlog + logging_step) / (50 * off)
        print(f"    at log_every_n_steps=50, heat maps every {k} logging step(s): {100 * total:.3f}% of a step")
    if any(log for _, log in results["on"]):
        on_mean = statistics.fmean(t for t, _ in results["on"])
        off_mean = statistics.fmean(t for t, _ in results["off"])
        print(f"  direct mean over 'on' fits   : {100 * (on_mean / off_mean - 1):+.2f}%")
