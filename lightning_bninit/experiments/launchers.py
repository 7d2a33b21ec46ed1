"""How ``bninit compare`` starts the processes of a trial phase: a fresh Python each time, or a fork of a warm server.

Both launchers run one command line (``python script.py fit ...``) with its output in a log file, return its exit
code, stop it after ``timeout_s`` and stop everything on Ctrl-C. Every phase is a process of its own, in a session of
its own (Ctrl-C reaches only the parent, which stops the children with their process groups).

- :class:`SubprocessLauncher`: ``subprocess.Popen`` of the command line; each phase imports torch and Lightning.
- :class:`ForkLauncher`: the standard library's fork server (:mod:`multiprocessing.forkserver`) imports them once;
  each phase is a child forked from it that runs the script with ``runpy`` (:mod:`~lightning_bninit.experiments.
  forked_phase`). The server never touches CUDA.

The third way, ``launcher: ray``, runs whole trials as Ray tasks (:mod:`~lightning_bninit.experiments.ray_backend`);
:data:`LAUNCHERS` is the one list of the choices, for the experiment file, the command line and here.
"""

from __future__ import annotations

import json
import os
import pickle
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from lightning_bninit.experiments import forked_phase

__all__ = ["LAUNCHERS", "ForkLauncher", "Launcher", "SubprocessLauncher", "resolve_launcher"]

#: The launchers of ``bninit compare``: ``launcher:`` of the experiment file and ``--launcher`` accept these.
LAUNCHERS = ("auto", "subprocess", "fork", "ray")

_TERM_GRACE_S, _KILL_GRACE_S = 10.0, 5.0
#: What the fork server imports unless ``preload_defaults: false`` (each only if installed): torch, Lightning, this
#: package's CLI flag and run recorder, and what a run loads on its way otherwise (Lightning's default logger is
#: TensorBoard's when it is installed; the BN monitor plots with matplotlib).
DEFAULT_PRELOAD = ("torch", "lightning.pytorch", "lightning_bninit.cli", "lightning_bninit.callbacks.run_recorder",
                   "torch.utils.tensorboard", "matplotlib.pyplot")


class Launcher(Protocol):
    """What a trial needs from a launcher."""

    stopping: threading.Event

    def run(self, cmd: list[str], log: Path, env: dict[str, str]) -> tuple[int | None, str]:
        """Run ``cmd`` with its output in ``log``; ``(exit code, why)``, the code ``None`` when stopped or timed out."""

    def stop_all(self) -> None:
        """Stop every running phase (Ctrl-C); later runs return at once."""

    def close(self) -> None:
        """Release the launcher's resources (the fork server)."""


def resolve_launcher(choice: str, gpus: list[str]) -> str:
    """``auto`` is ``fork`` on Linux without visible GPUs (measured there), ``subprocess`` elsewhere.

    Raises:
        ValueError: a choice not in :data:`LAUNCHERS`; ``fork`` where ``os.fork`` does not exist.
    """
    if choice not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {', '.join(map(repr, LAUNCHERS))}, got {choice!r}; "
                         "e.g. `launcher: subprocess` in the experiment file or --launcher subprocess")
    if choice == "fork" and not hasattr(os, "fork"):
        raise ValueError(f"launcher 'fork' needs os.fork (POSIX), not available on {sys.platform}; "
                         "use launcher: subprocess")
    if choice == "auto":
        return "fork" if sys.platform.startswith("linux") and not gpus else "subprocess"
    return choice


def _write_cmd(cmd: list[str], log: Path) -> None:
    (log.parent / (log.stem + ".cmd")).write_text(shlex.join(cmd) + "\n")  # to rerun by hand


