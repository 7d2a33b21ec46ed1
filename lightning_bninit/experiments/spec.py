"""Experiment files of ``bninit compare``: read, validate, and turn into an :class:`Experiment`.

The format (paths relative to the file)::

    script: main.py               # the LightningCLI script (or `module: pkg.main` for `python -m`)
    config: base.yaml             # base LightningCLI config(s): a path or a list of paths
    args: [--trainer.max_epochs=10]   # overrides shared by every arm (optional)
    metrics: [test_acc]           # test metrics every run must log (optional; all are recorded)
    seeds: 1-15                   # default for --seeds (optional)
    arms:                         # named sets of CLI overrides (optional; `standard` and `bninit` are built in)
      c10: [--bninit=true, --bninit.scale_lr_divisor=10]
    grid:                         # a sweep over BNInit's options: one arm per combination (see grid.py)
      init_scale: [1.0, 0.3, 0.1]
      scale_lr_divisor: [1, 100]
    default_arms: [standard, bninit]  # arms run without --arms (default: these two, then the grid's arms)
    derive_seed: true             # seed_everything = MD5-derived seed, as the official code (default)
    checkpoint: best              # test the ModelCheckpoint best (default) or `last` (end of fit)
    test: separate                # `in_fit`: the script tests right after fit, in the same process
    keep_checkpoints: false       # delete a run's *.ckpt once it has been tested (default)
    timeout_s: null               # per phase (fit, test)
    env: {}                       # extra environment variables for the runs
    name: null                    # the experiment's name (default: the file's stem); the runs' W&B group
    launcher: auto                # `subprocess`: a fresh Python per phase; `fork`: forked from a warm fork server;
                                  # `ray`: each trial a Ray task (see `ray:`); auto: fork on Linux without GPUs,
                                  # else subprocess (also --launcher)
    preload: [sklearn.datasets]   # modules the fork server imports once, besides the defaults (torch, Lightning,
                                  # this package's CLI and recorder, TensorBoard, matplotlib: those installed)
    preload_defaults: true        # false: the fork server imports only `preload`
    ray:                          # with `launcher: ray` (see docs/cluster.md); each trial is one Ray task
      address: null               # the cluster (`host:port` of the head, or `auto`; also --address);
                                  # null: a local Ray on this machine's loopback
      cpus: 1                     # what each trial asks for: CPUs and GPUs (fractions allowed)
      gpus: 0
      retries: 1                  # a trial whose worker node dies is run again this many times, then failed
    report: {metric: test_acc}    # print `bninit report` at the end (optional; also --report-metric)
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_bninit import _extras
from lightning_bninit.experiments.grid import GridError, builtin_grid_values, expand_grid
from lightning_bninit.experiments.launchers import LAUNCHERS
from lightning_bninit.experiments.seeding import parse_seeds

#: Arms available without defining them in the experiment file.
BUILTIN_ARMS: dict[str, list[str]] = {
    "standard": ["--bninit=true", "--bninit.init_scale=1.0", "--bninit.scale_lr_divisor=1.0"],
    "bninit": ["--bninit=true"],
}
KNOWN_KEYS = frozenset({
    "script", "module", "config", "args", "metrics", "seeds", "arms", "derive_seed", "checkpoint",
    "keep_checkpoints", "timeout_s", "env", "report", "default_arms", "test", "grid", "name", "launcher", "preload",
    "preload_defaults", "ray",
})
RAY_KEYS = ("address", "cpus", "gpus", "retries")


class ExperimentError(ValueError):
    """Invalid experiment file or compare options; the message is meant for the user as is."""


@dataclass
class RayOptions:
    """``ray:`` of an experiment file: where the trials run and what each asks for."""

    address: str | None = None
    cpus: float = 1.0
    gpus: float = 0.0
    retries: int = 1


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
    name: str = ""
    launcher: str = "auto"
    preload: list[str] = field(default_factory=list)
    preload_defaults: bool = True
    ray: RayOptions = field(default_factory=RayOptions)
    #: grid values of the arms a report can place in the grid (grid arms, and the built-in arms left built in)
    grid_values: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: names of grid points that are built-in arms (``g1_c1`` is ``standard``)
    grid_aliases: dict[str, str] = field(default_factory=dict)

    def check_arms(self, arms: list[str]) -> None:
        """Raise :class:`ExperimentError` naming the arms of ``arms`` that this file does not define."""
        unknown = [a for a in arms if a not in self.arms]
        if unknown:
            raise ExperimentError(f"unknown arm(s) {unknown}; defined arms: {', '.join(self.arms)}")


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
    path = Path(path).resolve()
    raw = _read(path)
    where = str(path)
    try:
        exp = Experiment(
            path=path,
            command=_command(raw, path.parent, where),
            configs=_configs(raw.get("config"), path.parent, where),
            args=_as_args(raw.get("args"), "'args'"),
            arms=_arms(raw.get("arms"), where),
            metrics=_metrics(raw.get("metrics"), where),
            seeds=parse_seeds(raw["seeds"]) if raw.get("seeds") is not None else None,
            derive_seed=_flag(raw, "derive_seed", True, where),
            checkpoint=_choice(raw, "checkpoint", ("best", "last"), where),
            keep_checkpoints=_flag(raw, "keep_checkpoints", False, where),
            test_in_fit=_choice(raw, "test", ("separate", "in_fit"), where) == "in_fit",
            timeout_s=_timeout(raw.get("timeout_s"), where),
            env={str(k): str(v) for k, v in _mapping(raw, "env", "a mapping of environment variables", where).items()},
            report=_mapping(raw, "report", "a mapping like {metric: test_acc}", where),
            name=str(raw.get("name") or path.stem),
            launcher=_choice(raw, "launcher", LAUNCHERS, where),
            preload=_metrics(raw.get("preload"), where, "preload", "module names"),
            preload_defaults=_flag(raw, "preload_defaults", True, where),
            ray=_ray(raw.get("ray"), where),
        )
        _add_grid(exp, raw.get("grid"), raw.get("arms") or {}, where)
        exp.default_arms = _default_arms(raw.get("default_arms"), exp)
    except ValueError as err:  # parse_seeds
        if isinstance(err, ExperimentError):
            raise
        raise ExperimentError(f"{where}: {err}") from None
    return exp


def _add_grid(exp: Experiment, raw_grid: Any, explicit: dict[str, Any], where: str) -> None:
    """Add the grid's arms to ``exp.arms`` and the grid values of every arm that has them."""
    builtins = [a for a in BUILTIN_ARMS if a not in explicit]
    options: list[str] = []
    if raw_grid is not None:
        try:
            grid = expand_grid(raw_grid, builtins)
        except GridError as err:
            raise ExperimentError(f"{where}: {err}") from None
        clash = [name for name in grid.arms if name in exp.arms]
        if clash:
            raise ExperimentError(f"{where}: grid arm(s) {clash} have the name of an arm under 'arms'; rename the "
                                  f"explicit arm(s) (grid arms are named by their values, e.g. g0.3_c100)")
        exp.arms.update(grid.arms)
        exp.grid_values.update(grid.values)
        exp.grid_aliases = grid.aliases
        options = list(raw_grid)  # validated by expand_grid
    for arm in builtins:
        exp.grid_values[arm] = builtin_grid_values(arm, options)


