"""``bninit compare``: run every missing (seed, arm) pair of an experiment and append one results line per run.

The parent is the only writer of the results file (:class:`ResultsFile`); running the same command again skips the
pairs that already have a finished line, and reruns failed ones. Trials run in worker threads that each wait on
their child processes (:mod:`~lightning_bninit.experiments.trial`), started by a launcher
(:mod:`~lightning_bninit.experiments.launchers`).
"""

from __future__ import annotations

import os
import queue
import subprocess
from collections.abc import Callable
from contextlib import closing
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_bninit import _extras
from lightning_bninit.experiments.launchers import (LAUNCHERS, ForkLauncher, Launcher, SubprocessLauncher,
                                                    resolve_launcher)
from lightning_bninit.experiments.results_file import ResultsFile
from lightning_bninit.experiments.spec import Experiment, ExperimentError
from lightning_bninit.experiments.trial import plan_trial, run_trial, trial_env

__all__ = ["run_compare"]

Pair = tuple[int, str]


@dataclass
class _Plan:
    pairs: list[Pair]
    todo: list[Pair]
    warnings: list[str] = field(default_factory=list)


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
    launcher: str | None = None,
    address: str | None = None,
) -> dict[str, int]:
    """Run every missing (seed, arm) pair and append its line to ``out``.

    Args:
        exp: from :func:`~lightning_bninit.experiments.spec.load_experiment`.
        seeds: the seeds, e.g. from :func:`~lightning_bninit.experiments.seeding.parse_seeds`.
        arms: names of arms of ``exp``.
        out: the JSONL results file (appended to; finished pairs in it are skipped).
        parallel: trials at once. With several GPUs each worker gets its own through
            ``CUDA_VISIBLE_DEVICES``; on one GPU they share it; on CPU each run gets
            ``OMP_NUM_THREADS = cores // parallel`` unless set.
        runs_dir: where run directories go (default: ``<out without suffix>_runs``).
        progress: show a progress bar with runs done / total and the time left.
        log: where to send one-line messages (default: stderr).
        launcher: one of :data:`~lightning_bninit.experiments.launchers.LAUNCHERS` (default: the experiment's
            ``launcher``).
        address: with ``launcher="ray"``, the Ray cluster (default: ``ray.address`` of the experiment; none: a local
            Ray on 127.0.0.1).

    Returns:
        Counts: ``total``, ``skipped`` (already finished), ``ok``, ``failed``.

    Raises:
        ExperimentError: unknown arm, bad ``parallel``, no seeds, unknown or unavailable launcher.
        KeyboardInterrupt: after stopping the running children; finished lines are kept.
    """
    _validate(exp, seeds, arms, parallel)
    launcher = _launcher_choice(launcher or exp.launcher, address)
    rich_console = _extras.require("rich.console", "bninit compare")
    console = rich_console.Console(stderr=True)
    emit = log or (lambda msg: console.print(msg, markup=False, highlight=False, soft_wrap=True))
    out = Path(out)
    results = ResultsFile(out)
    plan = _plan(exp, seeds, arms, results)
    for warning in plan.warnings:
        emit(f"warning: {warning}")
    counts = {"total": len(plan.pairs), "skipped": len(plan.pairs) - len(plan.todo), "ok": 0, "failed": 0}
    if counts["skipped"]:
        emit(f"{counts['skipped']} of {len(plan.pairs)} runs already finished in {out}; skipping them")
    if plan.todo:
        runs = Path(runs_dir) if runs_dir else out.with_name(out.stem + "_runs")
        _execute(exp, plan.todo, runs, results, _Options(parallel, launcher, progress, address), counts, console)
    return counts


@dataclass
class _Options:
    parallel: int
    launcher: str
    progress: bool
    address: str | None = None


def _validate(exp: Experiment, seeds: list[int], arms: list[str], parallel: int) -> None:
    exp.check_arms(arms)
    if not arms:
        raise ExperimentError("no arms given; e.g. --arms standard,bninit")
    if not seeds:
        raise ExperimentError(f"no seeds: pass --seeds (e.g. 1-15) or set 'seeds:' in {exp.path}")
    if parallel < 1:
        raise ExperimentError(f"--parallel must be >= 1, got {parallel}")


def _launcher_choice(launcher: str, address: str | None) -> str:
    if address is not None and launcher != "ray":
        raise ExperimentError(f"--address {address} is for the Ray launcher; add --launcher ray (or set "
                              "`launcher: ray` in the experiment file)")
    if launcher not in LAUNCHERS:
        raise ExperimentError(f"launcher must be one of {', '.join(map(repr, LAUNCHERS))}, got {launcher!r}; "
                              "e.g. --launcher subprocess")
    return launcher


def _plan(exp: Experiment, seeds: list[int], arms: list[str], results: ResultsFile) -> _Plan:
    """The pairs to run (seed-major, so partial results pair up early), and warnings about the file."""
    warnings = [w for w in [results.repair_tail()] if w]
    done = results.finished()
    pairs = [(s, a) for s in seeds for a in arms]
    for (seed, arm), line in done.items():
        if (seed, arm) in pairs and line.get("config", {}).get("overrides") not in (None, exp.arms[arm]):
            warnings.append(f"finished run seed {seed} arm '{arm}' in {results.path} used different overrides "
                            f"{line['config']['overrides']} than now {exp.arms[arm]}; it is kept, not rerun")
    return _Plan(pairs=pairs, todo=[p for p in pairs if p not in done], warnings=warnings)


