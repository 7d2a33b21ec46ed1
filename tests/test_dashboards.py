"""BN dashboards a practitioner can watch during a run, and one monitoring computation behind the callback and
``bn_statistics``, read back as a user would: W&B offline run files and TensorBoard event files (compact keys by
layer section, live panels, custom scalars, heat maps, peak summaries, figures and tables after interrupted runs,
the summary table and alerts)."""

from __future__ import annotations

import csv
import math
import os
import warnings
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback
from support import wandb_reader
from support.recording import RecordingLogger
from support.helpers import Classifier, dataset, loader, tiny_net, trainer
from support.launch import load_script
from torch import nn

from lightning_bninit import BNInit, BNMonitor, bn_statistics
from lightning_bninit.monitoring.stats import COMPACT_STATS, STATS, layer_labels

LABELS = ["00_net_1", "01_net_4", "02_net_9"]  # tiny_net's BN layers net.1, net.4, net.9, in network order


def _sgd(params):
    return torch.optim.SGD(params, lr=0.5, momentum=0.9)


def _wandb_logger(tmp_path, monkeypatch, **kwargs: Any):
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")  # WandbLogger(offline=True) changes it; restore it afterwards
    return WandbLogger(save_dir=str(tmp_path), offline=True, project="bninit-test", **kwargs)


def _finished_records(logger, root) -> list[Any]:
    logger.experiment.finish()
    return wandb_reader.read_finished_run(str(root))


class RaiseAt(Callback):
    """Raises ``exception`` at the start of optimizer step ``step`` (after the steps before it were logged)."""

    def __init__(self, step: int, exception: BaseException) -> None:
        self.step, self.exception = step, exception

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise self.exception


# ------------------------------------------------------------------------------------------------ keys


def test_labels_keep_network_order_and_hold_no_dots() -> None:
    names = ["conv1.bn", *[f"layer{i}.0.bn1" for i in range(1, 12)]]
    labels = layer_labels(names)
    assert labels[:2] == ["00_conv1_bn", "01_layer1_0_bn1"] and labels[-1] == "11_layer11_0_bn1"
    assert sorted(labels) == labels and not any("." in label for label in labels)
    assert len(layer_labels([f"l{i}" for i in range(120)])[0]) == len("000_l0")


