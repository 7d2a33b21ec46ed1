import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from lightning_bninit.experiments.command import main
from lightning_bninit.experiments.results_file import ResultsFile
from lightning_bninit.experiments.spec import BUILTIN_ARMS
from lightning_bninit.experiments.seeding import derive_seed

from support.compare_runs import FAKE, results_lines as lines
from support.launch import ROOT


@pytest.fixture
def exp(tmp_path, fake_calls, launcher):
    calls = fake_calls
    (tmp_path / "base.yaml").write_text("trainer: {}\n")
    path = tmp_path / "exp.yaml"
    path.write_text(
        f"script: {FAKE}\nconfig: base.yaml\nmetrics: [test_acc]\nseeds: 1-2\n"
        f"launcher: {launcher}\npreload_defaults: false\n"
        "arms:\n  standard: [--fake.acc=0.90]\n  bninit: [--fake.acc=0.95]\n"
        "  broken: [--fake.fail=test]\n  slow: [--fake.sleep=60]\n"
    )
    return path, calls


def test_runs_every_pair_and_resume_skips_finished(exp, tmp_path, capsys):
    path, calls = exp
    out = tmp_path / "res.jsonl"
    assert main(["compare", "--config", str(path), "--out", str(out), "--parallel", "2", "--no-progress"]) == 0
    recs = lines(out)
    assert sorted((r["seed"], r["arm"]) for r in recs) == [(1, "bninit"), (1, "standard"), (2, "bninit"),
                                                           (2, "standard")]
    rec = next(r for r in recs if r["seed"] == 2 and r["arm"] == "bninit")
    assert rec["test_acc"] == pytest.approx(0.95 + derive_seed(2) % 7 / 1000 * 1.95) and rec["test_loss"] > 0 and rec["duration_s"] >= 0
    assert rec["config"]["seed_everything"] == derive_seed(2)
    assert rec["config"]["overrides"] == ["--fake.acc=0.95"]
    assert not list((tmp_path / "res_runs").rglob("*.ckpt"))  # tested checkpoints are removed
    assert len(calls.read_text().splitlines()) == 8  # fit + test per pair
    # Same command again: nothing runs, nothing is appended.
    assert main(["compare", "--config", str(path), "--out", str(out), "--no-progress"]) == 0
    assert len(calls.read_text().splitlines()) == 8 and len(lines(out)) == 4
    assert "4 of 4 runs already finished" in capsys.readouterr().err
    # More seeds: only the new pairs run.
    assert main(["compare", "--config", str(path), "--out", str(out), "--seeds", "1-3", "--no-progress"]) == 0
    assert len(lines(out)) == 6 and len(calls.read_text().splitlines()) == 12
    assert main(["report", str(out), "--metric", "test_acc", "--json"]) == 0


def test_failure_is_recorded_and_others_go_on(exp, tmp_path, capsys):
    path, calls = exp
    out = tmp_path / "res.jsonl"
    rc = main(["compare", "--config", str(path), "--out", str(out), "--arms", "broken,standard", "--no-progress"])
    assert rc == 1
    recs = lines(out)
    failed = [r for r in recs if "error" in r]
    assert len(recs) == 4 and len(failed) == 2 and all(r["arm"] == "broken" for r in failed)
    assert "test failed (exit code 3)" in failed[0]["error"] and "simulated crash in test" in failed[0]["error"]
    assert "FAILED seed 1 broken" in capsys.readouterr().err
    # A rerun retries only the failed pairs.
    main(["compare", "--config", str(path), "--out", str(out), "--arms", "broken,standard", "--no-progress"])
    assert len(lines(out)) == 6


