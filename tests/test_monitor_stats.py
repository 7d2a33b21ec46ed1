"""The monitor's statistics as functions: x̂ and parameter statistics by hand and against BatchNorm, the network
summaries (maxima and means over layers, also in the logged rows), ``bn_statistics`` for plain loops, the reduction
over ranks, and the end-of-fit summary's peak |x̂| (the largest value logged, not a mean over the logging steps)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from support.monitor_csv import csv_rows as _rows, csv_trainer as _csv_trainer, sgd_momentum as _sgd
from support.helpers import Classifier, dataset, loader, tiny_net
from lightning_bninit import BNInit
from lightning_bninit import BNMonitor
from lightning_bninit.monitoring.console import COLUMNS, format_summary
from lightning_bninit.monitoring.history import MonitorHistory
from lightning_bninit.monitoring.stats import COMPACT_STATS, STATS, param_stats, summarize, xhat_stats

# ------------------------------------------------------------------------------------------------ pure statistics


def test_xhat_stats_single_outlier_is_sqrt_m_minus_1() -> None:
    m, a, eps = 16, 100.0, 1e-5
    x = torch.zeros(m, 2)
    x[0, 0] = a
    x[:, 1] = torch.linspace(-1, 1, m)
    w, b = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.0])
    absmax, ratio, frac, out_absmax, count = xhat_stats(x, eps, w, b).tolist()
    assert count == m  # recorded per layer: the bound sqrt(m - 1) is known
    # one value a, the rest 0: mean a/m, biased var a^2 (m-1)/m^2
    expected = (a - a / m) / math.sqrt(a * a * (m - 1) / m**2 + eps)
    assert absmax == pytest.approx(expected, rel=1e-6)
    assert absmax == pytest.approx(math.sqrt(m - 1), rel=1e-6)
    assert ratio == pytest.approx(expected / math.sqrt(m - 1), rel=1e-6)
    assert frac == pytest.approx(1 / (2 * m))  # only the outlier is > 3 (linspace stays below sqrt(3))
    assert out_absmax == pytest.approx(0.5 * expected + 0.25, rel=1e-6)


def test_xhat_stats_matches_batch_norm_2d_and_bf16_stays_float32() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=g) * 3 + 1
    x[1, 2, 3, 4] = 40.0
    bn = nn.BatchNorm2d(3, eps=1e-3).train()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.1, -2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, 0.3, -1.0]))
        reference_xhat = nn.functional.batch_norm(x, None, None, training=True, eps=1e-3)
        reference_out = bn(x)
    absmax, ratio, frac, out_absmax, count = xhat_stats(x, bn.eps, bn.weight, bn.bias).tolist()
    assert count == 4 * 5 * 5
    assert absmax == pytest.approx(reference_xhat.abs().max().item(), rel=1e-5)
    assert ratio == pytest.approx(absmax / math.sqrt(4 * 5 * 5 - 1), rel=1e-6)
    assert frac == pytest.approx((reference_xhat.abs() > 3).float().mean().item())
    assert out_absmax == pytest.approx(reference_out.abs().max().item(), rel=1e-5)

    low = x.to(torch.bfloat16)
    stats = xhat_stats(low, bn.eps, bn.weight, bn.bias)
    assert stats.dtype == torch.float32
    assert stats.tolist() == pytest.approx(xhat_stats(low.float(), bn.eps, bn.weight, bn.bias).tolist(), rel=1e-6)


def test_param_stats_by_hand() -> None:
    w, b = torch.tensor([0.1, 0.3]), torch.tensor([-1.0, 1.0])
    got = dict(zip(STATS, param_stats(w, b, torch.full((2,), 0.1), torch.zeros(2)).tolist()))
    assert got["scale_mean"] == pytest.approx(0.2)
    assert got["scale_std"] == pytest.approx(0.1)  # population std over channels
    assert (got["scale_min"], got["scale_max"]) == pytest.approx((0.1, 0.3))
    assert (got["shift_mean"], got["shift_std"]) == pytest.approx((0.0, 1.0))
    assert got["scale_drift"] == pytest.approx(0.1)  # (0 + 0.2) / 2
    assert got["shift_drift"] == pytest.approx(1.0)
    assert got["scale_drift_rel"] == pytest.approx(1.0)  # 0.1 / mean |gamma0| = 0.1 / 0.1
    assert got["scale_absmax_rel"] == pytest.approx(3.0)  # max |gamma| / mean |gamma0|


# What each network summary is, from docs/design.md ("The monitor"), written out rather than read from the code.
def _mean(v: list[float]) -> float:
    return sum(v) / len(v)


SUMMARY = {"xhat_absmax": max, "xhat_bound_ratio": max, "out_absmax": max, "scale_max": max, "scale_min": min,
           "scale_drift": _mean, "shift_drift": _mean, "xhat_frac_gt3": _mean, "scale_drift_rel": _mean}
LABELS = {"net.1": "00_net_1", "net.4": "01_net_4", "net.9": "02_net_9"}


def test_network_summaries_are_maxima_and_means_over_layers() -> None:
    rows = torch.arange(3 * len(STATS), dtype=torch.float64).reshape(3, len(STATS)) ** 1.5  # distinct per layer
    rows[1, STATS.index("xhat_absmax")] = math.nan  # a layer without x̂ is left out, not counted as 0
    got = summarize(rows)
    assert set(got) == set(SUMMARY)
    for stat, reduce in SUMMARY.items():
        column = [v for v in rows[:, STATS.index(stat)].tolist() if not math.isnan(v)]
        assert float(got[stat]) == pytest.approx(reduce(column), rel=1e-12), stat
        assert max(column) != pytest.approx(sum(column) / len(column))  # the readings differ here
        assert min(column) != pytest.approx(sum(column) / len(column))


def test_network_summaries_in_the_logged_rows_of_a_three_layer_network(tmp_path) -> None:
    model = Classifier(tiny_net(), _sgd)
    trainer = _csv_trainer(tmp_path, max_steps=3, log_every_n_steps=1,
                           callbacks=[BNInit(monitor=BNMonitor(full=True, plots=False, console_summary=False))])
    trainer.fit(model, loader(dataset(dtype=torch.float32)))
    rows = _rows(trainer.log_dir)
    logged = [r for r in rows if r.get("bn/all/scale_drift")]
    assert len(logged) == 3
    for row in logged:
        for stat, reduce in SUMMARY.items():
            per_layer = [float(row[f"bn_{stat}/{label}"]) for label in LABELS.values()]
            assert float(row[f"bn/all/{stat}"]) == pytest.approx(reduce(per_layer), rel=1e-6), stat
    drifts = [float(logged[-1][f"bn_scale_drift/{label}"]) for label in LABELS.values()]
    assert len(set(drifts)) == 3  # layers moved differently, so a max would not pass for the mean


def test_monitor_argument_is_checked() -> None:
    assert BNInit(monitor=False).monitor is None
    assert isinstance(BNInit().monitor, BNMonitor)
    custom = BNMonitor(log_every_n_steps=3)
    assert BNInit(monitor=custom).monitor is custom
    with pytest.raises(ValueError, match="monitor"):
        BNInit(monitor="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log_every_n_steps"):
        BNMonitor(log_every_n_steps=-1)


def test_bn_statistics_for_plain_loops() -> None:
    """The function behind the Fabric example: the monitor's keys and values, from one forward inside capture_xhat."""
    from lightning_bninit import bn_statistics, capture_xhat

    torch.manual_seed(0)
    net = tiny_net()
    initial = {name: {"scale": net[i].weight.detach().clone(), "shift": net[i].bias.detach().clone()}
               for name, i in (("1", 1), ("4", 4), ("9", 9))}
    with torch.no_grad():
        net[4].weight.add_(0.25)
    x = dataset(dtype=torch.float32).tensors[0][:8]
    inputs = {}
    for i in (1, 4, 9):
        net[i].register_forward_hook(lambda m, args, out, i=i: inputs.setdefault(i, args[0].detach()))
    with capture_xhat(net) as xhat:
        net(x)
    assert all(len(net[i]._forward_hooks) == 1 for i in (1, 4, 9))  # only the test's own: the capture's are gone
    got = bn_statistics(net, initial, xhat, full=True)
    for name, i in (("00_1", 1), ("01_4", 4), ("02_9", 9)):
        bn = net[i]
        init = initial[name[3:]]
        expected = [*param_stats(bn.weight, bn.bias, init["scale"], init["shift"]).tolist(),
                    *xhat_stats(inputs[i], bn.eps, bn.weight, bn.bias).tolist()]
        assert [got[f"bn_{stat}/{name}"] for stat in STATS] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert got["bn_scale_drift/01_4"] == pytest.approx(0.25)
    assert got["bn/all/scale_drift"] == pytest.approx(0.25 / 3)
    # The default is the compact set: per layer drift / gamma0, the bound ratio and the shift drift, plus bn/all.
    compact = bn_statistics(net, initial, xhat)
    assert {k for k in compact if not k.startswith("bn/all/")} == {
        f"bn_{s}/{label}" for s in COMPACT_STATS for label in ("00_1", "01_4", "02_9")}
    assert compact["bn_scale_drift_rel/01_4"] == pytest.approx(0.25 / initial["4"]["scale"].abs().mean().item())
    # Without initial values or a capture, the drift and x̂ keys are left out; layers can be chosen by name.
    bare = bn_statistics(net, layers=["4"], full=True)
    assert set(bare) == {f"bn_{s}/00_4" for s in STATS[:6]} | {
        "bn/all/scale_max", "bn/all/scale_min", "bn/all/layers_near_bound", "bn/all/layers_collapsed"}
    with capture_xhat(net, enabled=False) as idle:
        net(x)
    assert idle.values() == {}
    with pytest.raises(ValueError, match=r"\['0'\] are not BN layers"):
        bn_statistics(net, layers=["0"])


def test_reduce_over_ranks_takes_the_max_except_the_fraction_which_is_the_mean() -> None:
    from lightning_bninit.monitoring.stats import XHAT_STATS, reduce_over_ranks

    gathered = torch.tensor([[[4.0, 0.5, 0.1, 2.0, 16.0]], [[6.0, 0.75, 0.3, 1.0, 16.0]]])  # [world 2, layers 1, 5]
    got = dict(zip(XHAT_STATS, reduce_over_ranks(gathered)[0].tolist()))
    assert got == pytest.approx({"xhat_absmax": 6.0, "xhat_bound_ratio": 0.75, "xhat_frac_gt3": 0.2,
                                 "out_absmax": 2.0, "m": 16.0})


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
