"""The results file of ``bninit compare``: append-only JSON lines, one writer per process, safe across processes."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

try:  # POSIX advisory lock; a second compare on the same file then waits instead of interleaving
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class ResultsFile:
    """Append-only JSONL results file.

    Args:
        path: the file; created on the first append.

    Each :meth:`append` writes one complete line with a single ``os.write`` while holding a
    thread lock and an exclusive ``flock``, then flushes it to disk with ``fsync``. If the file
    does not end with a newline (a line cut by a crash of some other writer), the partial tail
    is moved to ``<path>.partial`` before anything is appended, so it cannot merge with a new line.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def repair_tail(self) -> str | None:
        """Move a trailing partial line aside. Returns a warning message if it did."""
        if not self.path.exists():
            return None
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return None
        cut = data.rfind(b"\n") + 1
        partial = self.path.with_name(self.path.name + ".partial")
        with open(partial, "ab") as fh:
            fh.write(data[cut:] + b"\n")
        with open(self.path, "r+b") as fh:
            fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())
        return f"{self.path}: moved an incomplete last line to {partial}"

    def finished(self) -> dict[tuple[int, str], dict[str, Any]]:
        """The finished (seed, arm) pairs already in the file (lines without ``error``)."""
        done: dict[tuple[int, str], dict[str, Any]] = {}
        if not self.path.exists():
            return done
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue  # `bninit report` names such lines; compare just reruns the pair
            if isinstance(obj, dict) and "error" not in obj and isinstance(obj.get("seed"), int):
                done[(obj["seed"], str(obj.get("arm")))] = obj
        return done

    def append(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one JSON line, atomically and durably."""
        data = (json.dumps(record, default=str) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                view = memoryview(data)
                while view:  # os.write may write less than asked for
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)  # also releases the flock