def test_interrupt_leaves_whole_lines_and_resume_completes(exp, tmp_path):
    path, calls = exp
    out = tmp_path / "res.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "lightning_bninit", "compare", "--config", str(path), "--out", str(out),
           "--arms", "standard,slow", "--seeds", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    # wait until the standard run is recorded and the slow run's fit has started
    while time.time() < deadline and not (out.exists() and len(calls.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    time.sleep(0.5)  # the slow arm is now sleeping in fit
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    recs = lines(out)
    assert [(r["seed"], r["arm"]) for r in recs] == [(1, "standard")]  # the interrupted run left nothing
    slow_pid = int((tmp_path / "res_runs" / "slow" / "seed_1" / "fit.pid").read_text())
    with pytest.raises(ProcessLookupError):  # Ctrl-C stopped the running phase, not only compare
        os.kill(slow_pid, 0)
    # Resume (without the sleep): only the missing pair runs.
    path.write_text(path.read_text().replace("[--fake.sleep=60]", "[--fake.acc=0.5]"))
    n_calls = len(calls.read_text().splitlines())
    assert main(["compare", "--config", str(path), "--out", str(out), "--arms", "standard,slow", "--seeds", "1",
                 "--no-progress"]) == 0
    assert [(r["seed"], r["arm"]) for r in lines(out)] == [(1, "standard"), (1, "slow")]
    assert len(calls.read_text().splitlines()) == n_calls + 2


def test_partial_tail_is_moved_aside(exp, tmp_path, capsys):
    path, _ = exp
    out = tmp_path / "res.jsonl"
    out.write_text('{"seed": 1, "arm": "standard", "test_a')
    assert main(["compare", "--config", str(path), "--out", str(out), "--seeds", "1", "--no-progress"]) == 0
    assert len(lines(out)) == 2
    assert (tmp_path / "res.jsonl.partial").read_text().startswith('{"seed": 1')
    assert "incomplete last line" in capsys.readouterr().err


def test_concurrent_appends_are_whole_lines(tmp_path):
    results = ResultsFile(tmp_path / "r.jsonl")
    payload = {"seed": 0, "arm": "a", "config": {"blob": "x" * 5000}}

    def work(k):
        for i in range(25):
            results.append({**payload, "seed": k * 100 + i})

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["seed"] for r in lines(tmp_path / "r.jsonl")) == sorted(k * 100 + i for k in range(4)
                                                                           for i in range(25))


@pytest.mark.parametrize(
    ("yaml_text", "argv", "expect"),
    [
        ("script: {fake}\nbogus: 1\n", [], "unknown key(s) ['bogus']"),
        ("script: nope.py\n", [], "script not found"),
        ("script: {fake}\ncheckpoint: middle\n", [], "'checkpoint' must be 'best' or 'last'"),
        ("script: {fake}\n", ["--seeds", "1"], None),
        ("script: {fake}\n", [], "no seeds"),
        ("script: {fake}\n", ["--seeds", "3-1"], "start must be <= end"),
        ("script: {fake}\n", ["--seeds", "1", "--arms", "standard,ghost"], "unknown arm(s) ['ghost']"),
        ("script: {fake}\n", ["--seeds", "1", "--parallel", "0"], "--parallel must be >= 1"),
        ("script: {fake}\nconfig: missing.yaml\n", [], "config file not found"),
        ("script: [unclosed\n", [], "invalid YAML"),
    ],
)
def test_experiment_errors(tmp_path, capsys, yaml_text, argv, expect):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml_text.format(fake=FAKE))
    rc = main(["compare", "--config", str(path), "--out", str(tmp_path / "r.jsonl"), "--dry-run", *argv]
              if expect is None else ["compare", "--config", str(path), "--out", str(tmp_path / "r.jsonl"), *argv])
    captured = capsys.readouterr()
    if expect is None:  # dry run prints the commands with the built-in arms
        assert rc == 0
        assert " ".join(BUILTIN_ARMS["standard"]) in captured.out and f"--seed_everything={derive_seed(1)}" in captured.out
    else:
        assert rc == 2 and expect in captured.err and "Traceback" not in captured.err


def test_in_fit_mode_runs_one_process_per_pair(exp, tmp_path, launcher):
    path, calls = exp
    path.write_text(path.read_text() + "test: in_fit\n")
    out = tmp_path / "res.jsonl"
    assert main(["compare", "--config", str(path), "--out", str(out), "--no-progress"]) == 0
    recs = lines(out)
    assert sorted((r["seed"], r["arm"]) for r in recs) == [(1, "bninit"), (1, "standard"), (2, "bninit"),
                                                           (2, "standard")]
    assert [c.split()[0] for c in calls.read_text().splitlines()] == ["fit"] * 4  # no test process
    rec = next(r for r in recs if r["seed"] == 1 and r["arm"] == "standard")
    assert rec["test_acc"] == pytest.approx(0.90 + derive_seed(1) % 7 / 1000 * 1.90)
    assert "ckpt_path" not in rec["config"]
    assert rec["config"]["fit_epochs"] == 2 and rec["config"]["launcher"] == launcher


def test_in_fit_mode_without_a_test_is_recorded_as_a_failure(exp, tmp_path):
    path, _ = exp
    path.write_text(path.read_text() + "test: in_fit\nargs: [--fake.test_after_fit=false]\n")
    out = tmp_path / "res.jsonl"
    assert main(["compare", "--config", str(path), "--out", str(out), "--seeds", "1", "--no-progress"]) == 1
    assert all("ran no test after fit" in r["error"] for r in lines(out))


def test_rejects_unknown_test_mode(exp, tmp_path, capsys):
    path, _ = exp
    path.write_text(path.read_text() + "test: later\n")
    assert main(["compare", "--config", str(path), "--out", str(tmp_path / "r.jsonl"), "--no-progress"]) == 2
    assert "'test' must be 'separate' or 'in_fit', got 'later'" in capsys.readouterr().err
