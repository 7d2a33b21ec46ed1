"""The processes of ``launcher: fork``: children of the standard library's fork server that run one trial phase each.

:class:`~lightning_bninit.experiments.launchers.ForkLauncher` starts a :class:`multiprocessing.forkserver.ForkServer`
of its own that imports torch and Lightning once (its preload, with this module first), and asks it for a child per
phase. The server's child unpickles a :class:`Phase` (or, once at the start, a :class:`Probe`) and calls its
``_bootstrap``, as it would call a :class:`multiprocessing.Process`'s: the object becomes the child. The parent sends
no preparation data, so the child keeps the server's ``sys.path``, start method and ``__main__``: the parent's
``__main__`` (a user script that calls ``run_compare``) is never imported again there.

A :class:`Phase` gets a session of its own (the parent stops it with its process group), the trial's environment,
working directory, ``sys.argv`` and ``sys.path[0]``, and its stdout/stderr in the phase's log file; it exits as the
interpreter would, less the teardown of the modules. It dies with the server (``PR_SET_PDEATHSIG`` on Linux), which
exits when the parent goes away. Modules are imported by name (this module imports neither torch nor Lightning), so
that ``lightning_bninit.experiments`` stays free of them.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import json
import os
import runpy
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, NoReturn

_PR_SET_PDEATHSIG = 1


@functools.cache
def libc() -> Any:
    """The C library on Linux (``None`` elsewhere); load it before forking, so that a child need not."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Linux: have the kernel send ``sig`` to this process when its parent exits (elsewhere: nothing). Also the
    ``preexec_fn`` of a Ray task's phases, which must not outlive a worker node that died."""
    if libc() is not None:
        libc().prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def cuda_initialized() -> bool:
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    return bool(cuda is not None and cuda.is_initialized())


def _inherited_fd() -> int:
    """The fd the parent passed (the first), after closing what a fresh process would not have: the server's
    "alive" pipe (the server exits once only the parent could have held it) and the resource tracker's."""
    from multiprocessing import forkserver, resource_tracker

    server = forkserver._forkserver  # noqa: SLF001 - the server's state in its child, set by _serve_one
    for fd in (server._forkserver_alive_fd, resource_tracker._resource_tracker._fd):  # noqa: SLF001
        if fd is not None:
            os.close(fd)
    server._forkserver_alive_fd = resource_tracker._resource_tracker._fd = None  # noqa: SLF001
    return server._inherited_fds[0]  # noqa: SLF001


@dataclass
class Probe:
    """Reports, as JSON on the inherited fd, what the server imported and why a ``required`` module is missing."""

    required: list[str]
    optional: list[str] = field(default_factory=list)

    def _bootstrap(self, parent_sentinel: int | None = None) -> NoReturn:
        fd = _inherited_fd()
        errors = {}
        for name in self.required:
            if name not in sys.modules:  # the server skips an ImportError silently: get the message here
                try:
                    importlib.import_module(name)
                    errors[name] = "it was not imported by the fork server"
                except Exception as err:  # noqa: BLE001 - any error of the import is the reason
                    errors[name] = f"{type(err).__name__}: {err}"
        report = {"preloaded": [m for m in self.optional + self.required if m in sys.modules], "errors": errors,
                  "cuda": cuda_initialized(), "pid": os.getppid()}
        data = json.dumps(report).encode()
        while data:
            data = data[os.write(fd, data):]
        os._exit(0)


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


@dataclass
class Phase:
    """One phase: ``request`` has ``argv`` (``python script.py ...`` or ``python -m module ...``), ``env``, ``log``
    and ``cwd``."""

    request: dict[str, Any]

    def _bootstrap(self, parent_sentinel: int | None = None) -> NoReturn:
        """Become the phase's process, run the script, and exit as ``python script.py`` would."""
        sync_fd = _inherited_fd()
        if parent_sentinel is not None:
            os.close(parent_sentinel)
        os.setsid()
        die_with_parent(signal.SIGTERM)  # the server exits when the parent is gone: so does the phase
        os.write(sync_fd, b"1")  # the parent waits for this, so that it can signal the new process group
        os.close(sync_fd)
        request = self.request
        _redirect(request["log"])
        if cuda_initialized():
            print("the fork server has initialized CUDA; use `launcher: subprocess`", file=sys.stderr)
            _exit(1)
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
    tearing down the modules: that would touch every object inherited from the server, copying its memory page by
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
