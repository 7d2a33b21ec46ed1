"""The monitor's rows as Lightning's loggers receive them: CSV (a planted outlier and drift, the logging-step rule,
its own interval, drift across a resume, compiled models), TensorBoard scalars, W&B offline run files (keys,
histograms in the row of their step, the logger's prefix, summary table, run config), and DDP (one row per step,
the max over ranks; SyncBatchNorm on two gloo processes)."""

from __future__ import annotations

import glob
import json
import math
import os
import warnings

import pytest
import torch
from torch import nn

from support import wandb_reader
from support.monitor_csv import (  # the names these tests have always used
    LoggingClassifier, csv_rows as _rows, csv_trainer as _csv_trainer, csv_values as _values, sgd_momentum as _sgd,
)
from support.helpers import Classifier, dataset, loader, tiny_net, trainer, trainer as make_trainer
from lightning_bninit import BNInit
from lightning_bninit import BNMonitor
from lightning_bninit.monitoring.stats import COMPACT_STATS, STATS, param_stats, xhat_stats

# ------------------------------------------------------------------------------------------------ CSV




def test_planted_outlier_and_drift_in_metrics_csv(tmp_path, caplog) -> None:
    m, a = 16, 100.0
    x = torch.zeros(m, 2)
    x[0, 0] = a
    x[:, 1] = torch.linspace(-1, 1, m)
    y = torch.arange(m) % 2
    model = Classifier(nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 2)), _sgd)
    callback = BNInit(monitor=BNMonitor(full=True))
    trainer = _csv_trainer(tmp_path, max_steps=1, log_every_n_steps=1, callbacks=[callback])
    caplog.set_level("INFO", logger="lightning_bninit")
    trainer.fit(model, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=m))

    rows = _rows(trainer.log_dir)
    columns = set(rows[0])
    assert {f"bn_{s}/00_net_0" for s in STATS} <= columns
    assert {"bn/all/xhat_absmax", "bn/all/scale_drift", "bn/all/shift_drift"} <= columns
    got = {s: _values(rows, f"bn_{s}/00_net_0")[0] for s in STATS}
    assert got["xhat_absmax"] == pytest.approx(math.sqrt(m - 1), rel=1e-5)
    assert got["xhat_bound_ratio"] == pytest.approx(1.0, rel=1e-5)
    assert got["xhat_frac_gt3"] == pytest.approx(1 / (2 * m))
    assert got["out_absmax"] == pytest.approx(0.1 * math.sqrt(m - 1), rel=1e-5)  # gamma = 0.1, beta = 0 in forward
    bn = model.net[0]
    assert got["scale_drift"] == pytest.approx((bn.weight - 0.1).abs().mean().item(), rel=1e-5, abs=1e-9)
    assert got["shift_drift"] == pytest.approx(bn.bias.abs().mean().item(), rel=1e-5, abs=1e-9)
    assert got["scale_drift"] > 0 and got["shift_drift"] > 0
    assert _values(rows, "bn/all/xhat_absmax")[0] == pytest.approx(math.sqrt(m - 1), rel=1e-5)

    # end of fit: PNG plots in the logger's directory and the summary table through the package's logger
    assert sorted(os.listdir(os.path.join(trainer.log_dir, "bn_monitor"))) == [
        "peak_xhat.png", "scale_drift.png", "summary.csv", "xhat_bound_ratio.png"]
    (table,) = [r.getMessage() for r in caplog.records if r.name.startswith("lightning_bninit")
                and "BN layers at the end of fit" in r.getMessage()]
    assert "net.0" in table


@pytest.mark.parametrize("accumulate", [1, 2])
def test_monitoring_steps_follow_lightning_log_every_n_steps(tmp_path, accumulate) -> None:
    model = LoggingClassifier(tiny_net(), _sgd)
    trainer = _csv_trainer(tmp_path, max_steps=7, log_every_n_steps=3, accumulate_grad_batches=accumulate,
                           callbacks=[BNInit()])
    trainer.fit(model, loader(dataset(n=112, dtype=torch.float32)))
    rows = _rows(trainer.log_dir)
    loss_steps = sorted(_values(rows, "loss"))
    bn_steps = sorted(_values(rows, "bn_xhat_bound_ratio/00_net_1"))
    assert loss_steps == bn_steps == [2, 5]
    assert sorted(_values(rows, "bn_scale_drift_rel/00_net_1")) == [2, 5]
    # hooks only on the (micro-)batch of the logging steps; no hook on any other step
    assert model.hooked_steps == [2, 5]
    assert not any(m._forward_hooks for m in model.modules())


