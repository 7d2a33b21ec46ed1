"""`launcher: ray` without a cluster: the launcher choices have one source, the `ray:` settings are
checked, Ray is an optional extra named in one line when missing, and an unreachable address fails fast, in one
line naming it. The real two-node cluster is tests/test_ray_cluster.py."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from support.launch import ROOT, SUPPORT, script_env

from lightning_bninit.experiments.command import _build_parser, main
from lightning_bninit.experiments.launchers import LAUNCHERS, resolve_launcher
from lightning_bninit.experiments.ray_backend import check_reachable
from lightning_bninit.experiments.spec import ExperimentError, RayOptions, load_experiment


def _exp(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "base.yaml").write_text("trainer: {}\n")
    path = tmp_path / "exp.yaml"
    path.write_text(f"script: {SUPPORT / 'fake_cli.py'}\nconfig: base.yaml\nseeds: 1\n{extra}")
    return path


def _refused_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_one_list_of_launchers_for_the_file_the_command_line_and_the_launchers(tmp_path):
    action = next(a for a in _build_parser()._subparsers._group_actions[0].choices["compare"]._actions
                  if a.dest == "launcher")
    assert tuple(action.choices) == LAUNCHERS
    for name in LAUNCHERS:
        assert load_experiment(_exp(tmp_path, f"launcher: {name}\n")).launcher == name
    with pytest.raises(ExperimentError, match=r"'launcher' must be 'auto' or 'subprocess' or 'fork' or 'ray', got 'x'"):
        load_experiment(_exp(tmp_path, "launcher: x\n"))
    with pytest.raises(ValueError, match="launcher must be one of 'auto', 'subprocess', 'fork', 'ray', got 'x'"):
        resolve_launcher("x", [])
    assert resolve_launcher("ray", ["0"]) == "ray"


def test_ray_settings_are_read_and_checked(tmp_path):
    assert load_experiment(_exp(tmp_path)).ray == RayOptions(address=None, cpus=1.0, gpus=0.0, retries=1)
    exp = load_experiment(_exp(tmp_path, "ray: {address: 'head:6379', cpus: 2, gpus: 0.5, retries: 0}\n"))
    assert exp.ray == RayOptions(address="head:6379", cpus=2.0, gpus=0.5, retries=0)
    for bad, message in (("{gpu: 1}", "'ray' must be a mapping with keys address, cpus, gpus, retries; got ['gpu']"),
                         ("{cpus: -1}", "'ray.cpus' must be a number >= 0 (per trial), got -1"),
                         ("{retries: 11}", "'ray.retries' must be a whole number from 0 to 10, got 11"),
                         ("{address: 5}", "'ray.address' must be 'host:port' or 'auto', got 5")):
        with pytest.raises(ExperimentError, match=re.escape(message)):
            load_experiment(_exp(tmp_path, f"ray: {bad}\n"))


def test_an_unreachable_address_fails_at_once_in_one_line_naming_it():
    port = _refused_port()
    start = time.monotonic()
    with pytest.raises(ExperimentError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}: Connection refused"):
        check_reachable(f"127.0.0.1:{port}")
    assert time.monotonic() - start < 5
    with pytest.raises(ExperimentError, match="Ray address 'head' is not host:port"):
        check_reachable("head")


def test_address_without_the_ray_launcher_is_refused(tmp_path, capsys):
    assert main(["compare", "--config", str(_exp(tmp_path)), "--address", "127.0.0.1:1", "--launcher", "fork",
                 "--out", str(tmp_path / "r.jsonl"), "--no-progress"]) == 2
    assert "--address 127.0.0.1:1 is for the Ray launcher; add --launcher ray" in capsys.readouterr().err


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=script_env())


@pytest.mark.parametrize("ray_installed", [False, True])
def test_compare_with_ray_missing_or_an_unreachable_cluster_gives_one_line(tmp_path, ray_installed):
    if ray_installed:
        pytest.importorskip("ray")
    hide = "" if ray_installed else "sys.modules['ray'] = None  # as if not installed\n"
    argv = ["compare", "--config", str(_exp(tmp_path)), "--launcher", "ray", "--address",
            f"127.0.0.1:{_refused_port()}", "--out", str(tmp_path / "r.jsonl"), "--no-progress"]
    proc = _run(f"import sys\n{hide}from lightning_bninit.experiments.command import main\nsys.exit(main({argv!r}))")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("bninit: error: "), proc.stderr
    if ray_installed:
        assert "cannot reach the Ray cluster at 127.0.0.1:" in lines[0]
    else:
        assert "launcher: ray needs the package 'ray'" in lines[0] and "pip install 'lightning-bninit[ray]'" in lines[0]
    assert not (tmp_path / "r.jsonl").exists()


class _Lost(Exception):
    pass


def _fake_ray(result):
    """Just what `_collect` uses of Ray: `get` and the exception classes (the cluster itself: test_ray_cluster.py)."""
    class Cancelled(Exception):
        pass

    class TaskError(Exception):
        cause = None

    def get(ref):
        if isinstance(result, Exception):
            raise result
        return result

    return types.SimpleNamespace(get=get, exceptions=types.SimpleNamespace(
        TaskCancelledError=Cancelled, RayTaskError=TaskError, RayError=_Lost))


def test_a_finished_task_brings_its_logs_into_the_drivers_trial_folder_and_a_lost_one_is_a_failed_line(tmp_path):
    from lightning_bninit.experiments.ray_backend import _collect

    exp = load_experiment(_exp(tmp_path, "ray: {retries: 2}\n"))
    run_dir = tmp_path / "runs" / "bninit" / "seed_1"
    out = {"record": {"seed": 1, "arm": "bninit", "test_acc": 0.9, "config": {}}, "run_dir": str(run_dir),
           "logs": {"fit.log": "fit output\n", "fit.cmd": "python main.py fit\n"}, "node_id": "abc", "host": "n1"}
    record = _collect(_fake_ray(out), None, (1, "bninit"), exp)
    assert record["config"]["ray_node_id"] == "abc" and record["config"]["ray_host"] == "n1"
    assert (run_dir / "fit.log").read_text() == "fit output\n" and (run_dir / "fit.cmd").is_file()
    lost = _collect(_fake_ray(_Lost("NodeDiedError: Task failed because the node died. More text.\nmore")), None,
                    (2, "standard"), exp)
    assert lost["seed"] == 2 and lost["arm"] == "standard" and lost["config"] == {"ray_retries": 2}
    assert lost["error"].startswith("the trial's Ray task was lost after 3 attempt(s)")
    assert "_Lost: NodeDiedError: Task failed because the node died;" in lost["error"]
