"""Sweeps: a `grid:` over BNInit's options expands into named arms that compare runs like any other."""

from __future__ import annotations

import inspect
import json
import math
import re
from pathlib import Path

import pytest

from lightning_bninit.experiments.command import main
from lightning_bninit.experiments.grid import BNINIT_OPTIONS, GridError, expand_grid
from lightning_bninit.experiments.spec import ExperimentError, load_experiment

FAKE = Path(__file__).parent / "support" / "fake_cli.py"
BRIEF_GRID = {"init_scale": [1.0, 0.3, 0.1, 0.03], "scale_lr_divisor": [1, 100]}


def test_static_option_list_is_bninit_signature():
    from lightning_bninit import BNInit

    params = {n: p.default for n, p in inspect.signature(BNInit.__init__).parameters.items() if n != "self"}
    assert list(BNINIT_OPTIONS) == list(params) and BNINIT_OPTIONS == params  # names, order and defaults


@pytest.mark.parametrize(("option", "values"), [
    ("init_scale", [-1.0, 0.0, 1e-3, 0.1, 1.0, 5.0, math.inf, math.nan]),
    ("scale_lr_divisor", [0.5, 0.999, 1.0, 100.0, math.inf]),
])
def test_grid_ranges_are_the_callbacks(option, values):
    from lightning_bninit.method.settings import check_init_scale, check_scale_lr_divisor

    check = {"init_scale": check_init_scale, "scale_lr_divisor": check_scale_lr_divisor}[option]
    for value in values:
        try:
            check(value)
            accepted = True
        except ValueError:
            accepted = False
        if accepted:
            expand_grid({option: [value]}, [])
        else:
            with pytest.raises(GridError, match=re.escape(f"{option} value {value!r}")):
                expand_grid({option: [value]}, [])


def test_names_overrides_and_builtin_points():
    grid = expand_grid(BRIEF_GRID, ["standard", "bninit"])
    assert list(grid.arms) == ["g1_c100", "g0.3_c1", "g0.3_c100", "g0.1_c1", "g0.03_c1", "g0.03_c100"]
    assert grid.aliases == {"g1_c1": "standard", "g0.1_c100": "bninit"}  # run once, under the built-in name
    assert grid.arms["g0.3_c100"] == ["--bninit=true", "--bninit.init_scale=0.3", "--bninit.scale_lr_divisor=100.0"]
    assert grid.values["g0.03_c1"] == {"init_scale": 0.03, "scale_lr_divisor": 1.0}
    for name in grid.arms:
        assert re.fullmatch(r"[A-Za-z0-9._+-]+", name)  # a folder name and an item of --arms
    # Adding values (and reordering the file's keys) renames nothing and changes no overrides.
    bigger = expand_grid({"scale_lr_divisor": [1, 10, 100], "init_scale": [1.0, 0.3, 0.1, 0.03, 1e-5]},
                         ["standard", "bninit"])
    assert all(bigger.arms[name] == overrides for name, overrides in grid.arms.items())
    assert "g1e-05_c10" in bigger.arms
    # With `standard` redefined, its grid point is an arm of its own.
    assert "g1_c1" in expand_grid(BRIEF_GRID, ["bninit"]).arms


def test_other_options_and_bools():
    grid = expand_grid({"init_scale": [0.1], "input_norm": [True, "net"], "exempt_weight_decay": [False]}, ["bninit"])
    assert list(grid.arms) == ["g0.1_exempt_weight_decay-false_input_norm-true",
                               "g0.1_exempt_weight_decay-false_input_norm-net"]
    assert grid.arms["g0.1_exempt_weight_decay-false_input_norm-net"][1:] == [
        "--bninit.init_scale=0.1", "--bninit.exempt_weight_decay=false", "--bninit.input_norm=net"]


@pytest.mark.parametrize(("grid", "expect"), [
    ({"init_sclae": [1.0]}, "unknown option 'init_sclae'; BNInit's options are init_scale, scale_lr_divisor"),
    ({"init_scale": []}, "init_scale must be a non-empty list of values, got []"),
    ({"init_scale": 0.1}, "init_scale must be a non-empty list of values, got 0.1"),
    ({"init_scale": [[0.1]]}, "init_scale value [0.1] is not allowed; each value must be a finite number"),
    ({"init_scale": [True]}, "init_scale value True is not allowed"),
    ({"init_scale": ["0.1"]}, "init_scale value '0.1' is not allowed"),
    ({"scale_lr_divisor": [0.5]}, "scale_lr_divisor value 0.5 is out of range; allowed: a finite number >= 1"),
    ({"scale_lr_divisor": [100, 100.0]}, "scale_lr_divisor lists the value 100 twice"),
    ({"force": [1]}, "force value 1 is not allowed; each value must be true or false"),
    ({"include": ["layer1.*"]}, "include value 'layer1.*' is not allowed; each value must be a string of letters"),
    ({"input_channels": [3.5]}, "input_channels value 3.5 is not allowed; each value must be an integer"),
    ({"separable_optimizers": [["torch.optim.SGD"]]}, "takes a list of classes, not a scalar"),
    ([1.0, 0.1], "'grid' must map BNInit options to lists of values"),
    ({}, "'grid' must map BNInit options to lists of values"),
])
def test_grid_errors_name_the_value_and_what_is_allowed(grid, expect):
    with pytest.raises(GridError) as err:
        expand_grid(grid, ["standard", "bninit"])
    assert expect in str(err.value)


