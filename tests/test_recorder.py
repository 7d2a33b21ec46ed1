"""RunRecorder, in process: what it writes after fit and test, and that every checkpoint stays in the run's folder."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_bninit.callbacks.run_recorder import RunRecorder


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))

    def _loss(self, batch):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def training_step(self, batch, batch_idx):
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self.net(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g)),
                      batch_size=8)


def _trainer(root: Path, *callbacks) -> pl.Trainer:
    return pl.Trainer(default_root_dir=root, max_epochs=2, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=list(callbacks))


def test_fit_and_test_results_with_a_fixed_dirpath_redirected(tmp_path):
    """A base config's fixed ModelCheckpoint dirpath is shared by parallel trials: the recorder moves it into the
    run's own folder, so each trial tests (and later deletes) only its own checkpoint."""
    shared, run = tmp_path / "shared_ckpts", tmp_path / "run"
    ckpt = ModelCheckpoint(dirpath=shared, filename="best", monitor="val_loss")
    recorder = RunRecorder(str(run / "fit_result.json"), save_last=True, checkpoint_dir=str(run / "checkpoints"))
    model = Tiny()
    with pytest.warns(UserWarning, match=f"ModelCheckpoint dirpath {shared} -> {run / 'checkpoints'}"):
        _trainer(run / "fit", ckpt, recorder).fit(model, _data(), _data())
    fit = json.loads((run / "fit_result.json").read_text())
    assert fit["best_model_path"] == str(run / "checkpoints" / "best.ckpt")
    assert Path(fit["best_model_path"]).is_file() and not shared.exists()
    assert fit["last_model_path"] == str(run / "last_weights.ckpt") and (run / "last_weights.ckpt").is_file()
    assert (fit["stage"], fit["current_epoch"], fit["global_step"]) == ("fit", 2, 8)
    assert set(fit["metrics"]) == {"val_loss"} and isinstance(fit["metrics"]["val_loss"], float)
    # test from that checkpoint, as compare's test phase does
    tester = RunRecorder(str(run / "test_result.json"))
    _trainer(run / "test", tester).test(Tiny(), _data(), ckpt_path=fit["best_model_path"])
    test = json.loads((run / "test_result.json").read_text())
    assert test["stage"] == "test" and 0.0 <= test["metrics"]["test_acc"] <= 1.0


def test_every_checkpoint_callback_gets_a_folder_of_its_own(tmp_path):
    run = tmp_path / "run"
    inside = ModelCheckpoint(dirpath=run / "checkpoints" / "mine", monitor="val_loss")  # already inside: kept
    default = ModelCheckpoint(monitor="val_loss", mode="max", filename="v")  # no dirpath: would follow the logger's folder
    recorder = RunRecorder(str(run / "fit_result.json"), checkpoint_dir=str(run / "checkpoints"))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="RunRecorder")  # nothing the user set is changed here
        _trainer(run / "fit", inside, default, recorder).fit(Tiny(), _data(), _data())
    assert Path(inside.dirpath) == (run / "checkpoints" / "mine").resolve()
    assert Path(default.dirpath) == run / "checkpoints" / "1"
    assert all(Path(p).resolve().is_relative_to(run / "checkpoints") for p in (inside.best_model_path,
                                                                              default.best_model_path))


def test_without_checkpoint_dir_nothing_moves_and_in_fit_tests_go_to_test_path(tmp_path):
    run = tmp_path / "run"
    ckpt = ModelCheckpoint(dirpath=tmp_path / "elsewhere", monitor="val_loss")
    recorder = RunRecorder(str(run / "fit_result.json"), test_path=str(run / "test_result.json"))
    trainer = _trainer(run / "fit", ckpt, recorder)
    model = Tiny()
    trainer.fit(model, _data(), _data())
    trainer.test(model, _data())
    fit = json.loads((run / "fit_result.json").read_text())
    assert Path(fit["best_model_path"]).parent == tmp_path / "elsewhere"
    assert fit["stage"] == "fit"  # kept: the test results went to test_path
    assert "test_acc" in json.loads((run / "test_result.json").read_text())["metrics"]