def test_compact_default_is_about_three_keys_a_layer_and_full_logs_every_statistic(tmp_path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    for full in (False, True):
        log = CSVLogger(str(tmp_path), name=str(full))
        t = trainer(logger=log, max_steps=2, log_every_n_steps=1,
                    callbacks=[BNMonitor(full=full, plots=False, console_summary=False)])
        t.fit(Classifier(tiny_net(), _sgd), loader(dataset(dtype=torch.float32)))
        with open(os.path.join(log.log_dir, "metrics.csv")) as f:
            header = set(next(csv.reader(f)))
        per_layer = {k for k in header if k.startswith("bn_") and not k.startswith("bn_alert/")}
        stats = STATS if full else COMPACT_STATS
        assert per_layer == {f"bn_{s}/{label}" for s in stats for label in LABELS}
        assert {"bn/all/scale_min", "bn/all/scale_drift_rel", "bn/all/xhat_bound_ratio",
                "bn/all/layers_near_bound", "bn/all/layers_collapsed"} <= header
    # analysis/observations.py reads the full set back, layers in network order, m as recorded
    observations = load_script("analysis/observations.py")
    with open(os.path.join(log.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    columns = observations._columns(list(rows[0]))
    assert list(columns) == ["net_1", "net_4", "net_9"]
    record = observations._layer_record(rows, "net_9", columns["net_9"], 1.0)
    assert record["m"] == 8 and record["sqrt_m_minus_1"] == pytest.approx(math.sqrt(7))


def test_callback_and_bn_statistics_are_one_computation() -> None:
    """Same keys with the same options, same values on the same model state; without initial values both log the
    scale statistics (the drift keys left out), not a row of NaN."""
    model = Classifier(tiny_net(), _sgd)
    logger = RecordingLogger()
    monitor = BNMonitor(log_every_n_steps=1, full=True, activations=False, plots=False, console_summary=False)
    trainer(logger=logger, max_steps=3, callbacks=[monitor]).fit(model, loader(dataset(dtype=torch.float32)))
    logged = {k: v for k, v in logger.calls[-1][1].items() if not k.startswith("bn_alert/")}
    initial = monitor.state_dict()["initial"]
    fabric = bn_statistics(model, initial, full=True)  # the last logging step came after the last update
    assert set(fabric) == set(logged)
    assert fabric == pytest.approx(logged, rel=1e-6, abs=1e-9)
    compact = bn_statistics(model, initial)
    no_xhat = [s for s in COMPACT_STATS if not s.startswith("xhat")]  # no capture: the x̂ keys are left out
    assert {k for k in compact if not k.startswith("bn/all")} == {f"bn_{s}/{lab}" for s in no_xhat for lab in LABELS}
    bare = bn_statistics(model, layers=["net.1", "net.4", "net.9"], full=True)
    assert "bn_scale_mean/00_net_1" in bare and "bn_scale_drift/00_net_1" not in bare


# ------------------------------------------------------------------------------------------------ W&B


def test_wandb_summary_of_each_peak_is_the_max_of_its_history_and_live_panels_come_during_the_run(
        tmp_path, monkeypatch) -> None:
    logger = _wandb_logger(tmp_path, monkeypatch)
    monitor = BNMonitor(refresh_every=2, full=True, console_summary=False)
    trainer(logger=logger, max_steps=6, log_every_n_steps=1, callbacks=[monitor]).fit(
        Classifier(tiny_net(), _sgd), loader(dataset(dtype=torch.float32)))
    run_dir = logger.experiment.dir
    records = _finished_records(logger, tmp_path)
    history = wandb_reader.history(records)
    summary = wandb_reader.summary(records)
    scalars = [r for r in history if "bn/all/xhat_absmax" in r]
    assert len(scalars) == 6
    for key in [f"bn_{s}/{label}" for s in ("xhat_absmax", "xhat_bound_ratio") for label in LABELS] + [
            "bn/all/xhat_absmax", "bn/all/xhat_bound_ratio"]:
        values = [r[key] for r in scalars]
        assert values[-1] != max(values) or key.startswith("bn/all")  # the last value would not pass for the max
        assert summary[key]["max"] == pytest.approx(max(values)), key
    # live: heat maps and by-layer charts on every 2nd logging step, before the end of fit (steps 1 and 3)
    live = [r["trainer/global_step"] for r in history if "bn_heatmap/scale_drift_rel/_type" in r]
    assert live[:2] == [1, 3]
    row = next(r for r in history if r["trainer/global_step"] == 1 and "bn_heatmap/xhat_bound_ratio/_type" in r)
    assert row["bn_heatmap/xhat_bound_ratio/_type"] == "image-file"
    assert row["bn_by_layer/scale_drift_rel_table/_type"] == "table-file"
    # the figures go to this run's own folder
    assert sorted(os.listdir(os.path.join(run_dir, "bn_monitor"))) == [
        "peak_xhat.png", "scale_drift.png", "summary.csv", "xhat_bound_ratio.png"]


def test_wandb_runs_in_one_save_dir_keep_their_own_figures(tmp_path, monkeypatch) -> None:
    dirs = []
    for seed in (0, 1):
        logger = _wandb_logger(tmp_path, monkeypatch)
        torch.manual_seed(seed)
        trainer(logger=logger, max_steps=2, log_every_n_steps=1, callbacks=[BNMonitor(console_summary=False)]).fit(
            Classifier(tiny_net(), _sgd), loader(dataset(dtype=torch.float32)))
        dirs.append(logger.experiment.dir)
        logger.experiment.finish()
    assert dirs[0] != dirs[1]
    assert all(os.path.isfile(os.path.join(d, "bn_monitor", "scale_drift.png")) for d in dirs)
    assert not os.path.exists(os.path.join(str(tmp_path), "bn_monitor"))


# ------------------------------------------------------------------------------------------------ TensorBoard


def _events(log_dir: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(log_dir, size_guidance={"tensors": 0, "images": 0, "histograms": 0, "scalars": 0})
    events.Reload()
    return events


def test_tensorboard_custom_scalars_histograms_heatmaps_and_summary(tmp_path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.plugins.custom_scalar import layout_pb2

    monitor = BNMonitor(refresh_every=2, histograms=True, console_summary=False)
    t = trainer(logger=TensorBoardLogger(str(tmp_path)), max_steps=4, log_every_n_steps=1, callbacks=[monitor])
    t.fit(Classifier(tiny_net(), _sgd), loader(dataset(dtype=torch.float32)))
    events = _events(t.log_dir)
    tags = events.Tags()

    (config,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout()
    layout.ParseFromString(config.tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert set(COMPACT_STATS) <= set(charts)
    import re

    for stat in COMPACT_STATS:  # one multi-line chart per statistic: its regex matches every layer's tag, no other
        (regex,) = charts[stat]
        assert sorted(tag for tag in tags["scalars"] if re.fullmatch(regex, tag)) == [
            f"bn_{stat}/{label}" for label in LABELS]

    assert {f"bn_hist_scale/{label}" for label in LABELS} <= set(tags["histograms"])
    assert [e.step for e in events.Histograms("bn_hist_scale/00_net_1")] == [0, 1, 2, 3]
    heat = [e for e in events.Images("bn_heatmap/xhat_bound_ratio")]
    assert [e.step for e in heat] == [1, 3, 3]  # refreshed every 2nd logging step, and at the end
    assert heat[0].width > 300 and heat[0].height > 200
    assert {"bn_plots/scale_drift", "bn_plots/peak_xhat"} <= set(tags["images"])
    text = events.Tensors("bn_summary/layers/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "Peak / sqrt(m-1)" in text and "net.9" in text


# ------------------------------------------------------------------------------------------------ interrupted runs


@pytest.mark.parametrize("exception", [RuntimeError("boom"), KeyboardInterrupt()], ids=["exception", "ctrl-c"])
def test_an_interrupted_run_still_gets_its_figures_tables_and_summary(tmp_path, monkeypatch, caplog, exception):
    logger = _wandb_logger(tmp_path, monkeypatch)
    monitor = BNMonitor(refresh_every=0)
    caplog.set_level("INFO", logger="lightning_bninit")
    t = trainer(logger=logger, max_steps=10, log_every_n_steps=1, callbacks=[monitor, RaiseAt(3, exception)])
    with pytest.raises((RuntimeError, SystemExit)):  # Lightning turns Ctrl-C into sys.exit(1) after cleaning up
        t.fit(Classifier(tiny_net(), _sgd), loader(dataset(dtype=torch.float32)))
    run_dir = logger.experiment.dir
    records = _finished_records(logger, tmp_path)
    assert monitor.history.steps == [0, 1, 2]
    folder = os.path.join(run_dir, "bn_monitor")
    assert {"scale_drift.png", "peak_xhat.png", "summary.csv"} <= set(os.listdir(folder))
    with open(os.path.join(folder, "summary.csv")) as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["layer"] for r in rows) == ["net.1", "net.4", "net.9"]
    (table,) = [r.getMessage() for r in caplog.records if "BN layers at the end of fit" in r.getMessage()]
    assert f"stopped by {type(exception).__name__} after step 2" in table
    history = wandb_reader.history(records)
    assert any(r.get("bn_summary/layers/_type") == "table-file" for r in history)
    assert any(r.get("bn_plots/peak_xhat/_type") == "image-file" for r in history)


# ------------------------------------------------------------------------------------------------ table and alerts


class ShrinkScale(Callback):
    """Multiplies the scale of ``net.4`` by 0.01 before step ``step``: the layer's scale collapses."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.net[4].weight.mul_(0.01)


def test_summary_table_worst_first_with_m_and_alerts_once_per_layer(tmp_path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    log = CSVLogger(str(tmp_path), name="", version="run")
    monitor = BNMonitor(alert_bound_ratio=0.5, console_summary=False, plots=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(logger=log, max_steps=5, log_every_n_steps=1, callbacks=[BNInit(monitor=monitor), ShrinkScale(2)]).fit(
            Classifier(tiny_net(), lambda p: torch.optim.SGD(p, lr=1e-3)),
            loader(dataset(dtype=torch.float32)))
    rows = monitor.history.summary_rows()
    ratios = [r["peak_ratio"] for r in rows]
    assert ratios == sorted(ratios, reverse=True)
    by_layer = {r["layer"]: r for r in rows}
    assert by_layer["net.9"]["m"] == 8 and by_layer["net.1"]["m"] == 8 * 6 * 6  # batch 8; 6x6 maps after conv
    assert by_layer["net.9"]["sqrt_m_minus_1"] == pytest.approx(math.sqrt(7))
    assert by_layer["net.4"]["peak_xhat"] == pytest.approx(by_layer["net.4"]["peak_ratio"]
                                                           * by_layer["net.4"]["sqrt_m_minus_1"], rel=1e-5)
    collapse = [w for w in caught if "'net.4'" in str(w.message) and "largest |γ|" in str(w.message)]
    assert len(collapse) == 1  # once, although the scale stays collapsed for three logging steps
    near = [str(w.message) for w in caught if "of its bound" in str(w.message)]
    assert len(near) == len(set(near)) and any("'net.9'" in m for m in near)
    with open(os.path.join(log.log_dir, "metrics.csv")) as f:
        logged = list(csv.DictReader(f))
    flagged = [int(r["step"]) for r in logged if r.get("bn_alert/01_net_4/scale_collapse")]
    assert flagged == [2]  # the flag marks the step the layer crossed the threshold
    assert [float(r["bn/all/layers_collapsed"]) for r in logged if r.get("bn/all/layers_collapsed")] == [
        0, 0, 1, 1, 1]
    assert float(logged[-1]["bn/all/scale_min"]) == pytest.approx(
        min(float(r) for r in [monitor.history.final[n][2] for n in ("net.1", "net.4", "net.9")]), rel=1e-5)


def test_thresholds_and_refresh_are_checked() -> None:
    for bad in ({"alert_bound_ratio": -1}, {"alert_scale_collapse": "x"}, {"refresh_every": -2},
                {"refresh_every": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            BNMonitor(**bad)
    assert BNMonitor().histograms is False and BNMonitor(full=True).histograms is True


def test_history_of_an_older_checkpoint_with_other_columns_starts_anew() -> None:
    from lightning_bninit.monitoring.history import MonitorHistory

    old = {"layer_names": ["a"], "steps": torch.tensor([0]), "rows": torch.zeros(1, 12), "initial_scale": {"a": 0.1},
           "final": {"a": [0.0] * 8}}
    history = MonitorHistory.from_state_dict(old)
    assert history.layer_names == ["a"] and history.steps == [] and history.initial_scale == {"a": 0.1}


def test_model_with_a_lazy_layer_gets_its_baseline_after_the_first_forward() -> None:
    net = nn.Sequential(nn.Flatten(), nn.LazyLinear(4), nn.LazyBatchNorm1d(), nn.ReLU(), nn.Linear(4, 3))
    monitor = BNMonitor(log_every_n_steps=1, plots=False, console_summary=False)
    logger = RecordingLogger()
    trainer(logger=logger, max_steps=2, callbacks=[monitor]).fit(
        Classifier(net, _sgd), loader(dataset(dtype=torch.float32)))
    assert monitor.history.initial_scale == {"net.2": 1.0}
    assert "bn_scale_drift_rel/00_net_2" in logger.calls[0][1]
