"""LightningCLI script of the CIFAR-10 example.

    python examples/cifar10/main.py fit --config examples/cifar10/configs/gpu.yaml --bninit=true
    python examples/cifar10/main.py fit --config examples/cifar10/configs/cpu_small.yaml

``--test_after_fit=true`` (set in the shipped configs) scores the test set with the final weights in
the same process after ``fit``, so one ``fit`` call yields ``test_acc``/``test_loss``; with
``--results_json=PATH`` those metrics (and the fit time) are also appended to PATH as one JSON line.
``--csv_log=true`` logs to a ``CSVLogger`` under the trainer's ``default_root_dir`` (each run of ``bninit
compare`` has its own), so the BN monitor's statistics are kept in ``lightning_logs/version_0/metrics.csv``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # makes ``cifar10`` importable

from cifar10.data import CIFAR10DataModule  # noqa: E402
from cifar10.model import CIFARClassifier  # noqa: E402

from lightning_bninit.cli import BNInitCLI  # noqa: E402


class CIFARCLI(BNInitCLI):
    def add_arguments_to_parser(self, parser) -> None:  # noqa: D102
        super().add_arguments_to_parser(parser)
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="after fit, run test with the final weights in the same process")
        parser.add_argument("--results_json", type=str, default=None,
                            help="append the test metrics as one JSON line to this file")
        parser.add_argument("--csv_log", type=bool, default=False,
                            help="log to a CSVLogger under trainer.default_root_dir (replaces trainer.logger)")

    def instantiate_trainer(self, **kwargs):  # noqa: D102
        cfg = self.config.get(self.subcommand, self.config)
        if cfg.get("csv_log"):
            from lightning.pytorch.loggers import CSVLogger

            root = cfg.get("trainer", {}).get("default_root_dir") or os.getcwd()
            kwargs["logger"] = CSVLogger(save_dir=root)
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        if callable(getattr(super(), "before_fit", None)):
            super().before_fit()  # type: ignore[misc]
        self._fit_start = time.perf_counter()

    def after_fit(self) -> None:
        if callable(getattr(super(), "after_fit", None)):
            super().after_fit()  # type: ignore[misc]
        fit_s = time.perf_counter() - getattr(self, "_fit_start", time.perf_counter())
        cfg = self.config.get(self.subcommand, self.config)
        if not cfg.get("test_after_fit"):
            return
        results = self.trainer.test(self.model, datamodule=self.datamodule, verbose=True)
        metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        metrics["fit_seconds"] = fit_s
        metrics["seed"] = cfg.get("seed_everything")
        metrics["epochs"] = self.trainer.current_epoch
        line = json.dumps(metrics, sort_keys=True)
        print("CIFAR10_RESULT " + line, flush=True)
        if cfg.get("results_json") and self.trainer.is_global_zero:
            with open(cfg["results_json"], "a") as fh:
                fh.write(line + "\n")


def main(args=None, run: bool = True):
    # No config.yaml is written: runs of `bninit compare --parallel` share a working directory.
    return CIFARCLI(CIFARClassifier, CIFAR10DataModule, args=args, run=run, save_config_callback=None)


if __name__ == "__main__":
    main()
