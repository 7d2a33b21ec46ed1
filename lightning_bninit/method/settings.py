"""Validation of user settings: each bad value gets an error that names it and what is allowed."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Union

Pattern = Union[str, "re.Pattern[str]"]
Patterns = Union[Pattern, Sequence[Pattern], None]


def check_init_scale(value: float) -> float:
    """Return ``value`` as a float if it is a finite number > 0.

    Raises:
        ValueError: if ``value`` is not a real number, is <= 0, NaN or infinite.
    """
    number = _as_real(value, "init_scale")
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"init_scale must be a finite number > 0 (the paper suggests 0.1), got {value!r}.")
    return number


def check_scale_lr_divisor(value: float) -> float:
    """Return ``value`` as a float if it is a finite number >= 1.

    Raises:
        ValueError: if ``value`` is not a real number, is < 1, NaN or infinite.
    """
    number = _as_real(value, "scale_lr_divisor")
    if not math.isfinite(number) or number < 1:
        raise ValueError(
            f"scale_lr_divisor must be a finite number >= 1 (1 keeps the optimizer's learning rate, the paper "
            f"uses 100), got {value!r}."
        )
    return number


def check_patterns(value: Patterns, name: str) -> tuple[Pattern, ...]:
    """Normalize ``include``/``exclude`` to a tuple of glob strings or compiled regular expressions.

    Raises:
        ValueError: if ``value`` or one of its items is neither a string nor a compiled ``re.Pattern``.
    """
    if value is None:
        return ()
    items = (value,) if isinstance(value, (str, re.Pattern)) else value
    if not isinstance(items, Sequence):
        raise ValueError(
            f"{name} must be a glob string, a compiled re.Pattern, or a list of those, got {type(value).__name__}: "
            f"{value!r}."
        )
    for item in items:
        if not isinstance(item, (str, re.Pattern)):
            raise ValueError(
                f"{name} patterns must be glob strings (fnmatch, e.g. 'layer1.*') or compiled re.Pattern objects, "
                f"got {type(item).__name__}: {item!r}."
            )
    return tuple(items)


def _as_real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {type(value).__name__}: {value!r}.")
    return float(value)
