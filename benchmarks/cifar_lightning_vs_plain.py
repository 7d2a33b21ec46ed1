"""Seconds per epoch: the Lightning CIFAR-10 example with BNInit vs the plain PyTorch loop.

Both run in this process on the same device with the same data tensors, model, optimizer, schedule
and precision (bf16 autocast on CUDA, fp32 on CPU). Runs are interleaved A/B ``--repeats`` times;
the first epoch of every run is warm-up (cuDNN autotuning, torch.compile) and is not counted; the
result is the median seconds per epoch of each side and their ratio (target: Lightning <= 1.10x plain).

    python benchmarks/cifar_lightning_vs_plain.py --device cpu --subset 512 --width 16 --threads 1
    python benchmarks/cifar_lightning_vs_plain.py --device cuda --epochs 3 --repeats 3   # full data

Prints one JSON line (and appends it to ``--json`` when given).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from plain_cifar_loop import load_tensors, run_plain, sync  # noqa: E402

from cifar10.data import CIFAR10DataModule  # noqa: E402
from cifar10.model import CIFARClassifier  # noqa: E402


def run_lightning(args, device: torch.device, seed: int) -> list[float]:
    import lightning.pytorch as pl

    class EpochTimer(pl.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            sync(device)
            self._t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            sync(device)
            self.seconds.append(time.perf_counter() - self._t0)

    callbacks: list = [timer := EpochTimer()]
    try:
        from lightning_bninit import BNInit

        callbacks.append(BNInit(init_scale=args.init_scale, scale_lr_divisor=args.c, input_norm=True))
    except ImportError:
        warnings.warn("lightning_bninit.BNInit not importable: timing Lightning without the callback")
    pl.seed_everything(seed, verbose=False)
    model = CIFARClassifier(width=args.width, lr=0.1, weight_decay=5e-4, channels_last=not args.no_channels_last,
                            compile=args.compile or False, fused=args.fused)
    dm = CIFAR10DataModule(args.data_path, batch_size=args.batch_size, subset=args.subset,
                           test_subset=args.test_subset, channels_last=not args.no_channels_last)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true", max_epochs=args.epochs,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=50, benchmark=device.type == "cuda", callbacks=callbacks,
    )
    trainer.fit(model, datamodule=dm)
    return timer.seconds


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data-path", default=None)
    ap.add_argument("--subset", type=int, default=None)
    ap.add_argument("--test-subset", type=int, default=1000)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is warm-up)")
    ap.add_argument("--repeats", type=int, default=2, help="A/B pairs")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--init-scale", type=float, default=0.1)
    ap.add_argument("--c", type=float, default=100.0)
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--compile", default="", help="torch.compile mode for both sides ('' = off, 'default', ...)")
    ap.add_argument("--fused", action="store_true", help="SGD(fused=True) on both sides")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile == "default":
        args.compile = True
    device = torch.device(args.device)
    train, test, nc = load_tensors(args.data_path, args.subset, args.test_subset, device)
    plain_s, light_s = [], []
    for r in range(args.repeats):
        res = run_plain(train, test, nc, device, args.epochs, args.width, args.batch_size, init_scale=args.init_scale,
                        c=args.c, seed=r + 1, channels_last=not args.no_channels_last, compile=args.compile,
                        evaluate=False, fused=args.fused)
        plain_s += res["epoch_seconds"][1:]
        light_s += run_lightning(args, device, seed=r + 1)[1:]
        print(f"repeat {r}: plain {plain_s[-1]:.3f} s/epoch, lightning {light_s[-1]:.3f} s/epoch", file=sys.stderr)
    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "subset": args.subset, "width": args.width, "batch_size": args.batch_size,
        "compile": args.compile, "fused": args.fused, "plain_s_per_epoch": statistics.median(plain_s),
        "lightning_bninit_s_per_epoch": statistics.median(light_s), "plain_all": plain_s, "lightning_all": light_s,
    }
    out["ratio"] = out["lightning_bninit_s_per_epoch"] / out["plain_s_per_epoch"]
    line = json.dumps(out)
    print(line)
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(line + "\n")
    return out


if __name__ == "__main__":
    main()
