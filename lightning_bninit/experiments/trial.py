"""One trial of ``bninit compare``: a (seed, arm) pair run as child processes, turned into one results line.

A trial is ``<script> fit`` then ``<script> test --ckpt_path=<checkpoint>`` (or, with ``test: in_fit``, one ``fit``
process that tests right after), with the arm's overrides, ``--seed_everything`` and a
:class:`~lightning_bninit.callbacks.run_recorder.RunRecorder` that writes the outcome to JSON files in the run folder
and keeps every checkpoint of the trial in its run folder. A launcher
(:mod:`~lightning_bninit.experiments.launchers`) starts the processes.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_bninit.experiments.launchers import Launcher
from lightning_bninit.experiments.results import RESERVED_KEYS
from lightning_bninit.experiments.seeding import derive_seed
from lightning_bninit.experiments.spec import Experiment

RECORDER = "lightning_bninit.callbacks.run_recorder.RunRecorder"


class TrialFailed(Exception):
    """A trial did not produce its results; the message says why and where its log is."""


@dataclass
class TrialPlan:
    """The command lines of one trial."""

    seed: int
    arm: str
    run_dir: Path
    seed_value: int
    fit: list[str]
    test: list[str]


def plan_trial(exp: Experiment, seed: int, arm: str, runs_dir: Path) -> TrialPlan:
    """The fit and test command lines of one trial (the test checkpoint is appended when fit has made it)."""
    run_dir = (runs_dir / arm / f"seed_{seed}").resolve()
    seed_value = derive_seed(seed) if exp.derive_seed else seed
    common: list[str] = []
    for cfg in exp.configs:
        common += ["--config", str(cfg)]
    common += exp.args + exp.arms[arm] + [f"--seed_everything={seed_value}"]
    fit = exp.command + ["fit"] + common + [
        f"--trainer.default_root_dir={run_dir / 'fit'}",
        f"--trainer.callbacks+={RECORDER}",
        f"--trainer.callbacks.path={run_dir / 'fit_result.json'}",
        f"--trainer.callbacks.save_last={str(exp.checkpoint == 'last' and not exp.test_in_fit).lower()}",
        f"--trainer.callbacks.checkpoint_dir={run_dir / 'checkpoints'}",
    ]
    if exp.test_in_fit:
        fit.append(f"--trainer.callbacks.test_path={run_dir / 'test_result.json'}")
    test = exp.command + ["test"] + common + [
        f"--trainer.default_root_dir={run_dir / 'test'}",
        f"--trainer.callbacks+={RECORDER}",
        f"--trainer.callbacks.path={run_dir / 'test_result.json'}",
    ]
    return TrialPlan(seed, arm, run_dir, seed_value, fit, test)


def tail(path: Path, max_chars: int = 2000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-max_chars:].strip()


def trial_env(exp: Experiment, seed: int, arm: str, env: dict[str, str]) -> dict[str, str]:
    """``env`` plus W&B's grouping of the run, each variable only where the user has not set it: group = the
    experiment's name, job type = the arm, run name = arm and seed, tags. ``WANDB_MODE`` is left as it is."""
    out = dict(env)
    for key, value in (("WANDB_RUN_GROUP", exp.name), ("WANDB_JOB_TYPE", arm), ("WANDB_NAME", f"{arm}-seed{seed}"),
                       ("WANDB_TAGS", f"bninit-compare,{arm}")):
        out.setdefault(key, value)
    return out


def run_trial(exp: Experiment, plan: TrialPlan, children: Launcher, env: dict[str, str]) -> dict[str, Any] | None:
    """Run one trial and return its results line: metrics, or ``error`` (``None`` when interrupted)."""
    start = time.monotonic()
    if plan.run_dir.exists():  # leftovers of a failed or interrupted attempt
        shutil.rmtree(plan.run_dir, ignore_errors=True)
    plan.run_dir.mkdir(parents=True)
    config = _config(exp, plan, env)
    try:
        fit_result = _fit(plan, children, env, config)
        if not exp.test_in_fit:
            _test(exp, plan, children, env, config, fit_result)
        record = _record(exp, plan, config)
    except TrialFailed as err:
        if children.stopping.is_set():
            return None
        record = {"seed": plan.seed, "arm": plan.arm, "error": str(err), "config": config}
    record["duration_s"] = round(time.monotonic() - start, 3)
    record["config"] = record.pop("config")  # keep `config` the last key, as it is long
    return record


