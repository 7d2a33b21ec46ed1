"""What a phase costs the fork launcher itself: the wall time from ``run`` to the exit code of a script that does
nothing but import what the launcher preloads (torch, Lightning), and the launcher's start (its imports, once).

Measures the ``lightning_bninit`` on the path, so that two versions can be compared on the same machine, interleaved
(e.g. this checkout against the hand-made fork worker it replaced, unpacked with ``git archive``):

    git archive 4ca90fe lightning_bninit | tar -x -C /tmp/old_bninit
    for i in 1 2 3; do
        PYTHONPATH=/tmp/old_bninit python benchmarks/fork_phase_overhead.py --phases 20
        PYTHONPATH=$PWD python benchmarks/fork_phase_overhead.py --phases 20
    done

Prints one JSON line: the package's path, the start and the median and mean seconds per phase.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = "import torch, lightning.pytorch\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", type=int, default=20)
    args = parser.parse_args()
    import lightning_bninit
    from lightning_bninit.experiments.launchers import ForkLauncher

    env = dict(os.environ, OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory(prefix="bninit_phase_") as tmp:
        script = Path(tmp) / "phase.py"
        script.write_text(SCRIPT)
        start = time.perf_counter()
        extra = {"workers": 1} if "workers" in inspect.signature(ForkLauncher).parameters else {}
        launcher = ForkLauncher(None, env, log_dir=Path(tmp) / "logs", preload=("torch", "lightning.pytorch"),
                                preload_defaults=False, **extra)
        times = []
        try:
            for i in range(args.phases):
                t0 = time.perf_counter()
                code, why = launcher.run([sys.executable, str(script)], Path(tmp) / f"{i}.log", env)
                times.append(time.perf_counter() - t0)
                assert code == 0, (code, why)
                if i == 0:
                    ready = time.perf_counter() - start
        finally:
            launcher.close()
    print(json.dumps({"package": str(Path(lightning_bninit.__file__).parent), "start_to_first_exit_s": round(ready, 3),
                      "median_phase_s": round(statistics.median(times[1:]), 4),
                      "mean_phase_s": round(statistics.mean(times[1:]), 4), "phases": args.phases}))


if __name__ == "__main__":
    main()
