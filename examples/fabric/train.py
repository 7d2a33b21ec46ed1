"""The digits example in a Lightning Fabric loop: ``lightning_bninit.attach`` and the BN statistics, no Trainer.

    python examples/fabric/train.py                                  # gamma 0.1, c 100 (the defaults)
    python examples/fabric/train.py --init-scale 1 --c 1             # the standard arm
    python examples/fabric/train.py --devices 2 --strategy ddp       # two CPU processes

Same network, data and optimizer as ``examples/digits`` (SGD with momentum, weight decay, a per-step cosine
schedule); the optimizer is built on ``model.parameters()`` as usual, and ``attach`` applies the method to it. Every
``--log-every`` steps the BN statistics (``bn_<stat>/<label>``, ``bn/all/<stat>``) and the loss go to Fabric's
``CSVLogger`` under ``--out`` (``<out>/fabric_digits/version_0/metrics.csv``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # a model this small runs fastest on one thread
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "digits"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from digits import DigitsCNN, DigitsDataModule  # noqa: E402
from lightning.fabric import Fabric  # noqa: E402
from lightning.fabric.loggers import CSVLogger  # noqa: E402

from lightning_bninit import attach, bn_statistics, capture_xhat  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--init-scale", type=float, default=0.1)
    parser.add_argument("--c", type=float, default=100.0, help="scale_lr_divisor")
    parser.add_argument("--log-every", type=int, default=50, help="steps between BN statistics (0: never)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--out", default="fabric_logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> float:
    args = parse(argv)
    fabric = Fabric(accelerator="cpu", devices=args.devices, strategy=args.strategy,
                    loggers=CSVLogger(args.out, name="fabric_digits", version=0))
    fabric.launch()
    fabric.seed_everything(args.seed)
    data = DigitsDataModule(batch_size=64)
    data.setup()
    model = DigitsCNN(width=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    handle = attach(model, optimizer, init_scale=args.init_scale, scale_lr_divisor=args.c)  # before fabric.setup
    model, optimizer = fabric.setup(model, optimizer)
    train, test = fabric.setup_dataloaders(data.train_dataloader(), data.test_dataloader())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * len(train))

    step = 0
    for _ in range(args.epochs):
        model.train()
        for x, y in train:
            log_now = args.log_every > 0 and step % args.log_every == 0
            with capture_xhat(model, handle.layer_names, enabled=log_now) as xhat:  # hooks on logging steps only
                loss = F.cross_entropy(model(x), y)
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            if log_now:  # every rank: the x̂ statistics are gathered over ranks
                stats = bn_statistics(model, handle.initial_values, xhat, all_gather=fabric.all_gather)
                fabric.log_dict({"train_loss": loss.item(), **stats}, step=step)
            step += 1
    accuracy = evaluate(fabric, model, test)
    fabric.print(f"test accuracy {accuracy:.4f} after {step} steps")
    fabric.logger.finalize("success")
    return accuracy


@torch.no_grad()
def evaluate(fabric: Fabric, model: torch.nn.Module, loader: torch.utils.data.DataLoader) -> float:
    model.eval()
    correct = total = torch.zeros((), device=fabric.device)
    for x, y in loader:
        correct = correct + (model(x).argmax(1) == y).sum()
        total = total + y.numel()
    return float(fabric.all_reduce(correct, reduce_op="sum") / fabric.all_reduce(total, reduce_op="sum"))


if __name__ == "__main__":
    main()
