"""``bninit report`` without ``--treatment``: each arm against the baseline, Holm-corrected; the plot."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from support.launch import ROOT, script_env

from lightning_bninit.experiments.command import main
from lightning_bninit.experiments.grid_plot import arm_grid, grid_figure, run_grid
from lightning_bninit.experiments.multiarm import default_treatment, format_multi_markdown, multi_arm_report
from lightning_bninit.experiments.report import paired_report
from lightning_bninit.experiments.results import ReportError, load_results

BASE = np.array([0.80, 0.82, 0.79, 0.81, 0.83, 0.80])
GAINS = {  # one-sided paired t-test p-values against BASE in the comments
    "good": [0.05, 0.06, 0.04, 0.05, 0.07, 0.05],  # 2.7e-5
    "marginal": [0.02, -0.005, 0.03, 0.00, 0.025, 0.01],  # 0.034: below 0.05, but 2 * 0.034 after Holm
    "bad": [-0.05, -0.04, -0.06, -0.03, -0.05, -0.04],  # ~1
}
GRIDS = {"standard": (1.0, 1.0), "good": (0.1, 100.0), "marginal": (0.3, 100.0), "bad": (0.1, 1.0)}


def line(seed: int, arm: str, value: float | str, grid: bool = True, **config) -> dict:
    if grid and arm in GRIDS:
        config["grid"] = {"init_scale": GRIDS[arm][0], "scale_lr_divisor": GRIDS[arm][1]}
    return {"seed": seed, "arm": arm, "test_acc": value, "duration_s": 1.0, "config": config}


def write(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def arms_file(tmp_path: Path, gains: dict[str, list[float]] = GAINS, **kwargs) -> Path:
    lines = []
    for i, b in enumerate(BASE):
        lines.append(line(i + 1, "standard", float(b), **kwargs))
        lines += [line(i + 1, arm, float(b + g[i]), **kwargs) for arm, g in gains.items()]
    return write(tmp_path / "r.jsonl", lines)


def report(path: Path, **kwargs):
    return multi_arm_report(load_results(path), "test_acc", n_resamples=200, **kwargs)


def test_each_arm_as_in_the_two_arm_report_then_holm(tmp_path: Path) -> None:
    path = arms_file(tmp_path)
    rep = report(path)
    assert [c.treatment for c in rep.comparisons] == ["good", "marginal", "bad"]  # best first
    raw = []
    for c in rep.comparisons:
        two = paired_report(load_results(path), "test_acc", "standard", c.treatment, n_resamples=200)
        assert (c.n_pairs, c.mean_diff, c.p_value_ttest, c.ci_low, c.ci_high) == (
            two.n_pairs, two.mean_diff, two.p_value_ttest, two.ci_low, two.ci_high)
        assert c.p_value_ttest == pytest.approx(stats.ttest_rel(BASE + GAINS[c.treatment], BASE,
                                                                alternative="greater").pvalue)
        raw.append(c.p_value_ttest)
    _, adjusted, _, _ = multipletests(raw, method="holm")
    assert [c.p_value_holm for c in rep.comparisons] == pytest.approx(adjusted.tolist())
    marginal = rep.comparisons[1]
    assert marginal.p_value_ttest < 0.05 < marginal.p_value_holm == pytest.approx(2 * marginal.p_value_ttest)
    assert [c.significant for c in rep.comparisons] == [True, False, False] and rep.significant_arms == ["good"]
    assert rep.family_size == 3
    assert rep.verdict == ("SIGNIFICANT after Holm correction: good > standard on test_acc (one-sided paired "
                           "t-tests, Holm-adjusted p <= alpha = 0.05 across 3 arm(s))")


def test_holm_not_bonferroni_in_the_verdict(tmp_path: Path) -> None:
    # raw p 0.021 and 0.034: Holm adjusts both to 0.042 (both significant); Bonferroni would give 0.042 and 0.067
    gains = {"a": [0.02, 0.0, 0.03, 0.00, 0.025, 0.01], "b": GAINS["marginal"]}
    rep = report(arms_file(tmp_path, gains, grid=False))
    assert [c.p_value_holm for c in rep.comparisons] == pytest.approx([0.0424, 0.0424], abs=2e-4)
    assert rep.significant_arms == ["a", "b"]
    assert rep.verdict.startswith("SIGNIFICANT after Holm correction: a, b > standard on test_acc")


def test_not_significant_verdict_and_other_alternatives(tmp_path: Path) -> None:
    path = arms_file(tmp_path, {"marginal": GAINS["marginal"], "bad": GAINS["bad"]})
    rep = report(path)
    assert rep.significant_arms == [] and not any(c.significant for c in rep.comparisons)
    assert rep.verdict.startswith("NOT SIGNIFICANT: no arm > standard on test_acc after Holm correction "
                                  "(one-sided paired t-tests across 2 arm(s); smallest Holm-adjusted p = 0.0673 "
                                  "(marginal) > alpha = 0.05")
    less = report(path, alternative="less")  # e.g. a loss: lower is better
    assert [c.treatment for c in less.comparisons] == ["bad", "marginal"] and less.significant_arms == ["bad"]
    assert less.comparisons[0].ci_low == -math.inf and less.comparisons[0].ci_high < 0
    two = report(path, alternative="two-sided")
    assert [c.treatment for c in two.comparisons] == ["bad", "marginal"]  # smallest p first
    assert two.verdict.startswith("SIGNIFICANT after Holm correction: bad != standard")


def test_failed_unpaired_diverged_and_untestable_arms_per_arm(tmp_path: Path) -> None:
    lines = [line(i + 1, "standard", float(b)) for i, b in enumerate(BASE)]
    lines += [line(i + 1, "good", float(b + GAINS["good"][i])) for i, b in enumerate(BASE) if i != 2]
    lines.append({"seed": 3, "arm": "good", "error": "CUDA out of memory", "config": {}})
    lines += [line(i + 1, "bad", float(b + GAINS["bad"][i]) if i else "NaN") for i, b in enumerate(BASE)]
    lines += [line(1, "lonely", 0.9), {"seed": 1, "arm": "broken", "error": "boom", "config": {}}]
    lines.append({"seed": 7, "arm": "standard", "error": "killed", "config": {}})  # a note of every comparison
    text = "".join(json.dumps(x) + "\n" for x in lines).replace('"NaN"', "NaN")
    path = tmp_path / "r.jsonl"
    path.write_text(text)
    rep = report(path)
    good, bad = (next(c for c in rep.comparisons if c.treatment == arm) for arm in ("good", "bad"))
    assert good.n_pairs == 5 and good.failed_runs == {"standard": [7], "good": [3]} and good.unpaired["standard"] == [3]
    assert bad.n_pairs == 5 and bad.n_pairs_dropped_diverged == 1 and bad.diverged_runs["bad"] == [1]
    assert set(rep.not_compared) == {"lonely", "broken"} and rep.family_size == 2
    assert "found 1" in rep.not_compared["lonely"] and "failed run(s) of 'broken'" in rep.not_compared["broken"]
    assert rep.arms["bad"]["diverged"] == 1 and rep.to_dict()["n_diverged_runs"]["bad"] == 1
    assert rep.verdict.endswith("; 1 pair(s) dropped for diverged runs (bad 1); not compared: lonely, broken)")
    md = format_multi_markdown(rep)
    assert "> note: 1 failed run(s) of 'good' ignored (seeds [3])" in md
    assert md.count("seeds [3] of 'standard' have no finished 'good' run") == 1
    assert good.failed_runs["standard"] == bad.failed_runs["standard"] == [7]
    assert md.count("> note: 1 failed run(s) of 'standard' ignored (seeds [7])") == 1  # once, not once per arm
    assert "> note: 'lonely' not compared: need at least 2 paired seeds" in md
    assert "| bad | 5 (+1 dropped) |" in md


def test_no_comparable_arm_or_no_other_arm_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "one.jsonl", [line(1, "standard", 0.8), line(2, "standard", 0.81), line(1, "x", 0.9)])
    with pytest.raises(ReportError, match="no arm can be compared with 'standard' on 'test_acc':\n  x: need at least"):
        report(path)
    with pytest.raises(ReportError, match="has no arm other than the baseline 'standard'"):
        report(write(tmp_path / "alone.jsonl", [line(1, "standard", 0.8)]))
    with pytest.raises(ReportError, match="unknown metric 'val_acc'"):
        multi_arm_report(load_results(arms_file(tmp_path)), "val_acc")


def test_default_treatment_rule(tmp_path: Path) -> None:
    def arms(*names: str, failed: str = "") -> str | None:
        lines = [line(1, a, 0.8) for a in names] + ([{"seed": 1, "arm": failed, "error": "x"}] if failed else [])
        return default_treatment(load_results(write(tmp_path / "d.jsonl", lines)), "standard")

    assert arms("standard", "bninit") == "bninit"
    assert arms("standard") == "bninit"  # then the two-arm report says that bninit has no finished runs, as before
    assert arms("standard", "bninit", "c10") is None
    assert arms("standard", "c10") is None
    assert arms("standard", "bninit", failed="c10") is None  # a failed arm is an arm of the experiment too


def test_cli_two_arm_file_gives_the_two_arm_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = arms_file(tmp_path, {"bninit": GAINS["good"]})
    outputs = []
    for extra in ([], ["--treatment", "bninit"]):
        for fmt in ([], ["--json"]):
            assert main(["report", str(path), "--metric", "test_acc", *extra, *fmt]) == 0
            outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[2] and outputs[1] == outputs[3]
    assert outputs[0].startswith("## test_acc: bninit vs standard (paired by seed)")


def test_cli_multi_arm_markdown_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = arms_file(tmp_path)
    plot = tmp_path / "grid.png"
    assert main(["report", str(path), "--metric", "test_acc", "--plot", str(plot), "--resamples", "200"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("## test_acc: every arm vs standard (paired by seed, Holm-corrected)")
    assert "| good | 6 | +0.0533 | [" in md and "**Verdict (family-wise alpha = 0.05, Holm across 3 arm(s)):** " in md
    assert f"plot: {plot}" in md and plot.read_bytes()[:4] == b"\x89PNG"
    assert main(["report", str(path), "--metric", "test_acc", "--json", "--plot", str(plot)]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert [c["treatment"] for c in obj["comparisons"]] == ["good", "marginal", "bad"]
    for c in obj["comparisons"]:
        assert {"treatment", "n_pairs", "mean_diff", "p_value_ttest", "p_value_holm", "ci_low", "ci_high",
                "significant"} <= set(c)
    assert obj["significant_arms"] == ["good"] and obj["plot_notes"] == [] and obj["family_size"] == 3
    assert obj["comparisons"][0]["ci_high"] is None  # [low, +inf)
    assert main(["report", str(path), "--metric", "test_acc", "--baseline", "good", "--json"]) == 0
    assert {c["treatment"] for c in json.loads(capsys.readouterr().out)["comparisons"]} == {
        "standard", "marginal", "bad"}


# --- the plot ---------------------------------------------------------------------------------------------------

def test_grid_from_config_only() -> None:
    assert run_grid({"grid": {"init_scale": 0.3, "scale_lr_divisor": 10, "input_norm": True}}) == {
        "init_scale": 0.3, "scale_lr_divisor": 10.0, "input_norm": True}
    # 0.3 reads no command-line options: an explicit arm's overrides do not place it on the plot
    assert run_grid({"overrides": ["--bninit.init_scale=0.05", "--bninit.scale_lr_divisor=30"]}) is None
    assert run_grid({"grid": {"init_scale": 0.0, "scale_lr_divisor": 1}}) is None
    assert run_grid({}) is None


def test_arm_grid_needs_every_run_to_agree(tmp_path: Path) -> None:
    def run(seed: int, arm: str, config: dict) -> dict:
        return {"seed": seed, "arm": arm, "test_acc": 0.8, "config": config}

    grid01, grid03 = {"grid": {"init_scale": 0.1, "scale_lr_divisor": 1}}, {"grid": {"init_scale": 0.3,
                                                                                       "scale_lr_divisor": 1}}
    lines = [run(1, "good", grid01), run(2, "good", grid01), run(1, "odd", grid01), run(2, "odd", {}),
             run(1, "mixed", grid01), run(2, "mixed", grid03), run(1, "bad", {"grid": "0.1"})]
    results = load_results(write(tmp_path / "g.jsonl", lines))
    assert arm_grid(results, "good") == ({"init_scale": 0.1, "scale_lr_divisor": 1.0}, "")
    grid, why = arm_grid(results, "odd")
    assert grid is None and why == "line 4 has no config.grid"
    assert arm_grid(results, "mixed")[1].startswith("its runs disagree on the grid settings")
    assert arm_grid(results, "bad")[1].startswith("config.grid of line 7 is '0.1'")


def test_plot_lines_per_c_on_a_log_axis(tmp_path: Path) -> None:
    lines = [json.loads(x) for x in arms_file(tmp_path).read_text().splitlines()]
    lines += [line(i + 1, "old", float(b) + 0.01, grid=False) for i, b in enumerate(BASE)]
    for x in lines[-len(BASE):]:
        x["config"] = {"grid": {"init_scale": 0.03, "scale_lr_divisor": 100}}
    lines += [line(i + 1, "nogrid", float(b), grid=False, overrides=["--bninit=true"]) for i, b in enumerate(BASE)]
    path = write(tmp_path / "p.jsonl", lines)
    rep = report(path)
    fig, notes = grid_figure(rep, load_results(path))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    drawn = {ln.get_label(): ln.get_xdata().tolist() for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    assert drawn == {"c = 1": [0.1, 1.0], "c = 100": [0.03, 0.1, 0.3]}  # sorted by c, points by γ₀
    c100 = next(ln for ln in ax.get_lines() if ln.get_label() == "c = 100")
    means = {a: rep.arms[a]["mean"] for a in ("old", "good", "marginal")}
    assert c100.get_ydata().tolist() == pytest.approx([means["old"], means["good"], means["marginal"]])
    (band,) = [p for p in ax.patches if p.get_label() == "standard (95% CI)"]
    ys = band.get_patch_transform().transform(band.get_path().vertices)[:, 1]  # y in data coordinates
    half = stats.t.ppf(0.975, 5) * BASE.std(ddof=1) / math.sqrt(6)
    assert (ys.min(), ys.max()) == pytest.approx((BASE.mean() - half, BASE.mean() + half))
    assert len(notes) == 1 and notes[0].startswith("'nogrid' left out of the plot: line ")
    assert notes[0].endswith("has no config.grid")


def test_multi_arm_report_imports_neither_torch_nor_lightning(tmp_path: Path) -> None:
    path = arms_file(tmp_path)
    code = ("import sys\nfrom lightning_bninit.experiments.command import main\n"
            f"assert main(['report', {str(path)!r}, '--metric', 'test_acc', '--plot', {str(tmp_path / 'p.png')!r},"
            " '--json']) == 0\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'pytorch_lightning'))\n"
            "assert not heavy, heavy[:5]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=script_env())
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_arms_option_reports_one_question_of_a_shared_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = arms_file(tmp_path)  # standard, good, marginal, bad
    assert main(["report", str(path), "--metric", "test_acc", "--arms", "standard,marginal,bad", "--json",
                 "--resamples", "200"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert {c["treatment"] for c in rep["comparisons"]} == {"marginal", "bad"}
    assert rep["family_size"] == 2  # Holm over the named arms only
    alone = multi_arm_report(load_results(path).only(["standard", "marginal", "bad"]), "test_acc", n_resamples=200)
    assert [c["p_value_holm"] for c in rep["comparisons"]] == [c.p_value_holm for c in alone.comparisons]
    # with --treatment too: the two-arm report of that pair, the other arms left out
    assert main(["report", str(path), "--metric", "test_acc", "--arms", "standard,good", "--treatment", "good",
                 "--json", "--resamples", "200"]) == 0
    two = json.loads(capsys.readouterr().out)
    assert two["treatment"] == "good" and two["n_pairs"] == len(BASE) and set(two["arms"]) == {"standard", "good"}


def test_seeds_option_reports_those_pairs_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = arms_file(tmp_path)  # seeds 1-6
    assert main(["report", str(path), "--metric", "test_acc", "--arms", "standard,marginal", "--treatment",
                 "marginal", "--seeds", "2-4", "--json", "--resamples", "200"]) == 0
    rep = json.loads(capsys.readouterr().out)
    base = BASE[1:4]
    treated = np.array([float(b + g) for b, g in zip(base, GAINS["marginal"][1:4])])  # as the file holds them
    assert rep["n_pairs"] == 3 and rep["mean_diff"] == pytest.approx((treated - base).mean())
    assert rep["p_value_ttest"] == pytest.approx(stats.ttest_rel(treated, base, alternative="greater").pvalue)
    # the whole file's pairs give another answer, so the option did restrict them
    assert main(["report", str(path), "--metric", "test_acc", "--treatment", "marginal", "--json",
                 "--resamples", "200"]) == 0
    assert json.loads(capsys.readouterr().out)["n_pairs"] == len(BASE)
    # the Python API is the same restriction, and a failed line goes with its seed
    with open(path, "a") as fh:
        fh.write(json.dumps({"seed": 3, "arm": "good", "error": "fit failed"}) + "\n")
    kept = load_results(path).only(arms=["standard", "good"], seeds=[1, 6])
    assert sorted((r.arm, r.seed) for r in kept.runs) == [("good", 1), ("good", 6), ("standard", 1), ("standard", 6)]
    assert kept.failed == [] and [(r.arm, r.seed) for r in load_results(path).only(seeds=[3]).failed] == [("good", 3)]


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--arms", "standard,nope", "arm(s) ['nope'] have no line"),
    ("--arms", "good,bad", "leaves out the baseline 'standard'"),
    ("--arms", "standard,,good", "empty arm name"),
    ("--seeds", "5-9", "--seeds: seed(s) [7, 8, 9] have no line"),  # and it names the file's seeds
    ("--seeds", "4-2", "--seeds: invalid"),
    ("--seeds", "x", "--seeds: invalid"),
])
def test_arms_and_seeds_options_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture, option: str, value: str,
                                           message: str) -> None:
    path = arms_file(tmp_path)
    assert main(["report", str(path), "--metric", "test_acc", option, value]) == 2
    err = capsys.readouterr().err
    assert message in err and ("its seeds: 1-6" in err) == ("have no line" in message and option == "--seeds")
