"""Two things a user reads from the monitor: the drift a standalone ``BNMonitor`` logs after a resume (relative to the
start of the first fit, not to the weights it was resumed with) and the end-of-fit summary's peak |x̂| (the largest
value logged, not a mean over the logging steps)."""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from support.helpers import Classifier, dataset, loader, tiny_net, trainer

from lightning_bninit import BNMonitor
from lightning_bninit.monitoring.console import COLUMNS, format_summary
from lightning_bninit.monitoring.history import MonitorHistory
from lightning_bninit.monitoring.stats import STATS


class Recording(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, dict[str, Any]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


def _sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)


def _drift_from_one(weight: torch.Tensor) -> float:
    # The monitor's own arithmetic (stats.param_stats): float32, |w - init| averaged over the channels.
    w = weight.detach().float()
    return float((w - torch.ones_like(w)).abs().mean())


def test_standalone_monitor_logs_drift_from_the_first_start_after_a_resume(tmp_path) -> None:
    data = loader(dataset(n=32, dtype=torch.float32))  # 4 steps per epoch
    ckpt = ModelCheckpoint(dirpath=str(tmp_path), save_last=True)
    trainer(max_epochs=1, logger=Recording(), enable_checkpointing=True,
            callbacks=[BNMonitor(log_every_n_steps=1, plots=False, full=True), ckpt]).fit(Classifier(tiny_net(), _sgd),
                                                                                         data)

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


def test_summary_peak_is_the_largest_logged_value() -> None:
    names = ["a", "b"]
    k = STATS.index("xhat_absmax")
    history = MonitorHistory(layer_names=names, initial_scale={"a": 0.1, "b": 0.1})
    for step, (a, b) in enumerate([(2.0, 9.0), (7.0, math.nan), (3.0, 1.0)]):
        row = [[0.0] * len(STATS) for _ in names]
        row[0][k], row[1][k] = a, b
        history.append(step, row)
    peaks = [r["peak_xhat"] for r in history.summary_rows()]
    assert peaks == [7.0, 9.0]  # max over steps (NaN: not measured that step); the means would be 4.0 and 5.0
    assert history.peaks("xhat_absmax") == peaks
    table = format_summary(history.summary_rows())
    column = [title for _, title in COLUMNS].index("Peak |x̂|")
    assert [line.split()[column] for line in table.splitlines()[3:]] == ["7", "9"]
