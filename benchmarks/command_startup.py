"""Start-up time of the ``bninit`` command against importing Lightning, measured side by side (interleaved).

    python benchmarks/command_startup.py --repeats 7

Each repeat runs, in a fresh process each: ``python -c "import lightning.pytorch"``, ``bninit --help`` and
``bninit report`` on a small results file (docs/results/digits.jsonl), and prints the median wall time of each and
its ratio to the Lightning import (target: under 0.5).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "digits.jsonl"
COMMANDS = {
    "import lightning.pytorch": [sys.executable, "-c", "import lightning.pytorch"],
    "bninit --help": [sys.executable, "-m", "lightning_bninit", "--help"],
    "bninit report": [sys.executable, "-m", "lightning_bninit", "report", str(RESULTS), "--metric", "test_acc"],
}


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    for cmd in COMMANDS.values():  # warm the file cache once
        _time(cmd)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, cmd in COMMANDS.items():
            times[name].append(_time(cmd))
    base = statistics.median(times["import lightning.pytorch"])
    print(f"| command | median of {args.repeats} (s) | ratio to `import lightning.pytorch` |")
    print("| --- | --- | --- |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| `{name}` | {median:.3f} | {median / base:.3f} |")


if __name__ == "__main__":
    main()
