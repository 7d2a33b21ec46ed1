"""BNMonitor as a callback of its own: any model, no effect on training, one logger call per step next to
BNInit, history kept across a resume and the drift a standalone monitor logs after one (relative to the start of the
first fit, not to the weights it was resumed with), settings as hyperparameters."""

from __future__ import annotations

import copy
import csv
import os

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from support.helpers import Classifier, dataset, loader, tiny_net, trainer
from support.recording import RecordingLogger, RecordingLogger as Recording

from lightning_bninit import BNInit, BNMonitor
from lightning_bninit.monitoring.stats import STATS


def _sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)


def test_standalone_monitor_watches_a_standard_model(tmp_path) -> None:
    model = Classifier(tiny_net(), _sgd)
    logger = RecordingLogger()
    monitor = BNMonitor(log_every_n_steps=2, plots=False, full=True)
    trainer(logger=logger, max_steps=6, callbacks=[monitor]).fit(model, loader(dataset(dtype=torch.float32)))
    assert monitor.layer_names == ["net.1", "net.4", "net.9"]  # every affine BN layer, network order
    assert logger.bn_steps() == [1, 3, 5]
    last = logger.calls[-1][1]
    assert monitor.layer_labels == ["00_net_1", "01_net_4", "02_net_9"]
    assert {f"bn_{s}/02_net_9" for s in STATS} <= set(last)
    # drift from the values at the start of fit: PyTorch's scale 1 and shift 0 (no BNInit here)
    assert last["bn_scale_drift/01_net_4"] == pytest.approx((model.net[4].weight - 1).abs().mean().item(), rel=1e-5)
    assert last["bn_scale_drift_rel/01_net_4"] == pytest.approx(last["bn_scale_drift/01_net_4"], rel=1e-6)  # gamma0 1
    assert last["bn_shift_drift/01_net_4"] == pytest.approx(model.net[4].bias.abs().mean().item(), rel=1e-5)
    assert last["bn_scale_drift/01_net_4"] > 0
    assert monitor.history.steps == [1, 3, 5] and monitor.history.initial_scale == {"net.1": 1.0, "net.4": 1.0,
                                                                                    "net.9": 1.0}
    assert logger.hparams[-1]["bn_monitor"]["log_every_n_steps"] == 2


def test_include_and_exclude_choose_the_layers() -> None:
    monitor = BNMonitor(include="net.*", exclude=["net.9"], plots=False)
    trainer(logger=RecordingLogger(), max_steps=1, callbacks=[monitor]).fit(
        Classifier(tiny_net(), _sgd), loader(dataset(dtype=torch.float32)))
    assert monitor.layer_names == ["net.1", "net.4"]


def test_monitor_changes_nothing_in_training() -> None:
    torch.manual_seed(0)
    net = tiny_net().double()
    fitted = []
    for callbacks in ([], [BNMonitor(log_every_n_steps=1, plots=False)]):
        model = Classifier(copy.deepcopy(net), _sgd)
        trainer(logger=RecordingLogger(), max_steps=5, callbacks=callbacks).fit(model, loader(dataset()))
        fitted.append(model)
    for (name, a), b in zip(fitted[0].state_dict().items(), fitted[1].state_dict().values()):
        assert torch.equal(a, b), name  # bit for bit, buffers included


def test_monitor_next_to_bninit_logs_each_step_once() -> None:
    bninit, monitor = BNInit(), BNMonitor(log_every_n_steps=1, plots=False)
    logger = RecordingLogger()
    trainer(logger=logger, max_steps=3, callbacks=[bninit, monitor]).fit(
        Classifier(tiny_net(), _sgd), loader(dataset(dtype=torch.float32)))
    assert logger.bn_steps() == [0, 1, 2]  # not [0, 0, 1, 1, 2, 2]
    assert bninit.monitor.history.steps == []  # the callback's own monitor stayed idle
    # the Trainer's monitor measures drift from BNInit's values at the start of fit, i.e. from 0.1
    assert monitor.history.initial_scale["net.1"] == pytest.approx(0.1)


def test_bninit_monitor_given_to_the_trainer_too_logs_once_on_its_layers() -> None:
    monitor = BNMonitor(log_every_n_steps=1, plots=False)
    logger = RecordingLogger()
    trainer(logger=logger, max_steps=2, callbacks=[BNInit(monitor=monitor, exclude="net.9"), monitor]).fit(
        Classifier(tiny_net(), _sgd), loader(dataset(dtype=torch.float32)))
    assert logger.bn_steps() == [0, 1] and monitor.layer_names == ["net.1", "net.4"]


def test_two_monitors_are_refused() -> None:
    with pytest.raises(ValueError, match="2 BNMonitor callbacks"):
        trainer(max_steps=1, callbacks=[BNMonitor(), BNMonitor(log_every_n_steps=3)]).fit(
            Classifier(tiny_net(), _sgd), loader(dataset(dtype=torch.float32)))


