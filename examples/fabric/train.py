"""The digits example in a Lightning Fabric loop: ``lightning_bninit.attach`` and the BN statistics, no Trainer.

    python examples/fabric/train.py                                  # gamma 0.1, c 100 (the defaults)
    python examples/fabric/train.py --init-scale 1 --c 1             # the standard arm
    python examples/fabric/train.py --devices 2 --strategy ddp       # two CPU processes

The default budget, 40 epochs, is the one the digits quickstart's pre-set rule chose (both arms' training loss has
flattened; ``examples/digits/choose_budget.py``, ``docs/results/digits_budget/``): at 20 epochs the ``bninit`` arm
was still learning. With ``--devices 2`` each process sees half of each epoch, so a run makes half the steps.

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


DEFAULT_EPOCHS = 40  # examples/digits/base.yaml's max_epochs, chosen by examples/digits/choose_budget.py
# What the digits quickstart measured at 40 epochs (5 paired seeds, docs/results/digits_e40_report.md)
QUICKSTART = {"standard": 0.9887, "bninit": 0.9820}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"default {DEFAULT_EPOCHS}: the budget the digits quickstart's rule chose")
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
    fabric.print(explain(accuracy, step, args))
    fabric.logger.finalize("success")
    return accuracy


def explain(accuracy: float, steps: int, args: argparse.Namespace) -> str:
    """The test accuracy, and what it can be compared with."""
    arm = {(0.1, 100.0): "bninit", (1.0, 1.0): "standard"}.get((args.init_scale, args.c))
    text = (f"test accuracy {accuracy:.4f} after {steps} steps ({args.epochs} epochs, {args.devices} process(es), "
            f"gamma0 {args.init_scale:g}, c {args.c:g}, seed {args.seed})")
    if arm is not None and args.epochs == DEFAULT_EPOCHS and args.devices == 1:
        text += (f"\nthe digits quickstart measured {QUICKSTART[arm]:.4f} for the {arm} arm at this budget (mean of 5 "
                 "seeds; one seed can differ by about 0.01): `bninit compare --config examples/digits/compare.yaml` "
                 "tells whether the method helps here")
    elif args.devices > 1:
        text += ("\nwith several processes each makes fewer steps at the same lr and batch size per process, so "
                 "the accuracy is not comparable with the one-process quickstart numbers")
    return text


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
