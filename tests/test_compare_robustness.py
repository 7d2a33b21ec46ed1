"""compare's failure paths, checkpoints, W&B grouping, the run recorder and the results file across processes.
In process where possible (the children are the fake script), so coverage sees them."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from lightning_bninit.experiments.command import main
from lightning_bninit.experiments.results_file import ResultsFile
from lightning_bninit.experiments.seeding import derive_seed

from support.compare_runs import FAKE, process_gone as _gone, results_lines as _lines


@pytest.fixture
def make_exp(tmp_path, fake_calls, launcher):
    calls = fake_calls

    def make(extra: str = "", arms: str = "") -> Path:
        path = tmp_path / "exp.yaml"
        path.write_text(f"script: {FAKE}\nmetrics: [test_acc]\nseeds: 1\nlauncher: {launcher}\n"
                        f"preload_defaults: false\n{extra}arms:\n  standard: [--fake.acc=0.90]\n{arms}")
        return path

    make.calls = calls
    return make


def _compare(path: Path, out: Path, *argv: str) -> int:
    return main(["compare", "--config", str(path), "--out", str(out), "--no-progress", *argv])


@pytest.mark.parametrize(("overrides", "expect", "phases"), [
    ("[--fake.fail=fit]", ["fit failed (exit code 3)", "simulated crash in fit"], ["fit"]),
    ("[--fake.crash=fit]", ["fit failed (exit code -6)", "simulated abort in fit"], ["fit"]),
    ("[--fake.crash=test]", ["test failed (exit code -6)", "simulated abort in test"], ["fit", "test"]),
    ("[--fake.drop=test_acc]", ["test did not log ['test_acc']; it logged ['test_loss']"], ["fit", "test"]),
    ("[--fake.no_checkpoint=true]", ["fit saved no checkpoint to test", "`checkpoint: last`"], ["fit"]),
])
def test_each_failure_is_recorded_with_its_reason(make_exp, tmp_path, capsys, overrides, expect, phases):
    out = tmp_path / "r.jsonl"
    assert _compare(make_exp(arms=f"  bad: {overrides}\n"), out, "--arms", "bad,standard") == 1
    recs = {r["arm"]: r for r in _lines(out)}
    assert "error" not in recs["standard"] and recs["standard"]["test_acc"] > 0.9
    for text in expect:
        assert text in recs["bad"]["error"]
    assert recs["bad"]["config"]["overrides"] == overrides.strip("[]").split(",")
    calls = [c.split()[0] for c in make_exp.calls.read_text().splitlines()]
    assert calls.count("fit") == 2 and calls.count("test") == 1 + phases.count("test")
    assert "FAILED seed 1 bad" in capsys.readouterr().err


def test_timeout_kills_the_phase_and_is_recorded(make_exp, tmp_path):
    out = tmp_path / "r.jsonl"
    start = time.monotonic()
    assert _compare(make_exp("timeout_s: 1\n", "  slow: [--fake.sleep=60]\n"), out, "--arms", "slow,standard") == 1
    assert time.monotonic() - start < 40
    recs = {r["arm"]: r for r in _lines(out)}
    assert recs["slow"]["error"].startswith("fit failed (timed out after 1 s)")
    assert "error" not in recs["standard"]
    pid = int((tmp_path / "r_runs" / "slow" / "seed_1" / "fit.pid").read_text())
    assert _gone(pid)


def test_checkpoint_last_tests_the_weights_at_the_end_of_fit(make_exp, tmp_path):
    out = tmp_path / "r.jsonl"
    assert _compare(make_exp("checkpoint: last\n"), out, "--arms", "standard") == 0
    (rec,) = _lines(out)
    run_dir = tmp_path / "r_runs" / "standard" / "seed_1"
    assert rec["config"]["ckpt_path"] == str(run_dir / "last_weights.ckpt")
    assert "--trainer.callbacks.save_last=true" in (run_dir / "fit.cmd").read_text()
    assert not list(run_dir.rglob("*.ckpt"))  # tested, then removed


def test_checkpoint_best_is_the_default(make_exp, tmp_path):
    out = tmp_path / "r.jsonl"
    assert _compare(make_exp(), out, "--arms", "standard") == 0
    (rec,) = _lines(out)
    run_dir = tmp_path / "r_runs" / "standard" / "seed_1"
    assert rec["config"]["ckpt_path"] == str(run_dir / "checkpoints" / "model.ckpt")
    assert "--trainer.callbacks.save_last=false" in (run_dir / "fit.cmd").read_text()


def test_derive_seed_false_passes_the_seeds_through(make_exp, tmp_path):
    out = tmp_path / "r.jsonl"
    assert _compare(make_exp("derive_seed: false\n"), out, "--arms", "standard", "--seeds", "3,7") == 0
    assert sorted(r["config"]["seed_everything"] for r in _lines(out)) == [3, 7]
    assert sorted({int(c.split()[1]) for c in make_exp.calls.read_text().splitlines()}) == [3, 7]
    out2 = tmp_path / "r2.jsonl"
    assert _compare(make_exp(), out2, "--arms", "standard", "--seeds", "3") == 0
    assert _lines(out2)[0]["config"]["seed_everything"] == derive_seed(3) != 3


def test_derive_seed_must_be_a_bool(make_exp, tmp_path, capsys):
    assert _compare(make_exp("derive_seed: 'no'\n"), tmp_path / "r.jsonl") == 2
    assert "'derive_seed' must be true or false, got 'no'" in capsys.readouterr().err


def test_end_of_compare_report(make_exp, tmp_path, capsys):
    from lightning_bninit.experiments.report import format_markdown, paired_report
    from lightning_bninit.experiments.results import load_results

    out = tmp_path / "r.jsonl"
    path = make_exp("report: {metric: test_acc}\n", "  bninit: [--fake.acc=0.95]\n")
    assert _compare(path, out, "--seeds", "1-3") == 0
    expected = format_markdown(paired_report(load_results(out), "test_acc", "standard", "bninit"))
    assert capsys.readouterr().out.strip() == expected.strip()
    # Not enough pairs for a report: one line on stderr, the compare itself succeeded.
    out2 = tmp_path / "r2.jsonl"
    assert _compare(path, out2, "--seeds", "1", "--arms", "standard") == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "bninit: report not available:" in captured.err


def test_checkpoint_outside_the_run_folder_is_refused_and_kept(make_exp, tmp_path):
    """A trial tests only a checkpoint in its own folder, and never deletes a file it did not write there."""
    shared = tmp_path / "shared" / "best.ckpt"
    shared.parent.mkdir()
    out = tmp_path / "r.jsonl"
    path = make_exp(arms=f"  outside: [--fake.ckpt_outside={shared}]\n")
    assert _compare(path, out, "--arms", "outside") == 1
    (rec,) = _lines(out)
    assert "is outside the trial's folder" in rec["error"]
    assert shared.read_text() == f"weights of seed {derive_seed(1)}"  # not deleted
    assert [c.split()[0] for c in make_exp.calls.read_text().splitlines()] == ["fit"]  # and not tested


def test_wandb_runs_are_grouped_and_the_users_mode_is_kept(make_exp, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for key in ("WANDB_RUN_GROUP", "WANDB_JOB_TYPE", "WANDB_NAME", "WANDB_TAGS"):
        monkeypatch.delenv(key, raising=False)
    path = make_exp("name: my_sweep\n")
    assert _compare(path, tmp_path / "r.jsonl", "--arms", "standard", "--seeds", "2") == 0
    seen = json.loads((tmp_path / "r_runs" / "standard" / "seed_2" / "fit_env.json").read_text())["env"]
    assert "WANDB_MODE" not in seen  # not forced offline: a logged-in user gets online runs
    assert seen["WANDB_RUN_GROUP"] == "my_sweep" and seen["WANDB_JOB_TYPE"] == "standard"
    assert seen["WANDB_NAME"] == "standard-seed2" and seen["WANDB_TAGS"] == "bninit-compare,standard"
    # What the user set is left alone (their environment or the experiment's env:).
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_NAME", "mine")
    path.write_text(path.read_text() + "env: {WANDB_RUN_GROUP: group_of_mine}\n")
    assert _compare(path, tmp_path / "r2.jsonl", "--arms", "standard", "--seeds", "2") == 0
    seen = json.loads((tmp_path / "r2_runs" / "standard" / "seed_2" / "test_env.json").read_text())["env"]
    assert (seen["WANDB_MODE"], seen["WANDB_NAME"], seen["WANDB_RUN_GROUP"]) == ("offline", "mine", "group_of_mine")
    assert seen["WANDB_JOB_TYPE"] == "standard"


def test_experiment_name_defaults_to_the_file_stem(tmp_path):
    from lightning_bninit.experiments.spec import load_experiment

    path = tmp_path / "digits_sweep.yaml"
    path.write_text(f"script: {FAKE}\n")
    assert load_experiment(path).name == "digits_sweep"


# --- the results file across processes ------------------------------------------------------------------------


def _append_many(path: str, writer: int, n: int, size: int) -> None:
    results = ResultsFile(path)
    for i in range(n):
        results.append({"seed": writer * 1000 + i, "arm": "a", "config": {"blob": str(writer) * size}})


def test_appends_from_several_processes_are_whole_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(path), w, 20, 200_000)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    recs = _lines(path)
    assert sorted(r["seed"] for r in recs) == sorted(w * 1000 + i for w in range(4) for i in range(20))
    for rec in recs:
        assert rec["config"]["blob"] == str(rec["seed"] // 1000) * 200_000


def test_append_waits_for_another_process_holding_the_lock(tmp_path):
    import fcntl

    path = tmp_path / "r.jsonl"
    path.touch()
    ctx = multiprocessing.get_context("spawn")
    with open(path, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # as another compare appending right now
        proc = ctx.Process(target=_append_many, args=(str(path), 1, 1, 10))
        proc.start()
        time.sleep(3.0)
        assert path.read_bytes() == b""  # the writer waits for the lock
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    proc.join(60)
    assert proc.exitcode == 0 and [r["seed"] for r in _lines(path)] == [1000]


def test_launcher_option_overrides_the_file_and_is_recorded(make_exp, tmp_path, launcher):
    other = {"fork": "subprocess", "subprocess": "fork"}[launcher]
    out = tmp_path / "r.jsonl"
    assert _compare(make_exp(), out, "--arms", "standard", "--launcher", other) == 0
    assert _lines(out)[0]["config"]["launcher"] == other
    fit = json.loads((tmp_path / "r_runs" / "standard" / "seed_1" / "fit_env.json").read_text())
    assert (fit["ppid"] != os.getpid()) == (other == "fork")  # a fork server's child, or compare's own
