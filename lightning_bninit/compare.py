"""Paired-seed experiments: run every (seed, arm) pair of a LightningCLI script (``bninit compare``).

An *experiment file* (YAML) says what to run; paths in it are relative to the file::

    script: main.py               # the LightningCLI script (or `module: pkg.main` for `python -m`)
    config: base.yaml             # base LightningCLI config(s): a path or a list of paths
    args: [--trainer.max_epochs=10]   # overrides shared by every arm (optional)
    metrics: [test_acc]           # test metrics every run must log (optional; all are recorded)
    seeds: 1-15                   # default for --seeds (optional)
    arms:                         # named sets of CLI overrides (optional)
      c10: [--bninit=true, --bninit.scale_lr_divisor=10]
    derive_seed: true             # seed_everything = MD5-derived seed, as the official code (default)
    checkpoint: best              # test the ModelCheckpoint best (default) or `last` (end of fit)
    test: separate                # `in_fit`: the script tests right after fit, in the same process
    keep_checkpoints: false       # delete a run's *.ckpt once it has been tested (default)
    timeout_s: null               # per phase (fit, test)
    env: {}                       # extra environment variables for the runs
    report: {metric: test_acc}    # print `bninit report` at the end (optional; also --report-metric)

Two arms are built in, so a script built on :class:`lightning_bninit.cli.BNInitCLI` needs none:

* ``standard``: ``--bninit=true --bninit.init_scale=1.0 --bninit.scale_lr_divisor=1.0`` (the
  baseline, gamma = 1 and c = 1, with the same input-norm and weight-decay treatment as the method);
* ``bninit``: ``--bninit=true`` (the callback's defaults: gamma = 0.1, c = 100).

Each pair runs as two child processes sharing a run directory: ``<script> fit`` and then
``<script> test --ckpt_path=<checkpoint>``, with the arm's overrides,
``--seed_everything=<seed>`` and a :class:`~lightning_bninit.recorder.RunRecorder` callback that
writes the results to JSON files. When both succeed the parent appends one line to the results
file: ``{"seed", "arm", <every test metric>, "duration_s", "config"}``; a failing run appends
``{"seed", "arm", "error", "duration_s", "config"}`` instead and the others go on.

With ``test: in_fit`` there is one child process per pair: the script itself tests the final weights
right after ``fit`` (say through an option of its own, such as the CIFAR-10 example's
``--test_after_fit=true``, given in ``args``), and the recorder keeps those test metrics apart from
the fit results. That saves a process start, a data load and a checkpoint per pair, which is
what dominates short GPU runs.

The parent is the only writer of the results file. A line is written with one ``os.write`` of the
whole line under an exclusive ``flock``, then ``fsync``-ed, so an interrupted compare leaves
complete lines only. Running the same command again skips the (seed, arm) pairs that already have
a finished line; failed pairs are run again.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lightning_bninit.seeding import derive_seed, parse_seeds

try:  # POSIX advisory lock; a second compare on the same file then waits instead of interleaving
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "BUILTIN_ARMS",
    "ExperimentError",
    "Experiment",
    "ResultsFile",
    "load_experiment",
    "run_compare",
]

#: Arms available without defining them in the experiment file.
BUILTIN_ARMS: dict[str, list[str]] = {
    "standard": ["--bninit=true", "--bninit.init_scale=1.0", "--bninit.scale_lr_divisor=1.0"],
    "bninit": ["--bninit=true"],
}
_RESERVED = {"seed", "arm", "config", "duration_s", "error", "derived_seed", "status"}
_KNOWN_KEYS = {
    "script", "module", "config", "args", "metrics", "seeds", "arms", "derive_seed", "checkpoint",
    "keep_checkpoints", "timeout_s", "env", "report", "default_arms", "test",
}


class ExperimentError(ValueError):
    """Invalid experiment file or compare options; the message is meant for the user as is."""


@dataclass
class Experiment:
    """A parsed experiment file (see the module docstring for the format)."""

    path: Path
    command: list[str]
    configs: list[Path]
    args: list[str] = field(default_factory=list)
    arms: dict[str, list[str]] = field(default_factory=lambda: dict(BUILTIN_ARMS))
    metrics: list[str] = field(default_factory=list)
    seeds: list[int] | None = None
    default_arms: list[str] = field(default_factory=lambda: ["standard", "bninit"])
    derive_seed: bool = True
    checkpoint: str = "best"
    keep_checkpoints: bool = False
    test_in_fit: bool = False
    timeout_s: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def _as_args(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list) and all(isinstance(v, (str, int, float, bool)) for v in value):
        return [str(v) for v in value]
    raise ExperimentError(f"{what} must be a list of CLI arguments or one string, got {value!r}")


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file.

    Args:
        path: the YAML file.

    Returns:
        The experiment with paths resolved relative to the file.

    Raises:
        ExperimentError: missing file, invalid YAML, unknown keys, missing script or config, bad
            values; the message names the key and what is allowed.
    """
    import yaml

    path = Path(path).resolve()
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ExperimentError(f"experiment file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ExperimentError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ExperimentError(f"{path}: expected a mapping with at least 'script' or 'module'")
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        raise ExperimentError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(_KNOWN_KEYS)}")
    base = path.parent
    if bool(raw.get("script")) == bool(raw.get("module")):
        raise ExperimentError(f"{path}: set exactly one of 'script' (a file) or 'module' (run with python -m)")
    if raw.get("script"):
        script = (base / str(raw["script"])).resolve()
        if not script.is_file():
            raise ExperimentError(f"{path}: script not found: {script}")
        command = [sys.executable, str(script)]
    else:
        command = [sys.executable, "-m", str(raw["module"])]
    configs_raw = raw.get("config") or []
    configs_raw = [configs_raw] if isinstance(configs_raw, str) else configs_raw
    if not isinstance(configs_raw, list):
        raise ExperimentError(f"{path}: 'config' must be a path or a list of paths, got {configs_raw!r}")
    configs = []
    for item in configs_raw:
        cfg = (base / str(item)).resolve()
        if not cfg.is_file():
            raise ExperimentError(f"{path}: config file not found: {cfg}")
        configs.append(cfg)
    arms = dict(BUILTIN_ARMS)
    arms_raw = raw.get("arms") or {}
    if not isinstance(arms_raw, dict):
        raise ExperimentError(f"{path}: 'arms' must map arm names to lists of CLI overrides")
    for name, overrides in arms_raw.items():
        if not isinstance(name, str) or not name or "," in name:
            raise ExperimentError(f"{path}: invalid arm name {name!r} (non-empty, no commas)")
        arms[name] = _as_args(overrides, f"arm '{name}'")
    metrics = raw.get("metrics") or []
    metrics = [metrics] if isinstance(metrics, str) else metrics
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise ExperimentError(f"{path}: 'metrics' must be a list of metric names, got {metrics!r}")
    try:
        seeds = parse_seeds(raw["seeds"]) if raw.get("seeds") is not None else None
    except ValueError as err:
        raise ExperimentError(f"{path}: {err}") from None
    checkpoint = raw.get("checkpoint", "best")
    if checkpoint not in ("best", "last"):
        raise ExperimentError(f"{path}: 'checkpoint' must be 'best' or 'last', got {checkpoint!r}")
    test_mode = raw.get("test", "separate")
    if test_mode not in ("separate", "in_fit"):
        raise ExperimentError(f"{path}: 'test' must be 'separate' or 'in_fit', got {test_mode!r}")
    env = raw.get("env") or {}
    if not isinstance(env, dict):
        raise ExperimentError(f"{path}: 'env' must be a mapping of environment variables")
    report = raw.get("report") or {}
    if not isinstance(report, dict):
        raise ExperimentError(f"{path}: 'report' must be a mapping like {{metric: test_acc}}")
    timeout = raw.get("timeout_s")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ExperimentError(f"{path}: 'timeout_s' must be a positive number of seconds, got {timeout!r}")
    default_arms = raw.get("default_arms") or ["standard", "bninit"]
    default_arms = default_arms.split(",") if isinstance(default_arms, str) else list(default_arms)
    return Experiment(
        path=path,
        command=command,
        configs=configs,
        args=_as_args(raw.get("args"), "'args'"),
        arms=arms,
        metrics=list(metrics),
        seeds=seeds,
        default_arms=default_arms,
        derive_seed=bool(raw.get("derive_seed", True)),
        checkpoint=checkpoint,
        keep_checkpoints=bool(raw.get("keep_checkpoints", False)),
        test_in_fit=test_mode == "in_fit",
        timeout_s=float(timeout) if timeout is not None else None,
        env={str(k): str(v) for k, v in env.items()},
        report=report,
    )


