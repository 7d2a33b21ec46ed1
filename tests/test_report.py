import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from lightning_bninit.experiments.command import main
from lightning_bninit.experiments.report import format_markdown, paired_report, plot_differences
from lightning_bninit.experiments.results import load_results
from lightning_bninit.experiments.stats import pairs_for_power

BASE = [0.90, 0.91, 0.89, 0.92, 0.90, 0.88]
TREAT = [0.92, 0.92, 0.90, 0.95, 0.91, 0.90]


def write(path: Path, rows, tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return path


def rows(base=BASE, treat=TREAT, metric="test_acc"):
    out = []
    for seed, (b, t) in enumerate(zip(base, treat), start=1):
        out.append({"seed": seed, "arm": "standard", metric: b, "duration_s": 1.0, "config": {}})
        out.append({"seed": seed, "arm": "bninit", metric: t, "duration_s": 1.0, "config": {}})
    return out


def test_statistics_match_scipy(tmp_path):
    rep = paired_report(load_results(write(tmp_path / "r.jsonl", rows())), "test_acc")
    b, t = np.array(BASE), np.array(TREAT)
    d = t - b
    assert rep.n_pairs == 6 and rep.seeds == [1, 2, 3, 4, 5, 6]
    assert rep.mean_diff == pytest.approx(d.mean())
    assert rep.p_value_ttest == pytest.approx(stats.ttest_rel(t, b, alternative="greater").pvalue)
    assert rep.t_statistic == pytest.approx(stats.ttest_rel(t, b).statistic)
    assert rep.p_value_wilcoxon == pytest.approx(stats.wilcoxon(d, alternative="greater").pvalue)
    assert rep.cohens_dz == pytest.approx(d.mean() / d.std(ddof=1))
    assert rep.bootstrap_ci95_low < d.mean() < rep.bootstrap_ci95_high
    assert rep.arms["standard"] == {"n": 6, "mean": pytest.approx(b.mean()), "std": pytest.approx(b.std(ddof=1)),
                                    "diverged": 0}
    assert rep.significant and rep.verdict.startswith("SIGNIFICANT: bninit > standard on test_acc")


def test_hand_checkable_case(tmp_path):
    # differences 1, 2, 3: mean 2, std 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3, d_z = 2
    rep = paired_report(load_results(write(tmp_path / "r.jsonl", rows([0, 0, 0], [1, 2, 3]))), "test_acc")
    assert rep.mean_diff == 2 and rep.std_diff == 1 and rep.cohens_dz == 2
    assert rep.t_statistic == pytest.approx(2 * math.sqrt(3))
    assert rep.p_value_ttest == pytest.approx(stats.t.sf(2 * math.sqrt(3), 2))
    assert rep.p_value_wilcoxon == pytest.approx(1 / 8)  # exact: only the all-positive sign pattern
    # statsmodels' TTestPower().solve_power(effect_size=2, alpha=0.05, power=0.8, alternative="larger") = 3.34
    assert rep.n_pairs_for_80_power == 4
    # one-sided 95% t interval: 2 - t(0.95, df=2) * 1 / sqrt(3), with t(0.95, 2) = 2.919986 (t table)
    assert rep.ci_low == pytest.approx(2 - 2.919986 / math.sqrt(3), abs=1e-6) and rep.ci_high == math.inf
    assert rep.ci_level == pytest.approx(0.95)


def test_power_against_noncentral_t():
    n = pairs_for_power(0.5, alpha=0.05, power=0.8)
    power = lambda k: stats.nct.sf(stats.t.ppf(0.95, k - 1), k - 1, 0.5 * math.sqrt(k))  # noqa: E731
    assert power(n) >= 0.8 > power(n - 1)
    assert 25 <= n <= 28  # textbook value for d = 0.5, one-sided: 27
    assert pairs_for_power(-0.5) is None and pairs_for_power(0.0) is None
    assert pairs_for_power(-0.5, alternative="less") == n


def test_markdown_json_and_plot_cli(tmp_path, capsys):
    path = write(tmp_path / "r.jsonl", rows())
    assert main(["report", str(path), "--metric", "test_acc", "--plot", str(tmp_path / "d.png")]) == 0
    md = capsys.readouterr().out
    assert "| standard | 6 |" in md and "paired t-test" in md and "Verdict (alpha = 0.05)" in md
    assert "| 95% one-sided paired t CI of mean difference (the test's interval) | [" in md and "+inf) |" in md
    assert "| robustness check: bootstrap 95% CI of mean difference (" in md
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["report", str(path), "--metric", "test_acc", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    for key in ("n_pairs", "mean_diff", "p_value_ttest", "p_value_wilcoxon", "cohens_dz",
                "ci_low", "ci_high", "ci_level", "bootstrap_ci95_low", "bootstrap_ci95_high", "bootstrap_method",
                "diverged_runs", "n_diverged_runs", "n_pairs_dropped_diverged", "power_observed"):
        assert key in obj, key
    assert obj["n_pairs"] == 6 and "comparisons" not in obj
    assert not {"ci95_low", "ci95_high", "ci_method"} & set(obj)  # the 0.2.0 names of the bootstrap interval: gone in 0.3
    assert obj["ci_high"] is None and obj["ci_low"] > 0  # [low, +inf): one-sided, significant
    assert obj["n_diverged_runs"] == {"standard": 0, "bninit": 0} and obj["n_pairs_dropped_diverged"] == 0


def test_failed_and_unpaired_runs_are_reported_and_left_out(tmp_path):
    data = rows() + [{"seed": 7, "arm": "standard", "test_acc": 0.5, "duration_s": 1, "config": {}},
                     {"seed": 7, "arm": "bninit", "error": "boom", "duration_s": 1, "config": {}}]
    rep = paired_report(load_results(write(tmp_path / "r.jsonl", data)), "test_acc")
    assert rep.n_pairs == 6 and rep.unpaired["standard"] == [7] and rep.failed_runs["bninit"] == [7]
    assert any("seeds [7]" in n for n in rep.notes)
    assert "note:" in format_markdown(rep)


def test_superseded_failure_is_not_counted(tmp_path):
    data = [{"seed": 1, "arm": "bninit", "error": "boom", "config": {}}] + rows()
    rep = paired_report(load_results(write(tmp_path / "r.jsonl", data)), "test_acc")
    assert rep.failed_runs["bninit"] == []


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_bninit", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ('{"seed": 1, "arm": "standard", "test_acc": 0.9}\nnot json\n', "line 2: not valid JSON"),
        ('{"seed": 1, "arm": "standard", "test_acc": 0.9}\n{"seed": 1, "arm": "bni', "line 2: truncated"),
        ('{"seed": "x", "arm": "standard"}\n', "line 1: 'seed' must be an integer"),
        ('[1, 2]\n', "line 1: expected a JSON object"),
    ],
)
def test_malformed_lines_are_named(tmp_path, capsys, content, expect):
    path = tmp_path / "r.jsonl"
    path.write_text(content)
    assert main(["report", str(path), "--metric", "test_acc"]) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err


