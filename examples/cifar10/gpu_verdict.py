"""Helpers of ``gpu_verdict.sh`` (the CIFAR-10 GPU verdict): the experiment file, ``env.txt`` and ``timing.json``.

    python examples/cifar10/gpu_verdict.py experiment BASE OUT [ARG ...]   # BASE + ARGs appended to its `args`
    python examples/cifar10/gpu_verdict.py env [--require-cuda]           # versions and the GPU, for env.txt
    python examples/cifar10/gpu_verdict.py timing --work W --results R --out T [KEY=VALUE ...]

Only the standard library, PyYAML and (for ``env``) the packages it reports on: it runs on the GPU machine's Python
with the carried wheels, like everything the script starts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


# --------------------------------------------------------------------------------------------------------------
# experiment: compare_gpu.yaml with absolute paths and the script's extra arguments
# --------------------------------------------------------------------------------------------------------------
def write_experiment(base: Path, out: Path, extra: list[str]) -> None:
    """Write ``base`` to ``out`` with ``script``/``config`` made absolute and ``extra`` appended to ``args``.

    The name stays the base file's stem, so the runs are grouped as those of ``base`` would be.
    """
    import yaml

    raw = yaml.safe_load(base.read_text())
    folder = base.resolve().parent
    if raw.get("script"):
        raw["script"] = str((folder / raw["script"]).resolve())
    configs = raw.get("config")
    if configs is not None:
        items = [configs] if isinstance(configs, str) else list(configs)
        raw["config"] = [str((folder / c).resolve()) for c in items]
    args = raw.get("args") or []
    raw["args"] = (args.split() if isinstance(args, str) else list(args)) + list(extra)
    raw.setdefault("name", base.stem)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# {base} with the arguments of gpu_verdict.sh appended\n" + yaml.safe_dump(raw, sort_keys=False))


# --------------------------------------------------------------------------------------------------------------
# env: what ran where
# --------------------------------------------------------------------------------------------------------------
REPORTED = ("torch", "lightning", "torchvision", "torchmetrics", "jsonargparse", "docstring_parser",
            "typeshed_client", "typing_extensions", "numpy", "scipy", "PIL", "yaml", "rich", "matplotlib",
            "tensorboard", "lightning_utilities")
DIST_OF = {"PIL": "pillow", "yaml": "pyyaml"}


def _module_line(name: str) -> str:
    """Version and origin of a package, found without importing it (importing them all takes long on CPU)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as err:
        spec, why = None, f"{type(err).__name__}: {err}"
    else:
        why = "not found"
    if spec is None:
        return f"{name}: not importable ({why})"
    try:
        version = metadata.version(DIST_OF.get(name, name))
    except metadata.PackageNotFoundError:
        version = "? (no metadata)"
    return f"{name} {version}  ({spec.origin})"


def env_report(require_cuda: bool) -> int:
    """Print the Python, the packages (version and where each comes from) and the GPU; 3 if LightningCLI's
    jsonargparse is missing, or CUDA is required and missing (or without bf16): no run could work then."""
    print(f"python {platform.python_version()} ({sys.executable}); {platform.platform()}; cpus {os.cpu_count()}")
    print(f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}")
    for name in REPORTED:
        print(_module_line(name))
    try:
        import wandb  # noqa: F401
        print(f"wandb: importable ({wandb.__file__}) -- the device has none")
    except ImportError as err:
        print(f"wandb: not importable ({err}), as on the device")
    import lightning_bninit

    print(f"lightning_bninit {lightning_bninit.__version__}  ({lightning_bninit.__file__})")
    try:  # what LightningCLI checks before it starts (lightning/pytorch/cli.py), without importing Lightning
        from lightning_utilities.core.imports import RequirementCache

        need = RequirementCache("jsonargparse[signatures]>=4.27.7")
        print(f"LightningCLI's jsonargparse[signatures]>=4.27.7: {bool(need) or need.message}")
    except ImportError as err:
        need = False
        print(f"lightning_utilities: {err}")
    if not need:
        print("error: main.py (LightningCLI) cannot start without jsonargparse[signatures]: carry its wheels")
        return 3
    import torch

    n_chains, missing = torch_api_check(Path(__file__).resolve().parents[2])
    print(f"torch API on the device path: {n_chains} torch.* names written in its files, "
          f"missing from torch {torch.__version__}: {missing or 'none'}")
    cuda = torch.cuda.is_available()
    print(f"torch cuda build {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}, cuda available {cuda}")
    bf16 = False
    if cuda:
        props = torch.cuda.get_device_properties(0)
        bf16 = torch.cuda.is_bf16_supported()
        print(f"gpu 0: {props.name}, {props.total_memory / 2**30:.1f} GiB, capability {props.major}.{props.minor}, "
              f"{props.multi_processor_count} SMs, bf16 {bf16}")
    if require_cuda and not (cuda and bf16):
        print("error: this step needs a CUDA GPU with bf16 (compare_gpu.yaml trains on `gpu` in bf16-mixed)")
        return 3
    return 0


