"""W&B through the logger: histograms in the same history row as the scalars of their step, the
logger's prefix on every key (also the peak summaries), and the settings in the run config."""

from __future__ import annotations

import os

import torch
from support import wandb_reader
from support.helpers import Classifier, dataset, loader, tiny_net, trainer

from lightning_bninit import BNInit, BNMonitor


def _sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def test_histograms_share_the_row_of_their_step_and_the_prefix_is_honoured(tmp_path, monkeypatch) -> None:
    from lightning.pytorch.loggers import WandbLogger

    assert os.environ.get("WANDB_MODE") == "offline"
    monkeypatch.setenv("WANDB_MODE", "offline")  # WandbLogger(offline=True) changes it; restore it afterwards
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="bninit-test", prefix="exp1")
    callback = BNInit(monitor=BNMonitor(log_every_n_steps=2, plots=False, histograms=True))
    trainer(logger=logger, max_steps=4, callbacks=[callback]).fit(
        Classifier(tiny_net(), _sgd), loader(dataset(dtype=torch.float32)))
    layers = callback.monitor.layer_labels
    logger.experiment.finish()

    records = wandb_reader.read_finished_run(str(tmp_path))
    rows = [r for r in wandb_reader.history(records) if any(k.startswith("exp1-bn/") for k in r)]
    assert [r["trainer/global_step"] for r in rows] == [1, 3]  # one row per logging step...
    for row in rows:  # ...holding both the scalars and the histograms of that step
        assert f"exp1-bn_scale_drift_rel/{layers[0]}" in row
        assert row[f"exp1-bn_hist_scale/{layers[0]}/_type"] == "histogram"
    history = wandb_reader.history(records)
    assert not [k for r in history for k in r if k.startswith(("bn/", "bn_hist", "bn_summary"))]  # all prefixed
    assert history[-1]["exp1-bn_summary/layers/_type"] == "table-file"
    assert any(m.name == f"exp1-bn_xhat_bound_ratio/{layers[0]}" and m.summary.max
               for m in wandb_reader.metric_definitions(records))
    config = wandb_reader.config(records)
    assert config["bninit"]["init_scale"] == 0.1 and config["bn_monitor"]["log_every_n_steps"] == 2
