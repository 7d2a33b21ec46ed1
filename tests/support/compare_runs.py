"""What the tests of `bninit compare` and its launchers share: the fake training script, the results file as
records, and waiting for a process to be gone. The fixtures ``launcher`` and ``fake_calls`` are in
``tests/conftest.py``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .launch import SUPPORT

FAKE = SUPPORT / "fake_cli.py"  # a LightningCLI-like script that needs neither torch nor Lightning


def results_lines(path: Path) -> list[dict]:
    """The records of a results file (JSON lines), which ends with a newline."""
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def process_gone(pid: int, within_s: float = 10.0) -> bool:
    """Whether the process ``pid`` is gone within ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False
