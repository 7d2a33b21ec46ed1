"""Sweeps: a ``grid:`` over BNInit's options in an experiment file, expanded into named arms.

Each grid point is an arm ``--bninit=true --bninit.<option>=<value> ...``. Its name depends only on its own values,
in the order of BNInit's parameters: ``g<init_scale>`` (gamma0), ``c<scale_lr_divisor>``, ``<option>-<value>`` for
any other option, joined by ``_`` (``g0.3_c100``, ``g0.1_c100_input_norm-true``). Adding a value to the grid later
adds arms and renames none. A point whose settings are those of a built-in arm (gamma0 1 and c 1: ``standard``; all
defaults: ``bninit``) is that arm, so it is run once. Names are safe as folder names and in ``--arms`` lists.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BNINIT_OPTIONS", "GridError", "GridArms", "builtin_grid_values", "expand_grid"]

#: The parameters of ``BNInit.__init__`` with their defaults. Kept here because the parent process of ``bninit
#: compare`` never imports torch or Lightning; ``tests/test_sweeps.py`` checks it against the signature.
BNINIT_OPTIONS: dict[str, Any] = {
    "init_scale": 0.1,
    "scale_lr_divisor": 100.0,
    "exempt_weight_decay": True,
    "input_norm": False,
    "input_channels": None,
    "include": None,
    "exclude": None,
    "force": False,
    "separable_optimizers": (),
    "monitor": True,
}
#: What a grid value of each option may be (a scalar that one ``--bninit.<option>=<value>`` can carry).
_KINDS: dict[str, tuple[str, ...]] = {
    "init_scale": ("number",),
    "scale_lr_divisor": ("number",),
    "exempt_weight_decay": ("bool", "choice"),
    "input_norm": ("bool", "name"),
    "input_channels": ("int",),
    "include": ("name",),
    "exclude": ("name",),
    "force": ("bool",),
    "monitor": ("bool",),
}
#: The strings an option of kind "choice" takes (kept in step with ``method/settings.py``, checked by
#: ``tests/test_update_exactness_authors.py``; this module imports no torch).
_CHOICES: dict[str, tuple[str, ...]] = {"exempt_weight_decay": ("1d",)}
_KIND_TEXT = {"number": "a finite number", "bool": "true or false", "int": "an integer",
              "name": "a string of letters, digits, '.', '_' or '-'", "choice": "one of the strings {choices}"}
_RANGES = {"init_scale": (lambda v: v > 0, "> 0"), "scale_lr_divisor": (lambda v: v >= 1, ">= 1")}
_ABBREV = {"init_scale": "g", "scale_lr_divisor": "c"}
_SAFE = re.compile(r"[A-Za-z0-9._-]+")
#: Settings of the built-in arms (the rest at BNInit's defaults).
_BUILTIN_SETTINGS = {"standard": {"init_scale": 1.0, "scale_lr_divisor": 1.0}, "bninit": {}}


class GridError(ValueError):
    """Invalid ``grid:``; the message names the option or value and what is allowed."""


@dataclass
class GridArms:
    """The arms of a grid: ``arms`` maps each new arm's name to its CLI overrides, ``values`` to its grid values;
    ``aliases`` maps the names of grid points that are built-in arms to those arms."""

    arms: dict[str, list[str]] = field(default_factory=dict)
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


def expand_grid(raw: Any, builtins: list[str]) -> GridArms:
    """Expand a ``grid:`` mapping into arms.

    Args:
        raw: the mapping ``{option: [values]}`` from the experiment file.
        builtins: the built-in arms that are still built in (not redefined under ``arms:``); a grid point with
            their settings is that arm.

    Returns:
        The grid's arms, in the order of the grid's values (first option slowest).

    Raises:
        GridError: not a mapping, unknown option, empty or non-list values, a value that is not a scalar of the
            option's kind or out of range, duplicate values, two points with the same name.
    """
    grid = _validate(raw)
    options = [o for o in BNINIT_OPTIONS if o in grid]
    out = GridArms()
    for point in itertools.product(*(grid[o] for o in options)):
        values = dict(zip(options, point))
        name = arm_name(values)
        builtin = next((b for b in builtins if _is_builtin(b, values)), None)
        if builtin is not None:
            out.aliases[name] = builtin
            continue
        if name in out.arms:
            raise GridError(f"grid: two points get the arm name {name!r}; use values that differ in their names")
        out.arms[name] = ["--bninit=true"] + [f"--bninit.{o}={_cli(v)}" for o, v in values.items()]
        out.values[name] = values
    return out


def builtin_grid_values(arm: str, options: list[str]) -> dict[str, Any]:
    """Grid values of a built-in arm (``standard`` or ``bninit``): gamma0 and c, plus its values of the grid's other
    ``options`` (BNInit's defaults), so that a report can place it among the grid's arms."""
    settings = {**BNINIT_OPTIONS, **_BUILTIN_SETTINGS[arm]}
    keys = ["init_scale", "scale_lr_divisor"] + [o for o in options if o not in ("init_scale", "scale_lr_divisor")]
    return {k: float(settings[k]) if _KINDS[k] == ("number",) else settings[k] for k in keys}


def arm_name(values: dict[str, Any]) -> str:
    """The arm name of one grid point (only its own values, in the order of BNInit's parameters)."""
    parts = []
    for option in BNINIT_OPTIONS:
        if option in values:
            text = _text(values[option])
            parts.append(_ABBREV[option] + text if option in _ABBREV else f"{option}-{text}")
    return "_".join(parts)


def _is_builtin(arm: str, values: dict[str, Any]) -> bool:
    settings = {**BNINIT_OPTIONS, **_BUILTIN_SETTINGS[arm]}
    return all(type(settings[o]) is type(v) and settings[o] == v for o, v in values.items())


def _validate(raw: Any) -> dict[str, list[Any]]:
    if not isinstance(raw, dict) or not raw:
        raise GridError(f"'grid' must map BNInit options to lists of values, e.g. "
                        f"{{init_scale: [1.0, 0.1], scale_lr_divisor: [1, 100]}}; got {raw!r}")
    grid = {}
    for option, values in raw.items():
        if option not in BNINIT_OPTIONS:
            raise GridError(f"grid: unknown option {option!r}; BNInit's options are {', '.join(BNINIT_OPTIONS)}")
        if option not in _KINDS:
            raise GridError(f"grid: option {option!r} takes a list of classes, not a scalar, so it cannot be a grid "
                            f"axis; set it in an explicit arm or in 'args'")
        if not isinstance(values, list) or not values:
            raise GridError(f"grid: {option} must be a non-empty list of values, got {values!r}")
        grid[option] = [_value(option, v) for v in values]
        texts = [_text(v) for v in grid[option]]
        dup = next((t for t in texts if texts.count(t) > 1), None)
        if dup is not None:
            raise GridError(f"grid: {option} lists the value {dup} twice: {values!r}")
    return grid


def _value(option: str, value: Any) -> Any:
    """The value as BNInit takes it (numbers as float), or a GridError naming it and what the option allows."""
    kinds = _KINDS[option]
    if isinstance(value, bool):
        if "bool" in kinds:
            return value
    elif isinstance(value, (int, float)) and "number" in kinds:
        if math.isfinite(value):
            ok, allowed = _RANGES[option]
            if ok(float(value)):
                return float(value)
            raise GridError(f"grid: {option} value {value!r} is out of range; allowed: a finite number {allowed}")
    elif isinstance(value, int) and "int" in kinds:
        return value
    elif isinstance(value, str) and "name" in kinds and _SAFE.fullmatch(value) and value not in ("true", "false"):
        return value
    elif isinstance(value, str) and value in _CHOICES.get(option, ()):
        return value
    choices = ", ".join(repr(c) for c in _CHOICES.get(option, ()))
    allowed = " or ".join(_KIND_TEXT[k].format(choices=choices) for k in kinds)
    raise GridError(f"grid: {option} value {value!r} is not allowed; each value must be {allowed} (it becomes part "
                    f"of the arm name and of --bninit.{option}=...); for anything else define an explicit arm")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def _cli(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, float) else str(value)
