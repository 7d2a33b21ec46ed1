"""What the BN monitor writes per logging step for a torchvision ResNet-50 (53 BN layers), read back from the W&B
offline run file: keys per step and bytes per W&B history row.

A few steps of ``Trainer.fit`` on random 64x64 images, ``log_every_n_steps=1``, ``WandbLogger(offline=True)``;
``BNMonitor`` with its defaults (``--full``: every statistic and the histograms). The bytes are those of the
serialized history records of the logging steps (the row the monitor shares with Lightning's ``trainer/global_step``),
the end-of-fit panels' row left out. Runs against whichever ``lightning_bninit`` is first on ``PYTHONPATH``, so the
same script measures a release before 0.3:

    WANDB_MODE=offline python benchmarks/monitor_keys.py            # this checkout, defaults
    WANDB_MODE=offline python benchmarks/monitor_keys.py --full     # every statistic + histograms
    WANDB_MODE=offline python benchmarks/monitor_keys.py --steps 30 --figures docs/dashboards/after  # the PNGs
"""

from __future__ import annotations

import argparse
import glob
import inspect
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import wandb_reader  # noqa: E402

from lightning_bninit import BNMonitor  # noqa: E402


class Module(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        self.net = resnet50(num_classes=10)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def _top_key(item: Any) -> str:
    return item.nested_key[0] if item.nested_key else item.key


def measure(steps: int, full: bool, root: str, figures: str | None = None) -> dict[str, Any]:
    from lightning.pytorch.loggers import WandbLogger

    kwargs = {"full": True, "histograms": True} if full and "full" in inspect.signature(BNMonitor).parameters else {}
    monitor = BNMonitor(log_every_n_steps=1, plots=figures is not None, console_summary=False, **kwargs)
    logger = WandbLogger(save_dir=root, offline=True, project="bninit-monitor-keys")
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(4 * steps, 3, 64, 64, generator=g), torch.randint(0, 10, (4 * steps,), generator=g))
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, log_every_n_steps=1, logger=logger, callbacks=[monitor],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Module(), DataLoader(data, batch_size=4))
    if figures is not None:  # wherever this version wrote them: the run's folder (0.3) or below the working dir
        found = sorted(glob.glob(os.path.join(root, "**", "bn_monitor", "*.png"), recursive=True)
                       + glob.glob(os.path.join("bn_monitor", "*.png")))
        os.makedirs(figures, exist_ok=True)
        for path in found:
            shutil.copy(path, figures)
    logger.experiment.finish()
    records = wandb_reader.read_finished_run(root)
    rows = [r for r in records if r.WhichOneof("record_type") == "history"
            and any(_top_key(i) == "bn/all/xhat_absmax" for i in r.history.item)]
    keys = [{_top_key(i) for i in r.history.item if _top_key(i).startswith("bn")} for r in rows]
    scalars = [{k for k in ks if not k.startswith("bn_hist")} for ks in keys]
    return {
        "layers": len(monitor.layer_names), "full": full, "logging_steps": len(rows),
        "keys_per_step": statistics.median(len(k) for k in keys),
        "scalar_keys_per_step": statistics.median(len(k) for k in scalars),
        "histogram_keys_per_step": statistics.median(len(a) - len(b) for a, b in zip(keys, scalars)),
        "bytes_per_history_row": statistics.median(len(r.SerializeToString()) for r in rows),
        "sections": sorted({k.split("/")[0] for ks in keys for k in ks}),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="BNMonitor(full=True, histograms=True) (0.3 and later)")
    parser.add_argument("--figures", help="write the monitor's PNG figures and copy them into this folder")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as root:
        result = measure(args.steps, args.full, root, args.figures)
    sections = result.pop("sections")
    print(json.dumps(result))
    print(f"{len(sections)} W&B sections: {', '.join(sections[:8])}{', ...' if len(sections) > 8 else ''}")