def _read(path: Path) -> dict[str, Any]:
    yaml = _extras.require("yaml", "bninit compare")
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ExperimentError(f"experiment file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ExperimentError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ExperimentError(f"{path}: expected a mapping with at least 'script' or 'module'")
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise ExperimentError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(KNOWN_KEYS)}")
    return raw


def _as_args(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list) and all(isinstance(v, (str, int, float, bool)) for v in value):
        return [str(v) for v in value]
    raise ExperimentError(f"{what} must be a list of CLI arguments or one string, got {value!r}")


def _command(raw: dict[str, Any], base: Path, where: str) -> list[str]:
    if bool(raw.get("script")) == bool(raw.get("module")):
        raise ExperimentError(f"{where}: set exactly one of 'script' (a file) or 'module' (run with python -m)")
    if raw.get("module"):
        return [sys.executable, "-m", str(raw["module"])]
    script = (base / str(raw["script"])).resolve()
    if not script.is_file():
        raise ExperimentError(f"{where}: script not found: {script}")
    return [sys.executable, str(script)]


def _configs(value: Any, base: Path, where: str) -> list[Path]:
    items = [value] if isinstance(value, str) else (value or [])
    if not isinstance(items, list):
        raise ExperimentError(f"{where}: 'config' must be a path or a list of paths, got {value!r}")
    configs = []
    for item in items:
        cfg = (base / str(item)).resolve()
        if not cfg.is_file():
            raise ExperimentError(f"{where}: config file not found: {cfg}")
        configs.append(cfg)
    return configs


