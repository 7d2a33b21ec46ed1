"""How ``bninit compare`` starts the processes of a trial phase: a fresh Python each time, or a fork of a warm worker.

Both launchers run one command line (``python script.py fit ...``) with its output in a log file, return its exit
code, stop it after ``timeout_s`` and stop everything on Ctrl-C. Every phase is a process of its own, in a session of
its own (Ctrl-C reaches only the parent, which stops the children with their process groups).

- :class:`SubprocessLauncher`: ``subprocess.Popen`` of the command line; each phase imports torch and Lightning.
- :class:`ForkLauncher`: one :mod:`~lightning_bninit.experiments.fork_worker` per parallel slot imports them once;
  each phase is a child forked from an idle worker that runs the script with ``runpy``. The workers never touch CUDA.
"""

from __future__ import annotations

import json
import os
import queue
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["ForkLauncher", "Launcher", "SubprocessLauncher", "resolve_launcher"]

_TERM_GRACE_S, _KILL_GRACE_S = 10.0, 5.0
#: What the fork workers import unless ``preload_defaults: false`` (each only if installed): torch, Lightning, this
#: package's CLI flag and run recorder, and what a run loads on its way otherwise (Lightning's default logger is
#: TensorBoard's when it is installed; the BN monitor plots with matplotlib).
DEFAULT_PRELOAD = ("torch", "lightning.pytorch", "lightning_bninit.cli", "lightning_bninit.experiments.recorder",
                   "torch.utils.tensorboard", "matplotlib.pyplot")


class Launcher(Protocol):
    """What a trial needs from a launcher."""

    stopping: threading.Event

    def run(self, cmd: list[str], log: Path, env: dict[str, str]) -> tuple[int | None, str]:
        """Run ``cmd`` with its output in ``log``; ``(exit code, why)``, the code ``None`` when stopped or timed out."""

    def stop_all(self) -> None:
        """Stop every running phase (Ctrl-C); later runs return at once."""

    def close(self) -> None:
        """Release the launcher's resources (the fork workers)."""


def resolve_launcher(choice: str, gpus: list[str]) -> str:
    """``auto`` is ``fork`` on Linux without visible GPUs (measured there), ``subprocess`` elsewhere.

    Raises:
        ValueError: ``fork`` where ``os.fork`` does not exist.
    """
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

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
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
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
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


_TIMEOUT = object()


class _Replies:
    """JSON lines from a worker's stdout, with a timeout."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer, self.eof = fd, b"", False

    def next(self, timeout: float | None) -> Any:
        """The next message; ``None`` at EOF, ``_TIMEOUT`` when none came in ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buffer:
            if self.eof:
                return None
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return _TIMEOUT
            if not select.select([self.fd], [], [], left)[0]:
                return _TIMEOUT
            data = os.read(self.fd, 65536)
            self.eof = not data
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


