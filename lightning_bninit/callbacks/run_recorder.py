"""Callback that reports a run's outcome to ``bninit compare``.

``bninit compare`` appends this callback to every child run with
``--trainer.callbacks+=lightning_bninit.callbacks.run_recorder.RunRecorder --trainer.callbacks.path=...``, which
works with any LightningCLI script. The child then writes a small JSON file that the parent reads,
so test metrics come back through a file rather than by scraping the child's console output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

__all__ = ["RunRecorder"]


def _to_float(value: Any) -> float | None:
    try:
        out = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return out  # NaN/inf are kept: the report must see diverged runs


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    # Write-then-rename so the parent never reads a half-written file.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


class RunRecorder(Callback):
    """Write the outcome of ``fit`` or ``test`` to a JSON file.

    After ``fit`` the file holds the best checkpoint path (from the trainer's
    ``ModelCheckpoint``, if any), the path of the weights at the end of fit (when ``save_last``),
    the log directory (where LightningCLI saved ``config.yaml``) and the final
    ``callback_metrics``. After ``test`` it holds every metric logged during testing.

    Args:
        path: JSON file to write.
        save_last: also save the weights at the end of fit to ``<path dir>/last_weights.ckpt``,
            for testing the final network or when checkpointing is disabled.
        test_path: where to write the test results instead of ``path``; for scripts that test in
            the same process right after fit (``bninit compare`` with ``test: in_fit``), so that
            the fit results are kept.
        checkpoint_dir: the run's own checkpoint folder. Every ``ModelCheckpoint`` whose ``dirpath``
            is not inside it writes there instead (the i-th of several to ``<checkpoint_dir>/<i>``):
            runs in parallel must not share a folder where they overwrite, test or delete each
            other's files. A ``dirpath`` set by the user is changed with a warning.

    Raises:
        Nothing of its own; writing the JSON file may raise ``OSError``.

    Example::

        python main.py fit --config base.yaml \\
            --trainer.callbacks+=lightning_bninit.callbacks.run_recorder.RunRecorder \\
            --trainer.callbacks.path=run/fit_result.json \\
            --trainer.callbacks.checkpoint_dir=run/checkpoints
    """

    def __init__(self, path: str, save_last: bool = False, test_path: str | None = None,
                 checkpoint_dir: str | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.save_last = save_last
        self.test_path = Path(test_path) if test_path else self.path
        self.checkpoint_dir = Path(checkpoint_dir).resolve() if checkpoint_dir else None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(path=str(self.path))

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Lightning runs the ModelCheckpoints' setup last, so they resolve the folder set here; on every rank alike.
        if stage != "fit" or self.checkpoint_dir is None:
            return
        callbacks = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]  # type: ignore[attr-defined]
        for i, cb in enumerate(callbacks):
            target = self.checkpoint_dir / str(i) if len(callbacks) > 1 else self.checkpoint_dir
            if cb.dirpath is not None and Path(cb.dirpath).resolve().is_relative_to(self.checkpoint_dir):
                continue
            if cb.dirpath is not None:
                rank_zero_warn(f"RunRecorder: ModelCheckpoint dirpath {cb.dirpath} -> {target} (each run of bninit "
                               "compare keeps its checkpoints in its own folder)")
            cb.dirpath = str(target)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        last = None
        if self.save_last:
            last = self.path.parent / "last_weights.ckpt"
            trainer.save_checkpoint(last)  # every rank must call it
        if not trainer.is_global_zero:
            return
        ckpt_cb = trainer.checkpoint_callback
        best = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb is not None else ""
        _write_json(
            self.path,
            {
                "stage": "fit",
                "best_model_path": best or None,
                "last_model_path": str(last) if last else None,
                "log_dir": trainer.log_dir,
                "global_step": trainer.global_step,
                "current_epoch": trainer.current_epoch,
                "metrics": {k: _to_float(v) for k, v in trainer.callback_metrics.items()},
            },
        )

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        # callback_metrics already holds the epoch-level test metrics at this point.
        _write_json(
            self.test_path,
            {"stage": "test", "metrics": {k: _to_float(v) for k, v in trainer.callback_metrics.items()}},
        )
