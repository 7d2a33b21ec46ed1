"""One launcher for the tests that run a script in processes of its own (DDP on CPU, LightningCLI, compare)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

SUPPORT = Path(__file__).resolve().parent
ROOT = SUPPORT.parents[1]


def script_env(**extra: str) -> dict[str, str]:
    """The environment of a child: this checkout and ``tests/support`` first on the path, fork allowed for DDP,
    a master port of its own (so that DDP tests of parallel test runs do not collide)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(SUPPORT), env.get("PYTHONPATH", "")])
    env.pop("PL_DISABLE_FORK", None)
    env.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    env.update(extra)
    return env


def run_script(script: str | Path, *args: str, cwd: str | Path | None = None, timeout: float = 300,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python <script> <args>`` (a name under ``tests/support`` or a path); fail with its output if it fails."""
    path = Path(script) if Path(script).is_absolute() else SUPPORT / script
    proc = subprocess.run([sys.executable, str(path), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env or script_env())
    assert proc.returncode == 0, f"{path.name} exited with {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return proc


def load_script(relative: str) -> ModuleType:
    """Import the script at ``ROOT / relative`` (an example or analysis script, not a package module) by its path,
    with its own folder on ``sys.path`` while it loads, as ``python <script>`` would have it (for its siblings)."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module