class SubprocessLauncher:
    """Each phase a fresh ``subprocess.Popen`` in a new session.

    Args:
        timeout_s: per phase, or ``None``.
    """

    def __init__(self, timeout_s: float | None, die_with_parent: bool = False) -> None:
        self.timeout_s = timeout_s
        self.die_with_parent = die_with_parent  # a Ray task's phases: SIGKILL when the task's process dies
        if die_with_parent:
            forked_phase.libc()  # loaded here, not in the child between fork and exec
        self.stopping = threading.Event()
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def run(self, cmd: list[str], log: Path, env: dict[str, str]) -> tuple[int | None, str]:
        """Run ``cmd`` with its output in ``log``; returns ``(exit code, why)`` (``None`` when stopped or timed out)."""
        if self.stopping.is_set():
            return None, "interrupted"
        _write_cmd(cmd, log)
        with open(log, "wb") as fh:
            # A new session: Ctrl-C reaches only the parent, which then stops the children itself.
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    preexec_fn=forked_phase.die_with_parent if self.die_with_parent else None)
            with self._lock:
                self._procs.add(proc)
            try:
                return proc.wait(timeout=self.timeout_s), ""
            except subprocess.TimeoutExpired:
                self.kill(proc)
                return None, f"timed out after {self.timeout_s:g} s"
            finally:
                with self._lock:
                    self._procs.discard(proc)

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        """SIGTERM to the process group, then SIGKILL if it is still there."""
        for sig, grace in ((signal.SIGTERM, _TERM_GRACE_S), (signal.SIGKILL, _KILL_GRACE_S)):
            if proc.poll() is not None:
                return
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        self.stopping.set()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            self.kill(proc)

    def close(self) -> None:
        pass



_TIMEOUT, _SERVER_DIED = object(), object()