def test_grid_arm_colliding_with_an_explicit_arm_is_refused(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(f"script: {FAKE}\narms:\n  g0.3_c100: [--fake.acc=0.5]\n"
                    "grid: {init_scale: [0.3], scale_lr_divisor: [100]}\n")
    with pytest.raises(ExperimentError, match=r"grid arm\(s\) \['g0.3_c100'\] have the name of an arm under 'arms'"):
        load_experiment(path)


@pytest.mark.parametrize("name", ["a,b", "a/b", "a b", ".."])
def test_explicit_arm_names_must_be_folder_and_list_safe(tmp_path, name):
    path = tmp_path / "exp.yaml"
    path.write_text(f"script: {FAKE}\narms:\n  {json.dumps(name)}: [--fake.acc=0.5]\n")
    with pytest.raises(ExperimentError, match="invalid arm name"):
        load_experiment(path)


@pytest.fixture
def sweep(tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    calls.touch()
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    path = tmp_path / "sweep.yaml"
    path.write_text(f"script: {FAKE}\nseeds: 1-2\nmetrics: [test_acc]\nlauncher: fork\npreload_defaults: false\n"
                    "grid:\n  init_scale: [1.0, 0.1]\n  scale_lr_divisor: [1, 100]\n")
    return path, calls


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sweep_runs_every_arm_once_records_grid_values_and_resumes(sweep, tmp_path):
    path, calls = sweep
    out = tmp_path / "sweep.jsonl"
    argv = ["compare", "--config", str(path), "--out", str(out), "--parallel", "2", "--no-progress"]
    assert main(argv) == 0
    recs = _lines(out)
    assert sorted((r["arm"], r["seed"]) for r in recs) == sorted(
        (a, s) for a in ("standard", "bninit", "g1_c100", "g0.1_c1") for s in (1, 2))
    assert len(calls.read_text().splitlines()) == 16  # fit + test of 8 runs: g1_c1 and g0.1_c100 are not run twice
    for rec in recs:
        grid = rec["config"]["grid"]
        if rec["arm"] == "standard":
            assert grid == {"init_scale": 1.0, "scale_lr_divisor": 1.0}
        elif rec["arm"] == "bninit":
            assert grid == {"init_scale": 0.1, "scale_lr_divisor": 100.0}
            assert "echo_init_scale" not in rec  # the callback's defaults: no option on the command line
        else:  # the child really got the arm's values
            assert (rec["echo_init_scale"], rec["echo_scale_lr_divisor"]) == (grid["init_scale"],
                                                                              grid["scale_lr_divisor"])
        assert all(isinstance(v, float) for v in grid.values())
    # A value added later: only its arms run; finished arms keep their names and lines.
    path.write_text(path.read_text().replace("[1.0, 0.1]", "[1.0, 0.3, 0.1]"))
    assert main(argv) == 0
    new = _lines(out)[8:]
    assert _lines(out)[:8] == recs
    assert sorted((r["arm"], r["seed"]) for r in new) == [("g0.3_c1", 1), ("g0.3_c1", 2), ("g0.3_c100", 1),
                                                          ("g0.3_c100", 2)]
    assert len(calls.read_text().splitlines()) == 24
    # Grid names of the built-in points select the built-in arms; nothing is left to run.
    assert main([*argv, "--arms", "g1_c1,g0.1_c100,standard"]) == 0
    assert len(calls.read_text().splitlines()) == 24


def test_sweep_failure_is_recorded_and_rerun_alone(sweep, tmp_path):
    path, calls = sweep
    path.write_text(path.read_text() + "env: {FAKE_FAIL_ARG: --bninit.init_scale=1.0}\n")
    out = tmp_path / "sweep.jsonl"
    argv = ["compare", "--config", str(path), "--out", str(out), "--seeds", "1", "--no-progress"]
    assert main(argv) == 1
    failed = {r["arm"] for r in _lines(out) if "error" in r}
    assert failed == {"standard", "g1_c100"}  # the arms with init_scale 1.0
    path.write_text(path.read_text().replace("env: {FAKE_FAIL_ARG: --bninit.init_scale=1.0}\n", ""))
    n_calls = len(calls.read_text().splitlines())
    assert main(argv) == 0
    assert {r["arm"] for r in _lines(out)[4:]} == failed and len(calls.read_text().splitlines()) == n_calls + 4


def test_dry_run_lists_the_arms_before_the_commands(sweep, tmp_path, capsys):
    path, _ = sweep
    assert main(["compare", "--config", str(path), "--out", str(tmp_path / "r.jsonl"), "--seeds", "1",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    arms = out[:out.index("# commands of the runs not yet finished:")]
    assert arms[0] == "# arms (4):"
    standard = "#   standard: --bninit=true --bninit.init_scale=1.0 --bninit.scale_lr_divisor=1.0"
    assert f"{standard}  (grid point g1_c1)" in arms
    assert "#   g0.1_c1: --bninit=true --bninit.init_scale=0.1 --bninit.scale_lr_divisor=1.0" in arms
    commands = out[len(arms) + 1:]
    assert len(commands) == 8 and all(str(FAKE) in c for c in commands)


def test_end_of_compare_report_of_a_sweep_is_every_arm_against_the_baseline(sweep, tmp_path, capsys):
    from lightning_bninit.experiments.multiarm import format_multi_markdown, multi_arm_report
    from lightning_bninit.experiments.results import load_results

    path, _ = sweep
    path.write_text(path.read_text() + "report: {metric: test_acc}\n")
    out = tmp_path / "sweep.jsonl"
    assert main(["compare", "--config", str(path), "--out", str(out), "--seeds", "1-3", "--no-progress"]) == 0
    expected = format_multi_markdown(multi_arm_report(load_results(out), "test_acc", "standard"))
    assert capsys.readouterr().out.strip() == expected.strip()
