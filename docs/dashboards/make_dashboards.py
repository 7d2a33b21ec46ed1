"""Screenshots of the BN monitor's TensorBoard dashboards, taken in a real browser (headless Chromium).

    # 1. a short real run: the digits CNN (examples/digits) with BNInit and its monitor, TensorBoardLogger
    python docs/dashboards/make_dashboards.py train --out /tmp/bn_dash
    # 2. serve its logs on 127.0.0.1 only, capture the custom-scalars and the images pages, shrink the PNGs
    python docs/dashboards/make_dashboards.py shots --logs /tmp/bn_dash --png-dir docs/dashboards

Needs Debian's ``chromium`` package (``apt-get install chromium``), TensorBoard and scikit-learn. Not run in CI: the
tests read the same event files back (``tests/test_dashboards.py``).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = {"tensorboard_custom_scalars.png": "custom_scalars", "tensorboard_images.png": "images"}


def train(out: str, epochs: int) -> None:
    sys.path.insert(0, str(ROOT))
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from examples.digits.digits import DigitsCNN, DigitsDataModule
    from lightning_bninit import BNInit, BNMonitor

    pl.seed_everything(1)
    monitor = BNMonitor(refresh_every=3, histograms=True)
    trainer = pl.Trainer(max_epochs=epochs, log_every_n_steps=2, accelerator="cpu", enable_checkpointing=False,
                         logger=TensorBoardLogger(out, name="digits"), enable_progress_bar=False,
                         callbacks=[BNInit(input_norm=True, monitor=monitor)])
    trainer.fit(DigitsCNN(), datamodule=DigitsDataModule())
    print(f"logs in {trainer.log_dir}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _screenshot(url: str, path: Path, size: str) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={size}", "--virtual-time-budget=20000",
             f"--screenshot={path}", url],
            check=True, capture_output=True, timeout=120,
        )


def _shrink(path: Path, colors: int = 96) -> None:
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def shots(logs: str, png_dir: str, size: str) -> None:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", logs, "--host", "127.0.0.1", "--port", str(port),
         "--reload_interval", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(f"{base}/data/logdir")
        time.sleep(3)  # first load of the event files
        os.makedirs(png_dir, exist_ok=True)
        for filename, plugin in PAGES.items():
            path = Path(png_dir) / filename
            _screenshot(f"{base}/?darkMode=false#{plugin}", path, size)
            _shrink(path)
            print(f"{path}: {path.stat().st_size // 1024} KiB")
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train")
    tr.add_argument("--out", required=True)
    tr.add_argument("--epochs", type=int, default=3)
    sh = sub.add_parser("shots")
    sh.add_argument("--logs", required=True)
    sh.add_argument("--png-dir", default=str(Path(__file__).parent))
    sh.add_argument("--size", default="1400,1100", help="browser window, width,height")
    args = parser.parse_args(argv)
    if args.cmd == "train":
        train(args.out, args.epochs)
    else:
        shots(args.logs, args.png_dir, args.size)


if __name__ == "__main__":
    main()