def _config(exp: Experiment, plan: TrialPlan, env: dict[str, str]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "experiment": str(exp.path),
        "seed_everything": plan.seed_value,
        "derive_seed": exp.derive_seed,
        "overrides": exp.arms[plan.arm],
        "args": exp.args,
        "base_config": [str(c) for c in exp.configs],
        "command": exp.command[1:],
        "checkpoint": exp.checkpoint,
        "run_dir": str(plan.run_dir),
    }
    if plan.arm in exp.grid_values:  # where a report places the arm in a sweep
        config["grid"] = exp.grid_values[plan.arm]
    if "CUDA_VISIBLE_DEVICES" in env:
        config["cuda_visible_devices"] = env["CUDA_VISIBLE_DEVICES"]
    return config


def _fit(plan: TrialPlan, children: Launcher, env: dict[str, str], config: dict[str, Any]) -> dict[str, Any]:
    log = plan.run_dir / "fit.log"
    rc, why = children.run(plan.fit, log, env)
    path = plan.run_dir / "fit_result.json"
    if rc != 0 or not path.exists():
        reason = why or (f"exit code {rc}" if rc != 0 else "no fit result written (fit did not finish)")
        raise TrialFailed(f"fit failed ({reason}); log {log}:\n{tail(log)}")
    fit_result = json.loads(path.read_text())
    config["fit_metrics"] = fit_result.get("metrics", {})
    config["fit_epochs"], config["fit_steps"] = fit_result.get("current_epoch"), fit_result.get("global_step")
    saved_cfg = Path(fit_result.get("log_dir") or plan.run_dir / "fit") / "config.yaml"
    if saved_cfg.is_file():  # the fully resolved LightningCLI config of this run
        import yaml

        try:
            config["resolved"] = yaml.safe_load(saved_cfg.read_text())
        except yaml.YAMLError:
            config["resolved_path"] = str(saved_cfg)
    return fit_result


def _test(exp: Experiment, plan: TrialPlan, children: Launcher, env: dict[str, str], config: dict[str, Any],
          fit_result: dict[str, Any]) -> None:
    ckpt = fit_result.get("last_model_path") if exp.checkpoint == "last" else fit_result.get("best_model_path")
    ckpt = ckpt or fit_result.get("last_model_path")
    if not ckpt:
        raise TrialFailed("fit saved no checkpoint to test: enable a ModelCheckpoint in the trainer config "
                          "or set `checkpoint: last` in the experiment file")
    if not Path(ckpt).resolve().is_relative_to(plan.run_dir):
        raise TrialFailed(f"the checkpoint to test, {ckpt}, is outside the trial's folder {plan.run_dir}, where "
                          "another trial could have written it; bninit compare keeps every ModelCheckpoint's files "
                          "in the trial's folder, so this one came from elsewhere")
    config["ckpt_path"] = ckpt
    log = plan.run_dir / "test.log"
    rc, why = children.run(plan.test + [f"--ckpt_path={ckpt}"], log, env)
    if rc != 0:
        raise TrialFailed(f"test failed ({why or f'exit code {rc}'}); log {log}:\n{tail(log)}")


def _record(exp: Experiment, plan: TrialPlan, config: dict[str, Any]) -> dict[str, Any]:
    """The results line of a finished trial, from its test results file."""
    path = plan.run_dir / "test_result.json"
    log = plan.run_dir / ("fit.log" if exp.test_in_fit else "test.log")
    if not path.exists():
        why = ("the script ran no test after fit (test: in_fit needs the script to test right after fit, e.g. "
               "--test_after_fit=true)") if exp.test_in_fit else "no test result written"
        raise TrialFailed(f"test failed ({why}); log {log}:\n{tail(log)}")
    metrics = json.loads(path.read_text()).get("metrics", {})
    missing = [m for m in exp.metrics if m not in metrics]
    if missing:
        raise TrialFailed(f"test did not log {missing}; it logged {sorted(metrics)}")
    if not exp.keep_checkpoints:  # only the trial's own files: nothing outside its run folder
        for ckpt in plan.run_dir.rglob("*.ckpt"):
            ckpt.unlink(missing_ok=True)
    record: dict[str, Any] = {"seed": plan.seed, "arm": plan.arm}
    for name, value in metrics.items():
        record[name if name not in RESERVED_KEYS else f"metric_{name}"] = value
    record["config"] = config
    return record
