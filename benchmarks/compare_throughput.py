"""Throughput of ``bninit compare --parallel N``: total training epochs per minute, and time to a verdict.

For each N, runs ``bninit compare`` on the experiment file with a fresh results file (so nothing is skipped) and
times the command from start to the printed report. Epochs per run are the epochs each finished run trained
(``config.fit_epochs`` of its results line).

    python benchmarks/compare_throughput.py --config examples/cifar10/configs/compare_gpu.yaml \
        --seeds 1-8 --arms standard,bninit --parallel 1 4 8          # on one GPU
    python benchmarks/compare_throughput.py --config examples/digits/compare.yaml --seeds 1-2 --parallel 1 2

Prints a Markdown table; ``--json FILE`` appends one JSON line per N.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_compare(config: str, seeds: str, arms: str, parallel: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bninit_tp{parallel}_") as tmp:
        out = Path(tmp) / "results.jsonl"
        cmd = [sys.executable, "-m", "lightning_bninit", "compare", "--config", config, "--seeds", seeds,
               "--arms", arms, "--parallel", str(parallel), "--out", str(out), "--no-progress", *extra]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    done = [r for r in records if "error" not in r]
    epochs = sum(int(r["config"].get("fit_epochs") or 0) for r in done)
    return {"parallel": parallel, "runs": len(done), "failed": len(records) - len(done), "epochs": epochs,
            "wall_s": round(wall, 1), "epochs_per_min": round(60 * epochs / wall, 2), "returncode": proc.returncode,
            "stderr_tail": proc.stderr[-2000:] if proc.returncode else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="experiment file for bninit compare")
    parser.add_argument("--seeds", default="1-8")
    parser.add_argument("--arms", default="standard,bninit")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--json", help="append one JSON line per N to this file")
    args, extra = parser.parse_known_args()
    rows = []
    print("| parallel | runs | failed | epochs | wall (s) | epochs / min |\n|---:|---:|---:|---:|---:|---:|", flush=True)
    for n in args.parallel:
        row = run_compare(args.config, args.seeds, args.arms, n, extra)
        rows.append(row)
        print(f"| {n} | {row['runs']} | {row['failed']} | {row['epochs']} | {row['wall_s']} | {row['epochs_per_min']} |",
              flush=True)
        if row["returncode"]:
            print(row["stderr_tail"], file=sys.stderr)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps({**row, "config": args.config, "seeds": args.seeds, "arms": args.arms}) + "\n")


if __name__ == "__main__":
    main()