def _arms(value: Any, where: str) -> dict[str, list[str]]:
    arms = dict(BUILTIN_ARMS)
    if not isinstance(value or {}, dict):
        raise ExperimentError(f"{where}: 'arms' must map arm names to lists of CLI overrides")
    for name, overrides in (value or {}).items():
        if not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in ",/\\ \t\n"):
            raise ExperimentError(f"{where}: invalid arm name {name!r} (non-empty, no commas, slashes or spaces: "
                                  "it is a folder name and an item of --arms)")
        arms[name] = _as_args(overrides, f"arm '{name}'")
    return arms


def _metrics(value: Any, where: str, key: str = "metrics", what: str = "metric names") -> list[str]:
    metrics = [value] if isinstance(value, str) else (value or [])
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise ExperimentError(f"{where}: '{key}' must be a list of {what}, got {metrics!r}")
    return list(metrics)


def _default_arms(value: Any, exp: Experiment) -> list[str]:
    if not value:  # the built-in arms, then the grid's
        return ["standard", "bninit"] + [a for a in exp.arms if a in exp.grid_values and a not in BUILTIN_ARMS]
    return value.split(",") if isinstance(value, str) else list(value)


def _choice(raw: dict[str, Any], key: str, allowed: tuple[str, ...], where: str) -> str:
    value = raw.get(key, allowed[0])
    if value not in allowed:
        raise ExperimentError(f"{where}: '{key}' must be {' or '.join(repr(a) for a in allowed)}, got {value!r}")
    return value


def _flag(raw: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ExperimentError(f"{where}: '{key}' must be true or false, got {value!r}")
    return value


def _mapping(raw: dict[str, Any], key: str, what: str, where: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ExperimentError(f"{where}: '{key}' must be {what}")
    return value


def _timeout(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ExperimentError(f"{where}: 'timeout_s' must be a positive number of seconds, got {value!r}")
    return float(value)


def _ray(value: Any, where: str) -> RayOptions:
    """``ray:``: a mapping of :data:`RAY_KEYS`; each value checked, with the key and what it must be."""
    if value is None:
        return RayOptions()
    if not isinstance(value, dict) or set(value) - set(RAY_KEYS):
        unknown = sorted(set(value) - set(RAY_KEYS)) if isinstance(value, dict) else value
        raise ExperimentError(f"{where}: 'ray' must be a mapping with keys {', '.join(RAY_KEYS)}; got {unknown!r}")
    options = RayOptions()
    address = value.get("address")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ExperimentError(f"{where}: 'ray.address' must be 'host:port' or 'auto', got {address!r}")
    options.address = address
    for key in ("cpus", "gpus"):
        amount = value.get(key, getattr(options, key))
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise ExperimentError(f"{where}: 'ray.{key}' must be a number >= 0 (per trial), got {amount!r}")
        setattr(options, key, float(amount))
    retries = value.get("retries", options.retries)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        raise ExperimentError(f"{where}: 'ray.retries' must be a whole number from 0 to 10, got {retries!r}")
    options.retries = retries
    return options