class _Worker:
    """One fork worker process and the phase it runs (one at a time)."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=fh, env=env,
                                         start_new_session=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.replies = _Replies(self.proc.stdout.fileno())
        self.lock = threading.Lock()  # guards writes and `child`
        self.child: int | None = None  # pid of the running phase
        self.idle = threading.Event()
        self.idle.set()
        self.ready: dict[str, Any] | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None and not self.replies.eof

    def send(self, message: dict[str, Any]) -> bool:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, ValueError, OSError):
            return False

    def wait_ready(self) -> str | None:
        """Wait for the worker's imports; an error message if it could not start."""
        if self.ready is None:
            msg = self.replies.next(None)
            if not isinstance(msg, dict) or not msg.get("ready"):
                error = msg.get("error") if isinstance(msg, dict) else "it exited"
                return f"the fork worker could not start: {error} (its log: {self.log})"
            self.ready = msg
        return None

    def signal(self, sig: int) -> None:
        """Signal the running phase's process group through the worker, which knows whether it is still there (and
        gets the signal after the phase's request, so a phase being started is stopped too)."""
        with self.lock:
            if not self.idle.is_set() and not self.send({"signal": int(sig)}) and self.child is not None:
                _killpg(self.child, sig)  # the worker is gone; the child may not be

    def close(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()  # EOF: the worker stops its child, if any, and exits
        except OSError:
            pass
        try:
            self.proc.wait(timeout=_TERM_GRACE_S + _KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            _killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class ForkLauncher:
    """Each phase a child forked from a warm worker (see the module docstring).

    Args:
        timeout_s: per phase, or ``None``.
        env: the workers' environment (the trials' common one: thread counts are set before torch is imported).
        workers: how many workers (the number of phases run at once).
        log_dir: where the workers' own logs go.
        preload: modules the workers import (each must import).
        preload_defaults: also import :data:`DEFAULT_PRELOAD`, those installed.
    """

    def __init__(self, timeout_s: float | None, env: dict[str, str], workers: int, log_dir: Path,
                 preload: Sequence[str] = (), preload_defaults: bool = True) -> None:
        self.timeout_s = timeout_s
        self.stopping = threading.Event()
        self._env, self._log_dir = env, log_dir
        self._argv = [sys.executable, "-m", "lightning_bninit.experiments.fork_worker", "--preload", ",".join(preload),
                      "--try-preload", ",".join(DEFAULT_PRELOAD if preload_defaults else ())]
        log_dir.mkdir(parents=True, exist_ok=True)
        self._count = 0
        self._all: list[_Worker] = []
        self._idle: queue.Queue[_Worker] = queue.Queue()
        for _ in range(workers):  # all start importing at once
            self._idle.put(self._new_worker())

    def _new_worker(self) -> _Worker:
        self._count += 1
        worker = _Worker(self._argv, self._env, self._log_dir / f"fork_worker_{self._count}.log")
        self._all.append(worker)
        return worker

    def run(self, cmd: list[str], log: Path, env: dict[str, str]) -> tuple[int | None, str]:
        """Run ``cmd`` in a child of an idle worker; returns ``(exit code, why)`` (``None`` when stopped or timed
        out; a child killed by a signal gives minus the signal number, as ``subprocess`` does)."""
        worker = self._idle.get()
        try:
            if not worker.alive():
                worker.close()
                worker = self._new_worker()
            error = worker.wait_ready()
            if error:
                return 1, error
            _write_cmd(cmd, log)
            return self._run_on(worker, {"argv": cmd, "env": env, "log": str(log), "cwd": os.getcwd()})
        finally:
            self._idle.put(worker)

    def _run_on(self, worker: _Worker, request: dict[str, Any]) -> tuple[int | None, str]:
        with worker.lock:
            if self.stopping.is_set():
                return None, "interrupted"
            worker.idle.clear()
            sent = worker.send({"run": request})
        try:
            started = worker.replies.next(None) if sent else None
            if not isinstance(started, dict) or "pid" not in started:
                why = started.get("error") if isinstance(started, dict) else "the fork worker died"
                return 1, f"{why} (its log: {worker.log})"
            with worker.lock:
                worker.child = started["pid"]
            return self._wait(worker)
        finally:
            with worker.lock:
                worker.child = None
            worker.idle.set()

    def _wait(self, worker: _Worker) -> tuple[int | None, str]:
        msg = worker.replies.next(self.timeout_s)
        why = ""
        if msg is _TIMEOUT:
            why = f"timed out after {self.timeout_s:g} s"
            msg = self._kill(worker)
        if msg is None:  # the worker died under its child: stop the child ourselves
            assert worker.child is not None
            _killpg(worker.child, signal.SIGKILL)
            return None if why else 1, why or f"the fork worker died (its log: {worker.log})"
        return (None if why or self.stopping.is_set() else msg["exit"]), why

    @staticmethod
    def _kill(worker: _Worker) -> Any:
        """SIGTERM, then SIGKILL, to the running phase; its exit message (``None`` if the worker died)."""
        for sig, grace in ((signal.SIGTERM, _TERM_GRACE_S), (signal.SIGKILL, _KILL_GRACE_S)):
            worker.signal(sig)
            msg = worker.replies.next(grace)
            if msg is not _TIMEOUT:
                return msg
        return worker.replies.next(None)

    def stop_all(self) -> None:
        self.stopping.set()
        busy = [w for w in self._all if not w.idle.is_set()]
        for sig, grace in ((signal.SIGTERM, _TERM_GRACE_S), (signal.SIGKILL, _KILL_GRACE_S)):
            for worker in busy:
                worker.signal(sig)
            deadline = time.monotonic() + grace
            busy = [w for w in busy if not w.idle.wait(max(0.0, deadline - time.monotonic()))]

    def close(self) -> None:
        for worker in self._all:
            worker.close()