#: The code a verdict run executes: the example, the plugin's CLI flag and callback, and ``bninit compare``/``report``.
DEVICE_PATH = ("examples/cifar10/main.py", "examples/cifar10/model.py", "examples/cifar10/data.py",
               "examples/cifar10/gpu_verdict.py", "lightning_bninit/*.py", "lightning_bninit/callbacks/*.py",
               "lightning_bninit/method/*.py", "lightning_bninit/monitoring/*.py", "lightning_bninit/experiments/*.py")


def torch_api_check(root: Path) -> tuple[int, list[str]]:
    """Every ``torch.<name>.<name>...`` chain written in the device path's files, and those this torch does not have."""
    import importlib
    import re

    import torch

    chains: set[str] = set()
    for pattern in DEVICE_PATH:
        for path in sorted(root.glob(pattern)):
            chains.update(re.findall(r"\btorch(?:\.[A-Za-z_]\w*)+", path.read_text()))
    missing = []
    for chain in sorted(chains):
        obj: Any = torch
        parts = chain.split(".")
        for i, part in enumerate(parts[1:], start=1):
            if hasattr(obj, part):
                obj = getattr(obj, part)
                continue
            try:
                obj = importlib.import_module(".".join(parts[: i + 1]))
            except ImportError:
                missing.append(chain)
                break
    return len(chains), missing


# --------------------------------------------------------------------------------------------------------------
# timing: phases of the script and every run
# --------------------------------------------------------------------------------------------------------------
def _read_tsv(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    return [line.split("\t") for line in path.read_text().splitlines() if line.strip()]


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text, text)


def timing(work: Path, results: Path, meta: dict[str, str]) -> dict[str, Any]:
    """``timing.json``: each phase's start and length (seconds from the script's start), the whole command up to
    the report written, and every run: its ``duration_s`` from compare and when its line appeared."""
    phases = {}
    for name, start_ms, end_ms, rc in _read_tsv(work / "phases.tsv"):
        phases[name] = {"start_s": round(int(start_ms) / 1000, 3), "seconds": round((int(end_ms) - int(start_ms)) /
                                                                                     1000, 3), "rc": int(rc)}
    appeared = {int(n): int(ms) / 1000 for n, ms in _read_tsv(work / "lines.tsv")}
    runs = []
    lines = results.read_text().splitlines() if results.is_file() else []
    for index, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        # the watcher polls once a second: a line is attributed to the first poll that saw the file that long
        seen = min((t for n, t in appeared.items() if n >= index), default=None)
        run = {"seed": row.get("seed"), "arm": row.get("arm"), "duration_s": row.get("duration_s"),
               "line_seen_at_s": seen, "launcher": (row.get("config") or {}).get("launcher")}
        if "error" in row:
            run["error"] = str(row["error"]).splitlines()[0][:300]
        else:
            run["test_acc"] = row.get("test_acc")
        runs.append(run)
    ok = [r for r in runs if "error" not in r]
    report = phases.get("report")
    out: dict[str, Any] = {
        **{k: _value(v) for k, v in meta.items()},
        "command_to_report_s": round(report["start_s"] + report["seconds"], 3) if report else None,
        "phases": phases,
        "runs_finished": len(ok),
        "runs_failed": len(runs) - len(ok),
        "run_seconds_sum": round(sum(r["duration_s"] or 0 for r in ok), 3),
        "runs": runs,
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("experiment")
    e.add_argument("base", type=Path)
    e.add_argument("out", type=Path)
    e.add_argument("extra", nargs=argparse.REMAINDER)
    v = sub.add_parser("env")
    v.add_argument("--require-cuda", action="store_true")
    t = sub.add_parser("timing")
    t.add_argument("--work", type=Path, required=True)
    t.add_argument("--results", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("meta", nargs="*", metavar="KEY=VALUE")
    a = ap.parse_args(argv)
    if a.cmd == "experiment":
        write_experiment(a.base, a.out, [x for x in a.extra if x != "--"])
        return 0
    if a.cmd == "env":
        return env_report(a.require_cuda)
    meta = dict(item.split("=", 1) for item in a.meta)
    a.out.write_text(json.dumps(timing(a.work, a.results, meta), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
