"""The launchers of `bninit compare`: a forked phase is a process of its own like a fresh one; kills,
crashes and worker failures are handled; and the fork launcher gives the same results as fresh processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support.compare_runs import process_gone as _gone
from support.launch import ROOT, SUPPORT

from lightning_bninit.experiments.launchers import ForkLauncher, SubprocessLauncher, resolve_launcher

PROBE = SUPPORT / "probe_app.py"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(SUPPORT)])
    env.update(extra)
    return env


def _fork(tmp_path: Path, preload: tuple[str, ...] = (), timeout_s: float | None = None, **env: str) -> ForkLauncher:
    return ForkLauncher(timeout_s, _env(**env), tmp_path / "server", preload=preload, preload_defaults=False)


def _wait_for(path: Path, within_s: float = 30.0) -> dict:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written")


def test_a_forked_phase_is_a_process_of_its_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    launcher = _fork(tmp_path, WORKER_ONLY="set in the worker")
    try:
        infos = []
        for i, code in enumerate((0, 7)):
            out = tmp_path / f"probe{i}.json"
            env = _env(PROBE_ENV=f"trial {i}")
            rc, why = launcher.run([sys.executable, str(PROBE), str(out), "--exit", str(code)], tmp_path / f"{i}.log",
                                   env)
            assert (rc, why) == (code, "")
            infos.append(json.loads(out.read_text()))
            log = (tmp_path / f"{i}.log").read_text()
            assert "probe stdout" in log and "probe stderr" in log  # both streams in the phase's own log
            assert (tmp_path / f"{i}.cmd").read_text().startswith(sys.executable)  # to rerun by hand
        server_pid = launcher._server._forkserver_pid
        first, second = infos
        assert first["pid"] != second["pid"] and first["ppid"] == second["ppid"] == server_pid  # one server, 2 forks
        assert first["sid"] == first["pid"]  # a session of its own: Ctrl-C does not reach it, its group is killable
        assert first["argv"] == [str(PROBE), str(tmp_path / "probe0.json"), "--exit", "0"]
        assert first["path0"] == str(SUPPORT) and first["cwd"] == str(tmp_path) and first["name"] == "__main__"
        assert (first["probe_env"], second["probe_env"]) == ("trial 0", "trial 1")  # each its trial's environment
        assert first["worker_only"] is None
    finally:
        launcher.close()


@pytest.mark.parametrize(("flags", "code", "in_log"), [
    (["--raise"], 1, "RuntimeError: probe failed on purpose"),
    (["--exit-text", "bad input"], 1, "bad input"),
    (["--interrupt"], -2, "KeyboardInterrupt"),
    (["--exit", "0", "--at-exit"], 0, "probe stdout"),
])
def test_exit_codes_and_exit_handlers_are_those_of_a_fresh_process(tmp_path, flags, code, in_log):
    out = tmp_path / "p.json"
    got = {}
    for kind in ("subprocess", "fork"):
        launcher = SubprocessLauncher(None) if kind == "subprocess" else _fork(tmp_path)
        try:
            rc, _ = launcher.run([sys.executable, str(PROBE), str(out), *flags], tmp_path / f"{kind}.log", _env())
        finally:
            launcher.close()
        assert in_log in (tmp_path / f"{kind}.log").read_text()
        got[kind] = rc
        if "--at-exit" in flags:  # atexit handlers ran and the non-daemon thread was joined first
            assert (Path(f"{out}.atexit").read_text(), Path(f"{out}.thread").read_text()) == ("ran", "joined")
            Path(f"{out}.atexit").unlink()
    assert got == {"subprocess": code, "fork": code}


def test_thread_setting_of_the_script_applies_as_in_a_fresh_process(tmp_path):
    """A script that sets OMP_NUM_THREADS before importing torch (examples/digits/main.py does) gets as many threads
    as in a fresh process, also when the fork server imported torch before the script ran."""
    got: dict[str, list[int]] = {}
    for kind in ("subprocess", "fork"):
        launcher = SubprocessLauncher(None) if kind == "subprocess" else _fork(tmp_path, preload=("torch",))
        try:
            for threads in ("1", "3"):
                out = tmp_path / f"{kind}{threads}.json"
                cmd = [sys.executable, str(PROBE), str(out), "--threads", threads]
                assert launcher.run(cmd, tmp_path / "t.log", _env()) == (0, "")
                got.setdefault(kind, []).append(json.loads(out.read_text())["threads"])
        finally:
            launcher.close()
    assert got["fork"] == got["subprocess"] and got["fork"][0] == 1


def test_stop_all_and_timeout_kill_the_phase(tmp_path):
    launcher = _fork(tmp_path, timeout_s=1)
    try:
        start = time.monotonic()
        rc, why = launcher.run([sys.executable, str(PROBE), str(tmp_path / "a.json"), "--sleep", "60"],
                               tmp_path / "a.log", _env())
        assert (rc, why) == (None, "timed out after 1 s") and time.monotonic() - start < 20
        assert _gone(json.loads((tmp_path / "a.json").read_text())["pid"])
    finally:
        launcher.close()
    launcher = _fork(tmp_path)
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=launcher.run(
        [sys.executable, str(PROBE), str(tmp_path / "b.json"), "--sleep", "60"], tmp_path / "b.log", _env())))
    thread.start()
    pid = _wait_for(tmp_path / "b.json")["pid"]
    launcher.stop_all()  # Ctrl-C in the parent
    thread.join(30)
    assert result["r"][0] is None and _gone(pid)
    assert launcher.run([sys.executable, str(PROBE), str(tmp_path / "c.json")], tmp_path / "c.log", _env()) == (
        None, "interrupted")
    launcher.close()


def test_a_dying_server_fails_its_phase_and_is_replaced(tmp_path):
    launcher = _fork(tmp_path)
    try:
        result = {}
        thread = threading.Thread(target=lambda: result.update(r=launcher.run(
            [sys.executable, str(PROBE), str(tmp_path / "a.json"), "--sleep", "60"], tmp_path / "a.log", _env())))
        thread.start()
        pid = _wait_for(tmp_path / "a.json")["pid"]
        first_server = launcher._server._forkserver_pid
        os.kill(first_server, signal.SIGKILL)
        thread.join(30)
        rc, why = result["r"]
        assert rc == 1 and "the fork server died" in why and _gone(pid)
        assert launcher.run([sys.executable, str(PROBE), str(tmp_path / "b.json")], tmp_path / "b.log", _env()) == (
            0, "")
        assert launcher._server._forkserver_pid != first_server  # a new server
    finally:
        launcher.close()


def test_closing_the_launcher_stops_a_running_phase(tmp_path):
    """The server stops its children when it goes away (when the parent does, its "alive" pipe closes)."""
    launcher = _fork(tmp_path)
    thread = threading.Thread(target=launcher.run, args=(
        [sys.executable, str(PROBE), str(tmp_path / "a.json"), "--sleep", "60"], tmp_path / "a.log", _env()))
    thread.start()
    pid = _wait_for(tmp_path / "a.json")["pid"]
    launcher.close()
    assert _gone(pid, 20)
    thread.join(30)


@pytest.mark.parametrize(("preload", "expect"), [
    (("no_such_module_xyz",), "the fork server could not preload 'no_such_module_xyz': ModuleNotFoundError"),
    (("fake_cuda_torch",), "a preloaded module initialized CUDA, so forked children could not use it"),
])
def test_a_worker_that_cannot_start_fails_the_phase_with_the_reason(tmp_path, preload, expect):
    launcher = _fork(tmp_path, preload=preload)
    try:
        rc, why = launcher.run([sys.executable, str(PROBE), str(tmp_path / "a.json")], tmp_path / "a.log", _env())
        assert rc == 1 and expect in why
    finally:
        launcher.close()


def test_auto_launcher(monkeypatch):
    assert resolve_launcher("subprocess", []) == "subprocess"
    assert resolve_launcher("auto", ["0"]) == "subprocess"  # fork only where it was measured: CPU
    monkeypatch.setattr(sys, "platform", "linux")
    assert resolve_launcher("auto", []) == "fork"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert resolve_launcher("auto", []) == "subprocess"
    monkeypatch.delattr(os, "fork")
    with pytest.raises(ValueError, match="launcher 'fork' needs os.fork"):
        resolve_launcher("fork", [])


def test_a_user_script_that_calls_run_compare_works_with_the_fork_launcher(tmp_path):
    """The standard fork server would import the parent's ``__main__`` again in every child (here: the script itself,
    which has no ``if __name__ == "__main__"`` guard); the fork launcher's children never do."""
    (tmp_path / "base.yaml").write_text("trainer: {}\n")
    (tmp_path / "exp.yaml").write_text(f"script: {SUPPORT / 'fake_cli.py'}\nconfig: base.yaml\nmetrics: [test_acc]\n"
                                       "launcher: fork\npreload_defaults: false\n")
    script = tmp_path / "my_experiment.py"
    script.write_text(
        "import sys\n"
        "from lightning_bninit.experiments.compare import run_compare\n"
        "from lightning_bninit.experiments.spec import load_experiment\n"
        "print('the user script ran', flush=True)\n"
        "counts = run_compare(load_experiment(sys.argv[1]), [1, 2], ['standard', 'bninit'], sys.argv[2], parallel=2,\n"
        "                     progress=False)\n"
        "print(counts, flush=True)\n")
    (tmp_path / "calls.txt").touch()
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "exp.yaml"), str(tmp_path / "res.jsonl")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env=_env(FAKE_CALLS=str(tmp_path / "calls.txt")))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("the user script ran") == 1 and "'ok': 4" in proc.stdout
    lines = [json.loads(line) for line in (tmp_path / "res.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(r["config"]["launcher"] == "fork" and "error" not in r for r in lines)