@pytest.mark.parametrize("owner", ["bninit", "standalone"])
def test_history_is_part_of_the_checkpoint_and_covers_the_whole_run_after_resume(tmp_path, owner) -> None:
    data = loader(dataset(n=32, dtype=torch.float32))  # 4 steps per epoch

    def callbacks() -> list:
        monitor = BNMonitor(log_every_n_steps=1)
        return [BNInit(monitor=monitor)] if owner == "bninit" else [monitor]

    def monitor_of(cbs: list) -> BNMonitor:
        return cbs[0].monitor if owner == "bninit" else cbs[0]

    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    first = callbacks()
    trainer(logger=CSVLogger(str(tmp_path), name="a"), max_epochs=1, callbacks=[*first, ckpt],
            enable_checkpointing=True).fit(Classifier(tiny_net(), _sgd), data)
    saved = torch.load(ckpt.last_model_path, weights_only=True)["callbacks"]  # plain, weights_only-safe state
    assert any("history" in str(state) for state in saved.values())

    second = callbacks()
    t = trainer(logger=CSVLogger(str(tmp_path), name="b"), max_epochs=2, callbacks=second)
    t.fit(Classifier(tiny_net(), _sgd), data, ckpt_path=ckpt.last_model_path)
    history = monitor_of(second).history
    assert history.steps == list(range(8))  # steps of the first run, then of the resumed one
    assert len(history.rows) == 8
    assert os.path.isfile(os.path.join(t.log_dir, "bn_monitor", "scale_drift.png"))
    # drift stays relative to the original start of fit (scale 1 without BNInit, 0.1 with it)
    expected_init = 0.1 if owner == "bninit" else 1.0
    assert history.initial_scale["net.1"] == pytest.approx(expected_init)


def test_settings_reach_the_loggers_as_hyperparameters(tmp_path) -> None:
    logger = CSVLogger(str(tmp_path), name="", version="run")
    trainer(logger=logger, max_steps=1, log_every_n_steps=1,
            callbacks=[BNInit(init_scale=0.2, monitor=BNMonitor(plots=False))]).fit(
        Classifier(tiny_net(), _sgd), loader(dataset(dtype=torch.float32)))
    hparams = yaml.safe_load(open(os.path.join(logger.log_dir, "hparams.yaml")))
    assert hparams["bninit"]["init_scale"] == 0.2 and hparams["bninit"]["scale_lr_divisor"] == 100.0
    assert hparams["bn_monitor"]["plots"] is False
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        assert "bn_scale_drift_rel/00_net_1" in next(csv.reader(f))


def test_state_key_names_what_is_recorded_not_the_output_options(monkeypatch) -> None:
    key = BNMonitor().state_key
    assert key.startswith("BNMonitor{")
    for changed in ({"log_every_n_steps": 3}, {"activations": False}, {"include": "net.1"}, {"exclude": "net.9"}):
        assert BNMonitor(**changed).state_key != key, changed
    assert BNMonitor(plots=False, histograms=False, console_summary=False).state_key == key
    from lightning_bninit import _extras

    monkeypatch.setattr(_extras, "available", lambda name: False)  # a machine without matplotlib reads the same key
    assert BNMonitor().state_key == key


def test_plots_true_without_matplotlib_names_the_extra(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'lightning-bninit\[experiments\]'"):
        BNMonitor(plots=True)
    assert BNMonitor().plots is False  # the default just skips the plots


def _drift_from_one(weight: torch.Tensor) -> float:
    # The monitor's own arithmetic (stats.param_stats): float32, |w - init| averaged over the channels.
    w = weight.detach().float()
    return float((w - torch.ones_like(w)).abs().mean())


def test_standalone_monitor_logs_drift_from_the_first_start_after_a_resume(tmp_path) -> None:
    data = loader(dataset(n=32, dtype=torch.float32))  # 4 steps per epoch
    ckpt = ModelCheckpoint(dirpath=str(tmp_path), save_last=True)
    first = [BNMonitor(log_every_n_steps=1, plots=False, full=True), ckpt]
    trainer(max_epochs=1, logger=Recording(), enable_checkpointing=True, callbacks=first).fit(
        Classifier(tiny_net(), _sgd), data)

    resumed_at = torch.load(ckpt.last_model_path, weights_only=True)["state_dict"]["net.1.weight"]
    assert _drift_from_one(resumed_at) > 0  # the resumed weights are not the start's: the two baselines differ
    model, logger = Classifier(tiny_net(), _sgd), Recording()
    monitor = BNMonitor(log_every_n_steps=1, plots=False, full=True)  # full: the absolute drift too
    trainer(max_epochs=2, logger=logger, callbacks=[monitor]).fit(model, data, ckpt_path=ckpt.last_model_path)

    key = "bn_scale_drift/00_net_1"  # the first BN layer, net.1
    step, last = [(s, m) for s, m in logger.rows if key in m][-1]
    assert step == 7  # the last step of the resumed run, after which the weights are the model's final ones
    expected = _drift_from_one(model.net[1].weight)  # PyTorch's scale 1 at the first start (no BNInit here)
    assert last[key] == expected  # same float32 operations on the same values
    (row,) = [r for r in monitor.history.summary_rows() if r["layer"] == "net.1"]  # rows: worst layers first
    assert row["scale_drift"] == expected
    assert monitor.history.initial_scale["net.1"] == 1.0
