"""Time to a verdict of ``bninit compare`` with each launcher: fresh processes (``subprocess``) vs forked from warm
workers (``fork``), interleaved on the same machine and experiment file, and whether their results are identical.

Each repeat runs the whole command once per launcher (alternating which goes first), with a fresh results file, from
start to the printed report, and checks that both launchers gave the same metrics for every (seed, arm).

    python benchmarks/compare_launchers.py --config examples/digits/compare.yaml --parallel 2 --repeats 3

Prints every run, then a Markdown table with the medians and the ratio fork / subprocess; ``--json FILE`` appends one
JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAUNCHERS = ("subprocess", "fork")


def run_once(config: str, launcher: str, parallel: int, extra: list[str]) -> dict:
    """One ``bninit compare`` from scratch; wall time and the metrics of every run."""
    with tempfile.TemporaryDirectory(prefix=f"bninit_{launcher}_") as tmp:
        out = Path(tmp) / "results.jsonl"
        cmd = [sys.executable, "-m", "lightning_bninit", "compare", "--config", config, "--parallel", str(parallel),
               "--launcher", launcher, "--out", str(out), "--no-progress", *extra]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    metrics = {f"{r['seed']}/{r['arm']}": {k: v for k, v in r.items() if isinstance(v, float) and k != "duration_s"}
               for r in records if "error" not in r}
    return {"launcher": launcher, "wall_s": round(wall, 2), "runs": len(metrics),
            "failed": len(records) - len(metrics), "returncode": proc.returncode, "metrics": metrics,
            "stderr_tail": proc.stderr[-2000:] if proc.returncode else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/digits/compare.yaml", help="experiment file")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="append one JSON line per run to this file")
    args, extra = parser.parse_known_args()  # anything else goes to bninit compare (e.g. --seeds 1-2)
    walls: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
    identical = True
    for rep in range(args.repeats):
        order = LAUNCHERS if rep % 2 == 0 else LAUNCHERS[::-1]
        results = {}
        for launcher in order:
            row = run_once(args.config, launcher, args.parallel, extra)
            results[launcher] = row
            walls[launcher].append(row["wall_s"])
            print(f"repeat {rep + 1} {launcher:>10}: {row['wall_s']:7.2f} s, {row['runs']} runs, {row['failed']} failed"
                  f"{', exit ' + str(row['returncode']) if row['returncode'] else ''}", flush=True)
            if row["returncode"]:
                print(row["stderr_tail"], file=sys.stderr)
            if args.json:
                with open(args.json, "a") as fh:
                    fh.write(json.dumps({**row, "repeat": rep + 1, "config": args.config,
                                         "parallel": args.parallel}) + "\n")
        same = results["fork"]["metrics"] == results["subprocess"]["metrics"] and results["fork"]["runs"] > 0
        identical &= same
        print(f"repeat {rep + 1}: metrics of both launchers {'identical' if same else 'DIFFER'}", flush=True)
    med = {name: statistics.median(values) for name, values in walls.items()}
    print(f"\n| launcher | runs of `bninit compare` | median wall (s) | all (s) |\n|---|---:|---:|---|")
    for name in LAUNCHERS:
        print(f"| {name} | {len(walls[name])} | {med[name]:.1f} | {', '.join(f'{w:.1f}' for w in walls[name])} |")
    print(f"\nratio fork / subprocess (medians): {med['fork'] / med['subprocess']:.3f}; "
          f"metrics identical in every repeat: {'yes' if identical else 'NO'}")


if __name__ == "__main__":
    main()
