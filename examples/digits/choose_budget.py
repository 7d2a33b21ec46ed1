"""Choose the digits quickstart's training budget by a rule that never looks at the difference between arms.

Rule (fixed before running it): for budgets E in LADDER (epochs, ascending; the cosine schedule follows
the length), train both arms (``standard``: gamma 1, c 1; ``bninit``: gamma 0.1, c 100) on held-out seeds
(101-103, never used by the comparison), and record each run's epoch-mean training loss L_1..L_E. A run's
drop over the last fifth of training is ``L_{ceil(0.8 E)} - L_E``. The budget is the smallest E at which,
for each arm, the mean drop over the held-out seeds is below THRESHOLD x ln(10) (ln 10 = the loss of a
uniform guess over the 10 classes; 2 % of it is 0.046 nats): both arms have stopped learning.

    python examples/digits/choose_budget.py [--ladder 20,40,80,160,320] [--seeds 101-103]

Prints one line per (budget, arm) and the chosen budget; ``--json PATH`` also writes the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

LADDER = (20, 40, 80, 160, 320)
THRESHOLD = 0.02
SEEDS = (101, 102, 103)
ARMS: dict[str, dict[str, float]] = {
    "standard": {"init_scale": 1.0, "scale_lr_divisor": 1.0},
    "bninit": {"init_scale": 0.1, "scale_lr_divisor": 100.0},
}


def epoch_losses(epochs: int, seed: int, arm: str) -> list[float]:
    """Train one run as the quickstart does (base.yaml's model and data) and return its epoch-mean train losses."""
    import lightning.pytorch as pl
    from digits import DigitsCNN, DigitsDataModule

    from lightning_bninit import BNInit
    from lightning_bninit.experiments.seeding import derive_seed

    class _Losses(pl.Callback):
        def __init__(self) -> None:
            self.values: list[float] = []

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.values.append(float(trainer.callback_metrics["train_loss"]))

    pl.seed_everything(derive_seed(seed), verbose=False)
    losses = _Losses()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, deterministic=True, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[BNInit(monitor=False, **ARMS[arm]), losses], num_sanity_val_steps=0,
                         limit_val_batches=0)
    trainer.fit(DigitsCNN(width=16, lr=0.1, momentum=0.9, weight_decay=5e-4), DigitsDataModule(batch_size=64))
    return losses.values


def last_fifth_drop(losses: list[float]) -> float:
    """``L_{ceil(0.8 E)} - L_E`` for epoch-mean losses ``L_1..L_E``."""
    start = math.ceil(0.8 * len(losses))
    return losses[start - 1] - losses[-1]


def main(argv: list[str] | None = None) -> int:
    from lightning_bninit.experiments.seeding import parse_seeds

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ladder", default=",".join(map(str, LADDER)))
    ap.add_argument("--seeds", default="101-103")
    ap.add_argument("--json", default=None, help="write the table to this JSON file")
    args = ap.parse_args(argv)
    ladder = [int(e) for e in args.ladder.split(",")]
    seeds = parse_seeds(args.seeds)
    table: list[dict[str, Any]] = []
    chosen = None
    for epochs in ladder:
        ok = True
        for arm in ARMS:
            start = time.perf_counter()
            runs = [epoch_losses(epochs, s, arm) for s in seeds]
            drops = [last_fifth_drop(r) for r in runs]
            mean_drop = sum(drops) / len(drops)
            passed = mean_drop < THRESHOLD * math.log(10)
            ok &= passed
            row = {"epochs": epochs, "arm": arm, "seeds": seeds, "final_loss": [r[-1] for r in runs],
                   "drop_last_fifth": drops, "mean_drop": mean_drop, "converged": passed,
                   "seconds": round(time.perf_counter() - start, 1)}
            table.append(row)
            print(f"E={epochs:4d} {arm:9s} final train loss {[round(r[-1], 4) for r in runs]} "
                  f"drop over last fifth {mean_drop:.4f} (limit {THRESHOLD * math.log(10):.4f}) "
                  f"{'converged' if passed else 'still learning'}", flush=True)
        if ok:
            chosen = epochs
            break
    print(f"chosen budget: {chosen} epochs" if chosen else "no budget of the ladder meets the rule")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rule": {"threshold_of_ln10": THRESHOLD, "ladder": ladder, "seeds": seeds},
                       "table": table, "chosen_epochs": chosen}, fh, indent=1)
    return 0 if chosen else 1


if __name__ == "__main__":
    sys.exit(main())