def test_own_interval_and_monitor_off(tmp_path) -> None:
    model = LoggingClassifier(tiny_net(), _sgd)
    trainer = _csv_trainer(tmp_path / "a", max_steps=4, log_every_n_steps=1,
                           callbacks=[BNInit(monitor=BNMonitor(log_every_n_steps=2, plots=False))])
    trainer.fit(model, loader(dataset(dtype=torch.float32)))
    assert sorted(_values(_rows(trainer.log_dir), "bn_shift_drift/01_net_4")) == [1, 3]

    model = LoggingClassifier(tiny_net(), _sgd)
    trainer = _csv_trainer(tmp_path / "b", max_steps=2, log_every_n_steps=1, callbacks=[BNInit(monitor=False)])
    trainer.fit(model, loader(dataset(dtype=torch.float32)))
    assert not any(k.startswith("bn") for k in _rows(trainer.log_dir)[0])
    assert model.hooked_steps == []


def test_resume_keeps_drift_relative_to_original_init(tmp_path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    data = loader(dataset(dtype=torch.float32))
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    trainer = _csv_trainer(tmp_path / "first", max_epochs=1, log_every_n_steps=1, callbacks=[BNInit(), ckpt],
                           enable_checkpointing=True)
    trainer.fit(Classifier(tiny_net(), _sgd), data)
    moved = Classifier(tiny_net(), _sgd)
    moved.load_state_dict(torch.load(ckpt.last_model_path, weights_only=False)["state_dict"])
    assert (moved.net[1].weight - 0.1).abs().max() > 0  # the checkpoint's scales have moved away from 0.1

    model = Classifier(tiny_net(), _sgd)
    trainer = _csv_trainer(tmp_path / "second", max_epochs=2, log_every_n_steps=1, callbacks=[BNInit()])
    trainer.fit(model, data, ckpt_path=ckpt.last_model_path)
    drift = _values(_rows(trainer.log_dir), "bn_scale_drift_rel/00_net_1")  # mean |gamma - gamma0| / 0.1
    last = max(drift)
    assert last == trainer.fit_loop.epoch_loop._batches_that_stepped - 1
    assert drift[last] == pytest.approx((model.net[1].weight - 0.1).abs().mean().item() / 0.1, rel=1e-5)
    # relative to the checkpoint's values the drift would be much smaller than from the original init
    assert drift[last] * 0.1 > (model.net[1].weight - moved.net[1].weight).abs().mean().item()


def test_tensorboard_logger_gets_the_scalars(tmp_path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = make_trainer(logger=TensorBoardLogger(str(tmp_path)), max_steps=2, log_every_n_steps=1,
                           callbacks=[BNInit(monitor=BNMonitor(plots=False, console_summary=False))])
    trainer.fit(Classifier(tiny_net(), _sgd), loader(dataset(dtype=torch.float32)))
    events = EventAccumulator(trainer.log_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {f"bn_{s}/02_net_9" for s in COMPACT_STATS} <= tags
    assert [e.step for e in events.Scalars("bn_xhat_bound_ratio/00_net_1")] == [0, 1]


def test_compiled_model_skips_activations_with_one_warning(tmp_path) -> None:
    model = LoggingClassifier(tiny_net(), _sgd)
    compiled = torch.compile(model, backend="eager")
    trainer = _csv_trainer(tmp_path, max_steps=3, log_every_n_steps=1, callbacks=[BNInit()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(compiled, loader(dataset(dtype=torch.float32)))
    mine = [w for w in caught if "torch.compile" in str(w.message) and "BNInit" in str(w.message)]
    assert len(mine) == 1
    rows = _rows(trainer.log_dir)
    assert sorted(_values(rows, "bn_scale_drift_rel/00_net_1")) == [0, 1, 2]
    assert not any(k.startswith("bn_xhat") for k in rows[0])
    assert model.hooked_steps == []


# ------------------------------------------------------------------------------------------------ W&B offline

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


def test_wandb_offline_run_file_has_keys_histograms_and_summary_table(tmp_path) -> None:
    from lightning.pytorch.loggers import WandbLogger

    from support import wandb_reader

    assert os.environ.get("WANDB_MODE") == "offline"
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="bninit-test")
    callback = BNInit(input_norm=True, monitor=BNMonitor(full=True))
    trainer = make_trainer(logger=logger, max_steps=4, log_every_n_steps=2, callbacks=[callback])
    trainer.fit(Classifier(tiny_net(), _sgd), loader(dataset(dtype=torch.float32)))
    layers = callback.monitor.layer_labels
    run_dir = logger.experiment.dir
    logger.experiment.finish()

    records = wandb_reader.read_finished_run(str(tmp_path))
    history = wandb_reader.history(records)
    scalars = [r for r in history if any(k.startswith("bn/") for k in r)]
    assert [r["trainer/global_step"] for r in scalars] == [1, 3]
    for layer in layers:
        for stat in STATS:
            assert f"bn_{stat}/{layer}" in scalars[-1]
    hists = [r for r in history if any(k.startswith("bn_hist_scale/") for k in r)]
    assert len(hists) == 2
    for layer in layers:
        for kind in ("scale", "shift"):
            assert hists[0][f"bn_hist_{kind}/{layer}/_type"] == "histogram"

    # The end-of-fit panels are one history row; under load W&B may write another row after it, so look for it.
    (final,) = [r for r in history if "bn_summary/layers/_type" in r]
    assert final["bn_summary/layers/_type"] == "table-file"
    with open(os.path.join(run_dir, final["bn_summary/layers/path"])) as f:
        table = json.load(f)
    assert table["columns"][:5] == ["layer", "m", "sqrt_m_minus_1", "peak_xhat", "peak_ratio"]
    assert sorted(row[0] for row in table["data"]) == sorted(callback.layer_names)
    ratios = [row[4] for row in table["data"]]
    assert ratios == sorted(ratios, reverse=True)  # worst layers first
    for stat in ("scale_drift", "xhat_absmax"):
        assert final[f"bn_by_layer/{stat}_table/_type"] == "table-file"
    assert final["bn_plots/scale_drift/_type"] == "image-file"
    assert final["bn_plots/peak_xhat/_type"] == "image-file"

    config = wandb_reader.config(records)
    assert config["bninit"]["init_scale"] == 0.1
    assert any(m.name == f"bn_xhat_absmax/{layers[0]}" and m.summary.max
               for m in wandb_reader.metric_definitions(records))


# ------------------------------------------------------------------------------------------------ DDP


@pytest.mark.slow
def test_ddp_two_cpu_processes_log_once_with_max_over_ranks(tmp_path) -> None:
    from support.launch import run_script

    run_script("ddp_monitor.py", tmp_path)

    files = glob.glob(str(tmp_path / "**" / "metrics.csv"), recursive=True)
    assert len(files) == 1
    rows = _rows(os.path.dirname(files[0]))
    logged = _values(rows, "bn_xhat_absmax/00_net_0")
    assert sorted(logged) == [0, 1, 2]  # each step once
    local = {r: json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1)}
    for step, value in logged.items():
        per_rank = [local[r][str(step)] for r in (0, 1)]
        assert per_rank[1] > per_rank[0]  # rank 1 has the planted outlier
        assert value == pytest.approx(max(per_rank), rel=1e-6)
        assert value == pytest.approx(math.sqrt(8 - 1), rel=1e-4)


@pytest.mark.slow
def test_sync_batchnorm_statistics_on_two_gloo_processes(tmp_path) -> None:
    """The monitor's SyncBatchNorm path (global mean/var/count, x̂ against them, max over ranks) equals one process's
    computation on the whole batch."""
    from support.launch import run_script
    from support.sync_bn_gloo import batch, model

    run_script("sync_bn_gloo.py", tmp_path)
    x, bn = batch(), model()[0]
    var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
    whole = dict(zip(("xhat_absmax", "xhat_bound_ratio", "xhat_frac_gt3", "out_absmax", "m"),
                     xhat_stats(x, bn.eps, bn.weight, bn.bias).tolist()))
    params = dict(zip(STATS, param_stats(bn.weight, bn.bias, torch.full((3,), 0.1), torch.zeros(3)).tolist()))
    # Each half on its own (what a plain BatchNorm would see) gives other values: the test tells them apart.
    halves = [xhat_stats(x[r * 4:(r + 1) * 4], bn.eps, bn.weight, bn.bias).tolist() for r in (0, 1)]
    assert max(h[0] for h in halves) != pytest.approx(whole["xhat_absmax"], rel=1e-3)
    for rank in (0, 1):
        saved = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert saved["forward"].startswith("refused")  # why the hook is called directly on CPU
        torch.testing.assert_close(saved["mean"], mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(saved["var"], var, rtol=1e-6, atol=1e-6)
        assert saved["count"] == 8 * 4 * 4
        logged = saved["logged"]
        for stat, value in {**whole, **params}.items():
            assert logged[f"bn_{stat}/00_0"] == pytest.approx(value, rel=1e-5, abs=1e-7), (rank, stat)
        assert logged["bn/all/xhat_absmax"] == pytest.approx(whole["xhat_absmax"], rel=1e-5)
    local = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["local_xhat"][0].item() for r in (0, 1)]
    assert local[1] > local[0] and local[1] == pytest.approx(whole["xhat_absmax"], rel=1e-5)  # the outlier's rank
