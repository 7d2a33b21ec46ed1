"""Screenshots of the BN monitor's TensorBoard dashboards, taken in a real browser (headless Chromium).

    # 1. a short real run: the digits CNN (examples/digits) with BNInit and its monitor, TensorBoardLogger
    python docs/dashboards/make_dashboards.py train --out /tmp/bn_dash
    # 2. serve its logs on 127.0.0.1 only, capture the custom-scalars and the images pages, shrink the PNGs
    python docs/dashboards/make_dashboards.py shots --logs /tmp/bn_dash --png-dir docs/dashboards
    # 3. W&B's UI cannot run here: the same run with WandbLogger(offline=True), its panels' data from the run file
    WANDB_MODE=offline python docs/dashboards/make_dashboards.py wandb --out /tmp/bn_dash_wandb --md docs/dashboards/wandb_panels.md

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


def train(out: str, epochs: int, wandb: bool = False) -> str:
    """Fit the digits CNN with ``BNInit`` and its monitor; returns the logger's run folder."""
    sys.path.insert(0, str(ROOT))
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    from examples.digits.digits import DigitsCNN, DigitsDataModule
    from lightning_bninit import BNInit, BNMonitor

    pl.seed_everything(1)
    monitor = BNMonitor(refresh_every=3, histograms=True)
    logger = (WandbLogger(save_dir=out, offline=True, project="bninit-dashboards") if wandb
              else TensorBoardLogger(out, name="digits"))
    trainer = pl.Trainer(max_epochs=epochs, log_every_n_steps=2, accelerator="cpu", enable_checkpointing=False,
                         logger=logger, enable_progress_bar=False,
                         callbacks=[BNInit(input_norm=True, monitor=monitor)])
    trainer.fit(DigitsCNN(), datamodule=DigitsDataModule())
    if wandb:
        run_dir = logger.experiment.dir
        logger.experiment.finish()
        return run_dir
    print(f"logs in {trainer.log_dir}")
    return trainer.log_dir


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


def wandb_panels(out: str, epochs: int, md: str) -> None:
    """The W&B panels as data: sections and their charts, the peak summaries against the history, the live rows,
    the summary table; the last heat maps copied next to ``md``."""
    import json
    import shutil

    sys.path.insert(0, str(ROOT / "tests"))
    from support import wandb_reader

    run_dir = train(out, epochs, wandb=True)
    records = wandb_reader.read_finished_run(out)
    history, summary = wandb_reader.history(records), wandb_reader.summary(records)
    keys = sorted({k.split("/_type")[0] for row in history for k in row if k.startswith("bn")
                   and (k.count("/") <= 2 or k.endswith("/_type"))} - {"bn"})
    keys = sorted({k for k in keys if not any(k.startswith(p) and k != p for p in keys if k != p)})
    sections: dict[str, list[str]] = {}
    for key in keys:
        section, _, chart = key.partition("/")
        sections.setdefault(section, []).append(chart)
    lines = ["# The BN monitor's W&B panels, read from an offline run file", "",
             "A 3-epoch digits run (`make_dashboards.py wandb`), `BNInit(input_norm=True)` with "
             "`BNMonitor(refresh_every=3, histograms=True)`, `log_every_n_steps=2`. W&B makes one section per prefix "
             "before the first `/` and one chart per key, sorted by name.", "", "| section | charts |", "|---|---|"]
    lines += [f"| `{sec}` | {len(ch)}: {', '.join(f'`{c}`' for c in ch[:6])}{', …' if len(ch) > 6 else ''} |"
              for sec, ch in sections.items()]
    lines += ["", "Run summary of the peak keys (`summary=\"max\"`) against the max of their history:", "",
              "| key | summary | max of history | last value |", "|---|---:|---:|---:|"]
    for key in sorted(k for k in summary if k.startswith(("bn_xhat_", "bn/all/xhat_"))
                      and isinstance(summary[k], dict) and "max" in summary[k]):
        values = [r[key] for r in history if key in r]
        lines.append(f"| `{key}` | {summary[key]['max']:.4f} | {max(values):.4f} | {values[-1]:.4f} |")
    live = [r["trainer/global_step"] for r in history if "bn_heatmap/scale_drift_rel/_type" in r]
    lines += ["", f"Live rows (heat maps and `bn_by_layer/*` charts) at steps {live}.", ""]
    (final,) = [r for r in history if "bn_summary/layers/_type" in r]
    with open(os.path.join(run_dir, final["bn_summary/layers/path"])) as f:
        table = json.load(f)
    lines += ["`bn_summary/layers` (worst layers first):", "", "| " + " | ".join(table["columns"]) + " |",
              "|" + "---|" * len(table["columns"])]
    lines += ["| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |"
              for row in table["data"]]
    for stat in ("scale_drift_rel", "xhat_bound_ratio"):
        src = os.path.join(run_dir, [r for r in history if f"bn_heatmap/{stat}/path" in r][-1][f"bn_heatmap/{stat}/path"])
        dst = Path(md).parent / f"wandb_heatmap_{stat}.png"
        shutil.copy(src, dst)
        _shrink(dst)
        lines += ["", f"![bn_heatmap/{stat}, last refresh]({dst.name})"]
    Path(md).write_text("\n".join(lines) + "\n")
    print(f"{md}")


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
    wb = sub.add_parser("wandb")
    wb.add_argument("--out", required=True)
    wb.add_argument("--epochs", type=int, default=3)
    wb.add_argument("--md", default=str(Path(__file__).parent / "wandb_panels.md"))
    args = parser.parse_args(argv)
    if args.cmd == "train":
        train(args.out, args.epochs)
    elif args.cmd == "wandb":
        wandb_panels(args.out, args.epochs, args.md)
    else:
        shots(args.logs, args.png_dir, args.size)


if __name__ == "__main__":
    main()