class ResultsFile:
    """Append-only JSONL results file with a single writer per process.

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


def _tail(path: Path, max_chars: int = 2000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-max_chars:].strip()


def _gpu_ids() -> list[str]:
    """GPUs visible to this process, without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


def _package_pythonpath() -> list[str]:
    # Make the children import the same lightning_bninit as this process, installed or not.
    import lightning_bninit

    return [str(Path(p).resolve().parent) for p in lightning_bninit.__path__]


class _Runner:
    """Runs trials, tracking live child processes so they can be stopped on interrupt."""

    def __init__(self, exp: Experiment, runs_dir: Path, results: ResultsFile, base_env: dict[str, str]) -> None:
        self.exp = exp
        self.runs_dir = runs_dir
        self.results = results
        self.base_env = base_env
        self.stopping = threading.Event()
        self._procs: set[subprocess.Popen] = set()
        self._procs_lock = threading.Lock()

    def _phase(self, cmd: list[str], log: Path, env: dict[str, str]) -> tuple[int | None, str]:
        if self.stopping.is_set():
            return None, "interrupted"
        (log.parent / (log.stem + ".cmd")).write_text(shlex.join(cmd) + "\n")  # to rerun by hand
        with open(log, "wb") as fh:
            # A new session: Ctrl-C reaches only the parent, which then stops the children itself.
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            with self._procs_lock:
                self._procs.add(proc)
            try:
                return proc.wait(timeout=self.exp.timeout_s), ""
            except subprocess.TimeoutExpired:
                self._kill(proc)
                return None, f"timed out after {self.exp.timeout_s:g} s"
            finally:
                with self._procs_lock:
                    self._procs.discard(proc)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if proc.poll() is not None:
                return
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        self.stopping.set()
        with self._procs_lock:
            procs = list(self._procs)
        for proc in procs:
            self._kill(proc)

    def commands(self, seed: int, arm: str, run_dir: Path) -> tuple[list[str], list[str], int]:
        """The fit and test command lines of one trial (the test checkpoint is appended later)."""
        exp = self.exp
        seed_value = derive_seed(seed) if exp.derive_seed else seed
        common: list[str] = []
        for cfg in exp.configs:
            common += ["--config", str(cfg)]
        common += exp.args + exp.arms[arm] + [f"--seed_everything={seed_value}"]
        recorder = "--trainer.callbacks+=lightning_bninit.recorder.RunRecorder"
        fit = exp.command + ["fit"] + common + [
            f"--trainer.default_root_dir={run_dir / 'fit'}",
            recorder,
            f"--trainer.callbacks.path={run_dir / 'fit_result.json'}",
            f"--trainer.callbacks.save_last={str(exp.checkpoint == 'last' and not exp.test_in_fit).lower()}",
        ]
        if exp.test_in_fit:
            fit.append(f"--trainer.callbacks.test_path={run_dir / 'test_result.json'}")
        test = exp.command + ["test"] + common + [
            f"--trainer.default_root_dir={run_dir / 'test'}",
            recorder,
            f"--trainer.callbacks.path={run_dir / 'test_result.json'}",
        ]
        return fit, test, seed_value

    def run_trial(self, seed: int, arm: str, slot: int, gpus: list[str]) -> dict[str, Any] | None:
        """Run fit then test for one pair; returns the results line (``None`` when interrupted)."""
        exp = self.exp
        run_dir = (self.runs_dir / arm / f"seed_{seed}").resolve()
        if run_dir.exists():  # leftovers of a failed or interrupted attempt
            shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        fit_cmd, test_cmd, seed_value = self.commands(seed, arm, run_dir)
        env = dict(self.base_env)
        if len(gpus) > 1:  # several GPUs: each worker slot gets its own
            env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
        config: dict[str, Any] = {
            "experiment": str(exp.path),
            "seed_everything": seed_value,
            "derive_seed": exp.derive_seed,
            "overrides": exp.arms[arm],
            "args": exp.args,
            "base_config": [str(c) for c in exp.configs],
            "command": exp.command[1:],
            "checkpoint": exp.checkpoint,
            "run_dir": str(run_dir),
        }
        if "CUDA_VISIBLE_DEVICES" in env:
            config["cuda_visible_devices"] = env["CUDA_VISIBLE_DEVICES"]
        start = time.monotonic()

        def failure(message: str) -> dict[str, Any] | None:
            if self.stopping.is_set():
                return None
            return {"seed": seed, "arm": arm, "error": message,
                    "duration_s": round(time.monotonic() - start, 3), "config": config}

        rc, why = self._phase(fit_cmd, run_dir / "fit.log", env)
        fit_result_path = run_dir / "fit_result.json"
        if rc != 0 or not fit_result_path.exists():
            reason = why or (f"exit code {rc}" if rc != 0 else "no fit result written (fit did not finish)")
            return failure(f"fit failed ({reason}); log {run_dir / 'fit.log'}:\n{_tail(run_dir / 'fit.log')}")
        fit_result = json.loads(fit_result_path.read_text())
        config["fit_metrics"] = fit_result.get("metrics", {})
        config["fit_epochs"], config["fit_steps"] = fit_result.get("current_epoch"), fit_result.get("global_step")
        self._add_resolved_config(config, fit_result, run_dir)
        if exp.test_in_fit:
            return self._record(seed, arm, run_dir, start, config, failure, why="the script ran no test after fit "
                                "(test: in_fit needs the script to test right after fit, e.g. --test_after_fit=true)")
        ckpt = fit_result.get("last_model_path") if exp.checkpoint == "last" else fit_result.get("best_model_path")
        ckpt = ckpt or fit_result.get("last_model_path")
        if not ckpt:
            return failure(
                "fit saved no checkpoint to test: enable a ModelCheckpoint in the trainer config "
                "or set `checkpoint: last` in the experiment file"
            )
        config["ckpt_path"] = ckpt
        rc, why = self._phase(test_cmd + [f"--ckpt_path={ckpt}"], run_dir / "test.log", env)
        if rc != 0:
            return failure(f"test failed ({why or f'exit code {rc}'}); log {run_dir / 'test.log'}:\n"
                           f"{_tail(run_dir / 'test.log')}")
        if not exp.keep_checkpoints and not Path(ckpt).is_relative_to(run_dir):
            Path(ckpt).unlink(missing_ok=True)
        return self._record(seed, arm, run_dir, start, config, failure, why="no test result written")

    @staticmethod
    def _add_resolved_config(config: dict[str, Any], fit_result: dict[str, Any], run_dir: Path) -> None:
        saved_cfg = Path(fit_result.get("log_dir") or run_dir / "fit") / "config.yaml"
        if saved_cfg.is_file():  # the fully resolved LightningCLI config of this run
            import yaml

            try:
                config["resolved"] = yaml.safe_load(saved_cfg.read_text())
            except yaml.YAMLError:
                config["resolved_path"] = str(saved_cfg)

    def _record(
        self, seed: int, arm: str, run_dir: Path, start: float, config: dict[str, Any],
        failure: Callable[[str], dict[str, Any] | None], why: str,
    ) -> dict[str, Any] | None:
        """The results line of a finished pair, from its test results file."""
        test_result_path = run_dir / "test_result.json"
        log = run_dir / ("fit.log" if self.exp.test_in_fit else "test.log")
        if not test_result_path.exists():
            return failure(f"test failed ({why}); log {log}:\n{_tail(log)}")
        metrics = json.loads(test_result_path.read_text()).get("metrics", {})
        missing = [m for m in self.exp.metrics if m not in metrics]
        if missing:
            return failure(f"test did not log {missing}; it logged {sorted(metrics)}")
        if not self.exp.keep_checkpoints:
            for path in run_dir.rglob("*.ckpt"):
                path.unlink(missing_ok=True)
        record: dict[str, Any] = {"seed": seed, "arm": arm}
        for name, value in metrics.items():
            record[name if name not in _RESERVED else f"metric_{name}"] = value
        record["duration_s"] = round(time.monotonic() - start, 3)
        record["config"] = config
        return record


