"""A fork worker of ``bninit compare`` (``launcher: fork``): imports torch and Lightning once, then forks one child
per trial phase, which runs the LightningCLI script as ``python script.py ...`` would.

Run as ``python -m lightning_bninit.experiments.fork_worker --try-preload torch,lightning.pytorch``; only the parent's
:class:`~lightning_bninit.experiments.launchers.ForkLauncher` starts it. Protocol: one JSON object per line, requests
on stdin (``{"run": {...}}``, ``{"signal": N}``), replies on stdout (``{"ready": ...}``, ``{"pid": N}``,
``{"exit": code}``, ``{"error": text}``). The worker itself never runs a trial, never touches CUDA and handles one
child at a time. Each child gets a session of its own (the parent stops it with its process group), the trial's
environment, working directory, ``sys.argv`` and ``sys.path[0]``, and its stdout/stderr in the phase's log file; it
exits as the interpreter would, less the teardown of the modules.

Modules are imported by name (the worker has no import of its own of torch or Lightning), so that
``lightning_bninit.experiments`` stays free of them.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import os
import runpy
import select
import signal
import sys
import threading
import time
from typing import Any, NoReturn

_POLL_S = 0.05
_EOF_GRACE_S = 10.0


def _reply(fd: int, payload: dict[str, Any]) -> None:
    data = (json.dumps(payload) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def _cuda_initialized() -> bool:
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    return bool(cuda is not None and cuda.is_initialized())


def _preload(required: list[str], optional: list[str]) -> tuple[list[str], str | None]:
    """Import the modules, ``optional`` (the defaults: torch and Lightning first, as a script imports them) before
    ``required``; returns those imported and an error message (a failed ``required`` module, or CUDA).

    The order matters: modules can behave differently depending on what was imported before them (rich.console
    imported before Lightning makes LightningCLI read ``--trainer.limit_val_batches=1`` as 1.0 when two config files
    are given), so the workers import what every script imports first.
    """
    done = []
    for name in optional + required:
        try:
            importlib.import_module(name)
        except ImportError as err:
            if name in required:
                return done, f"preload: cannot import {name!r}: {err}"
            continue
        done.append(name)
    if _cuda_initialized():
        return done, ("a preloaded module initialized CUDA, so forked children could not use it; "
                      "remove it from 'preload' or use `launcher: subprocess`")
    return done, None


class _ThreadSetting:
    """Audit hook of a child: a script that sets OMP_NUM_THREADS (e.g. ``os.environ.setdefault``) before it imports
    torch gets ``min(n, default)`` threads in a fresh process (MKL caps it at torch's default, the physical cores);
    here torch is already imported, so the same number is applied when the script sets the variable."""

    def __init__(self) -> None:
        torch = sys.modules.get("torch")
        unset = "OMP_NUM_THREADS" not in os.environ and "MKL_NUM_THREADS" not in os.environ
        self.default = torch.get_num_threads() if torch is not None and unset else None

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if event != "os.putenv" or args[0] not in (b"OMP_NUM_THREADS", "OMP_NUM_THREADS"):
            return
        torch = sys.modules.get("torch")
        try:
            threads = int(args[1])
        except (TypeError, ValueError):
            return
        if torch is not None and threads > 0:
            torch.set_num_threads(min(threads, self.default) if self.default else threads)


def _redirect(log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


def _child(request: dict[str, Any], reply_fd: int, sync_fd: int) -> NoReturn:
    """The forked child: become the phase's process, run the script, and exit as ``python script.py`` would."""
    os.setsid()
    os.write(sync_fd, b"1")  # the worker waits for this, so that the parent can signal the new process group
    os.close(sync_fd)
    os.close(reply_fd)
    _redirect(request["log"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.addaudithook(_ThreadSetting())
    _exit(_run_script(request["argv"]))


def _run_script(argv: list[str]) -> int:
    """Run ``python argv[1:]``; returns the exit code a fresh interpreter would have (the traceback of an uncaught
    exception is printed, as Python prints it)."""
    try:
        if argv[1] == "-m":  # python -m module args...
            sys.argv = [argv[2], *argv[3:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
        else:  # python script args...
            sys.argv = argv[1:]
            sys.path[0] = os.path.dirname(os.path.abspath(argv[1]))
            runpy.run_path(argv[1], run_name="__main__")
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        return -signal.SIGINT  # Python ends with SIGINT on an uncaught KeyboardInterrupt
    except BaseException:  # noqa: BLE001 - an uncaught exception of the script
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


def _exit(code: int) -> NoReturn:
    """Exit as the interpreter does (non-daemon threads joined, atexit handlers run, streams flushed), but without
    tearing down the modules: that would touch every object inherited from the worker, copying its memory page by
    page (about 1.5 s per phase with torch loaded), and leaves nothing a fresh process would keep, except the data
    of files the script left open (their objects are not finalized: close them)."""
    main = threading.main_thread()
    for thread in threading.enumerate():
        if thread is not main and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # noqa: SLF001 - what the interpreter runs at exit (CPython's atexit module)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if code < 0:  # killed by a signal, as a fresh interpreter would be
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


def _start(request: dict[str, Any], reply_fd: int) -> int:
    """Fork the child of ``request``; returns its pid once it leads a session of its own."""
    sys.stdout.flush()
    sys.stderr.flush()
    sync_r, sync_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(sync_r)
        _child(request, reply_fd, sync_w)
    os.close(sync_w)
    os.read(sync_r, 1)  # b"" if the child died before setsid: then waitpid reports it
    os.close(sync_r)
    return pid


def _signal(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_child(pid: int) -> None:
    """On EOF (the parent is gone): stop the running child as the parent would have."""
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + _EOF_GRACE_S
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(_POLL_S)
    _signal(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _handle(message: dict[str, Any], child: int | None, reply_fd: int) -> int | None:
    """One request; returns the running child's pid (or ``None``)."""
    if "signal" in message:
        if child is not None:
            _signal(child, int(message["signal"]))
        return child
    if child is not None:
        _reply(reply_fd, {"error": "the fork worker is already running a child"})
        return child
    if _cuda_initialized():
        _reply(reply_fd, {"error": "the fork worker has initialized CUDA; use `launcher: subprocess`"})
        return None
    pid = _start(message["run"], reply_fd)
    _reply(reply_fd, {"pid": pid})
    return pid


def serve(reply_fd: int) -> None:
    """Answer requests from stdin until it closes (a forked child never returns from here: see ``_child``)."""
    buffer, child = b"", None
    while True:
        ready, _, _ = select.select([0], [], [], _POLL_S if child is not None else None)
        if ready:
            data = os.read(0, 65536)
            if not data:
                if child is not None:
                    _stop_child(child)
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                child = _handle(json.loads(line), child, reply_fd)
        if child is not None:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid:
                _reply(reply_fd, {"exit": os.waitstatus_to_exitcode(status)})
                child = None


def main(argv: list[str] | None = None) -> int:
    """Preload the modules, say ready, serve. Replies go to a copy of stdout; fd 1 itself then points at stderr."""
    parser = argparse.ArgumentParser(prog="python -m lightning_bninit.experiments.fork_worker")
    parser.add_argument("--preload", default="", help="comma-separated modules to import (an error if one fails)")
    parser.add_argument("--try-preload", default="", help="comma-separated modules to import if installed")
    args = parser.parse_args(argv)
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    start = time.monotonic()
    done, error = _preload([m for m in args.preload.split(",") if m], [m for m in args.try_preload.split(",") if m])
    if error:
        _reply(reply_fd, {"error": error})
        return 1
    _reply(reply_fd, {"ready": True, "pid": os.getpid(), "preloaded": done,
                      "seconds": round(time.monotonic() - start, 3)})
    serve(reply_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