def child_env(exp: Experiment, parallel: int, gpus: list[str]) -> dict[str, str]:
    """The environment of the trials: the user's, the experiment's ``env``, this package on the path."""
    env = dict(os.environ)
    env.update(exp.env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["PYTHONPATH"] = os.pathsep.join(_package_pythonpath() + [p for p in [env.get("PYTHONPATH")] if p])
    if parallel > 1 and "OMP_NUM_THREADS" not in env and not gpus:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))  # avoid oversubscription
    return env


def _package_pythonpath() -> list[str]:
    # Make the children import the same lightning_bninit as this process, installed or not.
    import lightning_bninit

    return [str(Path(p).resolve().parent) for p in lightning_bninit.__path__]


def gpu_ids() -> list[str]:
    """GPUs visible to this process, without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


def _start_launcher(exp: Experiment, choice: str, env: dict[str, str], gpus: list[str], parallel: int,
                    runs_dir: Path) -> tuple[str, Launcher]:
    try:
        name = resolve_launcher(choice, gpus)
    except ValueError as err:
        raise ExperimentError(str(err)) from None
    if name == "fork":
        return name, ForkLauncher(exp.timeout_s, env, runs_dir / ".fork_server", exp.preload, exp.preload_defaults)
    return name, SubprocessLauncher(exp.timeout_s)


def _execute(exp: Experiment, todo: list[Pair], runs_dir: Path, results: ResultsFile, options: _Options,
             counts: dict[str, int], console: Any) -> None:
    """Run the pairs on ``parallel`` worker slots; append each line as it finishes; stop children on Ctrl-C."""
    if options.launcher == "ray":
        _execute_on_ray(exp, todo, runs_dir, results, options, counts, console)
        return
    gpus = gpu_ids()
    env = child_env(exp, options.parallel, gpus)
    launcher, children = _start_launcher(exp, options.launcher, env, gpus, options.parallel, runs_dir)
    slots: queue.Queue[int] = queue.Queue()
    for i in range(options.parallel):
        slots.put(i)

    def job(seed: int, arm: str) -> dict[str, Any] | None:
        slot = slots.get()
        try:
            if children.stopping.is_set():
                return None
            env_of_trial = trial_env(exp, seed, arm, env)
            if len(gpus) > 1:  # several GPUs: each worker slot gets its own
                env_of_trial["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
            record = run_trial(exp, plan_trial(exp, seed, arm, runs_dir), children, env_of_trial)
            if record is not None and not children.stopping.is_set():
                record["config"]["launcher"] = launcher
                results.append(record)
            return record
        finally:
            slots.put(slot)

    try:
        _run_jobs(job, todo, options, results, exp, counts, console, children)
    finally:
        children.close()


def _run_jobs(job: Callable[[int, str], dict[str, Any] | None], todo: list[Pair], options: _Options,
              results: ResultsFile, exp: Experiment, counts: dict[str, int], console: Any, children: Launcher) -> None:
    pool = ThreadPoolExecutor(max_workers=options.parallel)
    try:
        with _progress_bar(console, options.progress) as bar:
            task = bar.add_task("compare", total=len(todo))
            futures: dict[Future, Pair] = {pool.submit(job, s, a): (s, a) for s, a in todo}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in finished:
                    _report_done(fut, futures[fut], results, exp, counts, bar)
                    bar.advance(task)
    except KeyboardInterrupt:
        children.stop_all()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _execute_on_ray(exp: Experiment, todo: list[Pair], runs_dir: Path, results: ResultsFile, options: _Options,
                    counts: dict[str, int], console: Any) -> None:
    """Each pair a Ray task (:mod:`~lightning_bninit.experiments.ray_backend`); Ray's resources, not ``parallel``,
    decide how many run at once. The lines are appended here, by the driver, as the tasks end."""
    from lightning_bninit.experiments import ray_backend

    def warn(text: str) -> None:
        console.print(f"warning: {text}", markup=False, highlight=False, soft_wrap=True)

    with _progress_bar(console, options.progress) as bar, \
            closing(ray_backend.run_trials(exp, todo, runs_dir.resolve(), options.address, warn)) as trials:
        task = bar.add_task("compare", total=len(todo))
        for pair, record in trials:
            if record is not None:
                record["config"]["launcher"] = "ray"
                results.append(record)
                _report_record(record, pair, exp, counts, bar)
            bar.advance(task)


def _progress_bar(console: Any, progress: bool) -> Any:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("runs"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                    console=console, disable=not progress)


def _report_done(fut: Future, pair: Pair, results: ResultsFile, exp: Experiment, counts: dict[str, int],
                 bar: Any) -> None:
    seed, arm = pair
    try:
        record = fut.result()
    except Exception as err:  # a bug in the runner itself: record it, keep going
        record = {"seed": seed, "arm": arm, "error": f"compare internal error: {err!r}", "duration_s": 0.0,
                  "config": {}}
        results.append(record)
    if record is not None:
        _report_record(record, pair, exp, counts, bar)


def _report_record(record: dict[str, Any], pair: Pair, exp: Experiment, counts: dict[str, int], bar: Any) -> None:
    seed, arm = pair

    def say(text: str) -> None:
        bar.console.print(text, markup=False, highlight=False, soft_wrap=True)

    if "error" in record:
        counts["failed"] += 1
        say(f"FAILED seed {seed} {arm}: {record['error'].splitlines()[0]}")
        return
    counts["ok"] += 1
    shown = ", ".join(f"{m}={record[m]:.4f}" for m in exp.metrics if isinstance(record.get(m), float))
    say(f"done seed {seed} {arm} ({record['duration_s']:.1f} s) {shown}")