def run_compare(
    exp: Experiment,
    seeds: list[int],
    arms: list[str],
    out: str | Path,
    *,
    parallel: int = 1,
    runs_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Run every missing (seed, arm) pair and append its line to ``out``.

    Args:
        exp: from :func:`load_experiment`.
        seeds: the seeds, e.g. from :func:`~lightning_bninit.seeding.parse_seeds`.
        arms: names of arms of ``exp``.
        out: the JSONL results file (appended to; finished pairs in it are skipped).
        parallel: trials at once. With several GPUs each worker gets its own through
            ``CUDA_VISIBLE_DEVICES``; on one GPU they share it; on CPU each run gets
            ``OMP_NUM_THREADS = cores // parallel`` unless set.
        runs_dir: where run directories go (default: ``<out without suffix>_runs``).
        progress: show a progress bar with runs done / total and the time left.
        log: where to send one-line messages (default: stderr).

    Returns:
        Counts: ``total``, ``skipped`` (already finished), ``ok``, ``failed``.

    Raises:
        ExperimentError: unknown arm, bad ``parallel``, no seeds.
        KeyboardInterrupt: after stopping the running children; finished lines are kept.
    """
    unknown = [a for a in arms if a not in exp.arms]
    if unknown:
        raise ExperimentError(f"unknown arm(s) {unknown}; defined arms: {', '.join(exp.arms)}")
    if not arms:
        raise ExperimentError("no arms given; e.g. --arms standard,bninit")
    if not seeds:
        raise ExperimentError(f"no seeds: pass --seeds (e.g. 1-15) or set 'seeds:' in {exp.path}")
    if parallel < 1:
        raise ExperimentError(f"--parallel must be >= 1, got {parallel}")
    from rich.console import Console

    console = Console(stderr=True)
    emit = log or (lambda msg: console.print(msg, markup=False, highlight=False, soft_wrap=True))
    out = Path(out)
    results = ResultsFile(out)
    warning = results.repair_tail()
    if warning:
        emit(f"warning: {warning}")
    done = results.finished()
    pairs = [(s, a) for s in seeds for a in arms]  # seed-major: partial results pair up early
    todo = [p for p in pairs if p not in done]
    for (seed, arm), line in done.items():
        if (seed, arm) in pairs and line.get("config", {}).get("overrides") not in (None, exp.arms[arm]):
            emit(f"warning: finished run seed {seed} arm '{arm}' in {out} used different overrides "
                 f"{line['config']['overrides']} than now {exp.arms[arm]}; it is kept, not rerun")
    counts = {"total": len(pairs), "skipped": len(pairs) - len(todo), "ok": 0, "failed": 0}
    if counts["skipped"]:
        emit(f"{counts['skipped']} of {len(pairs)} runs already finished in {out}; skipping them")
    if not todo:
        return counts

    env = dict(os.environ)
    env.update(exp.env)
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["PYTHONPATH"] = os.pathsep.join(_package_pythonpath() + [p for p in [env.get("PYTHONPATH")] if p])
    gpus = _gpu_ids()
    if parallel > 1 and "OMP_NUM_THREADS" not in env and not gpus:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))  # avoid oversubscription
    runner = _Runner(exp, Path(runs_dir) if runs_dir else out.with_name(out.stem + "_runs"), results, env)
    slots: queue.Queue[int] = queue.Queue()
    for i in range(parallel):
        slots.put(i)

    def job(seed: int, arm: str) -> dict[str, Any] | None:
        slot = slots.get()
        try:
            if runner.stopping.is_set():
                return None
            record = runner.run_trial(seed, arm, slot, gpus)
            if record is not None and not runner.stopping.is_set():
                results.append(record)
            return record
        finally:
            slots.put(slot)

    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    bar = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("runs"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                   console=console, disable=not progress)
    pool = ThreadPoolExecutor(max_workers=parallel)
    try:
        with bar:
            task = bar.add_task("compare", total=len(todo))
            futures: dict[Future, tuple[int, str]] = {pool.submit(job, s, a): (s, a) for s, a in todo}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in finished:
                    seed, arm = futures[fut]
                    try:
                        record = fut.result()
                    except Exception as err:  # a bug in the runner itself: record it, keep going
                        record = {"seed": seed, "arm": arm, "error": f"compare internal error: {err!r}",
                                  "duration_s": 0.0, "config": {}}
                        results.append(record)
                    bar.advance(task)
                    if record is None:
                        continue
                    if "error" in record:
                        counts["failed"] += 1
                        first = record["error"].splitlines()[0]
                        bar.console.print(f"FAILED seed {seed} {arm}: {first}", markup=False, highlight=False, soft_wrap=True)
                    else:
                        counts["ok"] += 1
                        shown = ", ".join(f"{m}={record[m]:.4f}" for m in (exp.metrics or [])
                                          if isinstance(record.get(m), float))
                        bar.console.print(f"done seed {seed} {arm} ({record['duration_s']:.1f} s) {shown}",
                                          markup=False, highlight=False, soft_wrap=True)
    except KeyboardInterrupt:
        runner.stop_all()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return counts