def test_bad_inputs_give_clear_messages(tmp_path, capsys):
    good = write(tmp_path / "r.jsonl", rows())
    cases = [
        (["report", str(tmp_path / "missing.jsonl"), "--metric", "test_acc"], "results file not found"),
        (["report", str(good), "--metric", "val_acc"], "unknown metric 'val_acc'"),
        (["report", str(good), "--metric", "test_acc", "--treatment", "nope"], "treatment arm 'nope'"),
        (["report", str(good), "--metric", "test_acc", "--baseline", "bninit", "--treatment", "bninit"], "same arm"),
        (["report", str(write(tmp_path / "one.jsonl", rows([0.9], [0.95]))), "--metric", "test_acc"],
         "need at least 2 paired seeds"),
        (["report", str(write(tmp_path / "zero.jsonl", rows([0.9, 0.8, 0.7], [0.91, 0.81, 0.71]))), "--metric", "test_acc"],
         "variance is zero"),
        (["report", str(write(tmp_path / "unp.jsonl", rows()[:1] + rows()[3:4])), "--metric", "test_acc"],
         "left out"),
        (["report", str(write(tmp_path / "nan.jsonl", rows([0.9, float("nan")], [0.9, 0.9]))), "--metric",
          "test_acc"], "found 1 (1 diverged run(s) of 'standard'"),
        (["report", str(write(tmp_path / "str.jsonl", rows([0.9, "nan"], [0.9, 0.9]))), "--metric",
          "test_acc"], "'test_acc' must be a number, got 'nan'"),
        (["report", str(write(tmp_path / "dup.jsonl", rows() + rows()[:1])), "--metric", "test_acc"],
         "already finished on line 1"),
    ]
    for argv, expect in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expect in err, (argv, err)
        assert "Traceback" not in err


def test_skip_bad_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows()) + "garbage\n")
    res = load_results(path, skip_bad_lines=True)
    assert [n for n, _ in res.bad_lines] == [13]
    assert paired_report(res, "test_acc").n_pairs == 6


def test_console_script_subprocess_has_no_traceback(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("{broken\n")
    proc = run_cli("report", str(path), "--metric", "test_acc")
    assert proc.returncode == 2 and "line 1: not valid JSON" in proc.stderr and "Traceback" not in proc.stderr
    assert plot_differences is not None