class _Child:
    """A phase forked by the server: its pid, and the pipe on which the server sends its exit code."""

    def __init__(self, pid: int, status_fd: int) -> None:
        self.pid, self.status_fd = pid, status_fd

    def wait(self, timeout: float | None) -> Any:
        """The exit code; ``_TIMEOUT`` if it runs longer than ``timeout``, ``_SERVER_DIED`` if the server died."""
        from multiprocessing import forkserver

        if not select.select([self.status_fd], [], [], timeout)[0]:
            return _TIMEOUT
        try:
            return forkserver.read_signed(self.status_fd)
        except (EOFError, OSError):
            return _SERVER_DIED

    def signal(self, sig: int) -> None:
        """``sig`` to the phase's process group (it leads it from before its pid is known here)."""
        _killpg(self.pid, sig)

    def close(self) -> None:
        os.close(self.status_fd)


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class ForkLauncher:
    """Each phase a child of a fork server that imported torch and Lightning once (see the module docstring).

    Args:
        timeout_s: per phase, or ``None``.
        env: the server's environment (the trials' common one: thread counts are set before torch is imported).
        log_dir: where the server's own log goes (its stderr: import warnings, a crash).
        preload: modules the server imports (each must import: the first phase fails with the reason otherwise).
        preload_defaults: also import :data:`DEFAULT_PRELOAD`, those installed.
    """

    def __init__(self, timeout_s: float | None, env: dict[str, str], log_dir: Path, preload: Sequence[str] = (),
                 preload_defaults: bool = True) -> None:
        from multiprocessing import forkserver

        self.timeout_s = timeout_s
        self.stopping = threading.Event()
        self._env, self._required = dict(env), list(preload)
        self._optional = [m for m in DEFAULT_PRELOAD if preload_defaults and m not in self._required]
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = log_dir / "fork_server.log"
        self._lock = threading.Lock()  # guards starting phases, `_running` and the server
        self._running: dict[int, _Child] = {}
        self._server = forkserver.ForkServer()
        self._server.set_forkserver_preload([forked_phase.__name__, *self._optional, *self._required])
        self.error: str | None = None
        self.preloaded: list[str] = []
        self._ensure_server()

    def _server_alive(self) -> bool:
        pid = self._server._forkserver_pid  # noqa: SLF001 - the standard library's fork server, ours alone
        return pid is not None and os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None

    def _ensure_server(self) -> None:
        """Start the server (again, if it died) with the trials' environment and its stderr in its log, then probe
        what it imported: ``self.error`` says why phases cannot run."""
        if self._server_alive():
            return
        saved_env, saved_err = dict(os.environ), os.dup(2)
        log_fd = os.open(self._log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.environ.clear()
            os.environ.update(self._env)
            os.dup2(log_fd, 2)
            self._server.ensure_running()
        finally:
            os.dup2(saved_err, 2)
            os.close(saved_err)
            os.close(log_fd)
            os.environ.clear()
            os.environ.update(saved_env)
        self.error = self._probe()

    def _spawn(self, obj: Any) -> tuple[int, int, int]:
        """Ask the server for a child that becomes ``obj``; ``(pid, status fd, read end of the fd it inherits)``."""
        read_fd, write_fd = os.pipe()
        try:
            status_fd, data_fd = self._server.connect_to_new_process([write_fd])
        finally:
            os.close(write_fd)
        with open(data_fd, "wb") as fh:
            fh.write(pickle.dumps({}) + pickle.dumps(obj))  # no preparation data: see forked_phase
        from multiprocessing import forkserver

        return forkserver.read_signed(status_fd), status_fd, read_fd

    def _probe(self) -> str | None:
        pid, status_fd, read_fd = self._spawn(forked_phase.Probe(self._required, self._optional))
        data = b""
        while chunk := os.read(read_fd, 65536):
            data += chunk
        os.close(read_fd)
        _Child(pid, status_fd).close()
        where = f"(its log: {self._log})"
        try:
            report = json.loads(data)
        except json.JSONDecodeError:
            return f"the fork server did not start {where}"
        self.preloaded = report["preloaded"]
        if report["errors"]:
            name, why = next(iter(report["errors"].items()))
            return f"the fork server could not preload {name!r}: {why}; fix it or remove it from 'preload' {where}"
        if report["cuda"]:
            return ("a preloaded module initialized CUDA, so forked children could not use it; "
                    "remove it from 'preload' or use `launcher: subprocess`")
        return None

    def run(self, cmd: list[str], log: Path, env: dict[str, str]) -> tuple[int | None, str]:
        """Run ``cmd`` in a child of the server; returns ``(exit code, why)`` (``None`` when stopped or timed out;
        a child killed by a signal gives minus the signal number, as ``subprocess`` does)."""
        with self._lock:
            if self.stopping.is_set():
                return None, "interrupted"
            self._ensure_server()
            if self.error:
                return 1, self.error
            _write_cmd(cmd, log)
            pid, status_fd, sync_fd = self._spawn(forked_phase.Phase(
                {"argv": cmd, "env": env, "log": str(log), "cwd": os.getcwd()}))
            os.read(sync_fd, 1)  # the child leads its own session now (b"" if it died first)
            os.close(sync_fd)
            child = self._running[pid] = _Child(pid, status_fd)
        try:
            return self._wait(child)
        finally:
            with self._lock:
                del self._running[pid]
            child.close()

    def _wait(self, child: _Child) -> tuple[int | None, str]:
        code, why = child.wait(self.timeout_s), ""
        if code is _TIMEOUT:
            why = f"timed out after {self.timeout_s:g} s"
            code = self._kill(child)
        if code is _SERVER_DIED:  # the phase gets SIGTERM from the kernel; make sure of it
            child.signal(signal.SIGKILL)
            return None if why else 1, why or f"the fork server died (its log: {self._log})"
        return (None if why or self.stopping.is_set() else code), why

    @staticmethod
    def _kill(child: _Child) -> Any:
        """SIGTERM, then SIGKILL, to the running phase; its exit code (or ``_SERVER_DIED``)."""
        for sig, grace in ((signal.SIGTERM, _TERM_GRACE_S), (signal.SIGKILL, _KILL_GRACE_S)):
            child.signal(sig)
            code = child.wait(grace)
            if code is not _TIMEOUT:
                return code
        return child.wait(None)

    def stop_all(self) -> None:
        with self._lock:
            self.stopping.set()
            running = list(self._running.values())
        for sig, grace in ((signal.SIGTERM, _TERM_GRACE_S), (signal.SIGKILL, _KILL_GRACE_S)):
            for child in running:
                child.signal(sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(c.pid in self._running for c in running):
                time.sleep(0.05)
            running = [c for c in running if c.pid in self._running]

    def close(self) -> None:
        """Stop the server (closing its "alive" pipe); a phase still running gets SIGTERM from the kernel."""
        try:
            self._server._stop()  # noqa: SLF001
        except OSError:
            pass
