"""Validation of user settings: each bad value gets an error that names it and what is allowed."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

from torch.optim import LBFGS, Optimizer

Pattern = Union[str, "re.Pattern[str]"]
Patterns = Union[Pattern, Sequence[Pattern], None]

ONE_D = "1d"
ExemptWeightDecay = Union[bool, Literal["1d"]]
#: The allowed values of ``exempt_weight_decay`` (the one place they are declared) and what each means. BN scales
#: step at ``lr / c`` whatever the value.
EXEMPT_WEIGHT_DECAY_VALUES: dict[object, str] = {
    True: "no weight decay on BN scales and shifts",
    False: "every parameter keeps its group's weight decay",
    ONE_D: "no weight decay on any parameter with at most one dimension of size > 1 (BN scales and shifts, biases), "
           "as in the authors' train.py",
}


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


def check_exempt_weight_decay(value: object) -> ExemptWeightDecay:
    """Return ``value`` if it is one of :data:`EXEMPT_WEIGHT_DECAY_VALUES` (``True``, ``False`` or ``"1d"``).

    Raises:
        ValueError: for anything else, naming the value and what each allowed value means.
    """
    if isinstance(value, bool) or (isinstance(value, str) and value == ONE_D):
        return value  # type: ignore[return-value]
    allowed = "; ".join(f"{v!r}: {what}" for v, what in EXEMPT_WEIGHT_DECAY_VALUES.items())
    raise ValueError(f"exempt_weight_decay must be True, False or {ONE_D!r} ({allowed}), got "
                     f"{type(value).__name__}: {value!r}.")


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


def check_bool(value: object, name: str) -> bool:
    """``value`` if it is ``True`` or ``False`` (what ``--bninit.<option>=false`` passes too).

    Raises:
        ValueError: for anything else (``"false"``, ``0``, ``None``, ...), naming the option and the value.
    """
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {type(value).__name__}: {value!r}.")
    return value


def _as_real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {type(value).__name__}: {value!r}.")
    return float(value)


def check_input_norm(value: object) -> Union[bool, str]:
    """``True``, ``False`` or the qualified name of a submodule.

    Raises:
        ValueError: for anything else.
    """
    if not isinstance(value, (bool, str)):
        raise ValueError(
            f"input_norm must be True, False or the qualified name of a submodule, got {type(value).__name__}: "
            f"{value!r}."
        )
    return value


def check_input_channels(value: object) -> Union[int, None]:
    """A positive int or ``None``.

    Raises:
        ValueError: for anything else.
    """
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"input_channels must be a positive int or None, got {value!r}.")
    return value


def check_optimizer_classes(value: object) -> tuple[type[Optimizer], ...]:
    """A sequence of ``torch.optim.Optimizer`` subclasses (``separable_optimizers``).

    Raises:
        ValueError: for anything else, naming the bad item.
    """
    items = (value,) if isinstance(value, type) else value
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise ValueError(
            f"separable_optimizers must be a list of torch.optim.Optimizer subclasses, got {type(value).__name__}: "
            f"{value!r}."
        )
    for item in items:
        if not (isinstance(item, type) and issubclass(item, Optimizer)):
            raise ValueError(
                f"separable_optimizers must hold torch.optim.Optimizer subclasses (classes, not instances), got "
                f"{type(item).__name__}: {item!r}."
            )
        if issubclass(item, LBFGS):
            raise ValueError(
                f"separable_optimizers cannot hold {item.__name__}: LBFGS steps its first param group only, so BN "
                "scales cannot step with lr / c in a group of their own (the update would silently be the plain one). "
                "With LBFGS pass scale_lr_divisor=1 (the initialization only), or train with a separable optimizer."
            )
    return tuple(items)


@dataclass(frozen=True)
class MethodSettings:
    """The method's settings, shared by ``BNInit`` and ``attach``: the one declaration of its options and their
    defaults. Built, it validates itself: each bad value gets a ``ValueError`` naming it and what is allowed.
    ``include`` / ``exclude`` (a pattern, a list of them or ``None``) and ``separable_optimizers`` are kept as tuples.
    """

    init_scale: float = 0.1
    scale_lr_divisor: float = 100.0
    exempt_weight_decay: ExemptWeightDecay = True
    input_norm: Union[bool, str] = False
    input_channels: Union[int, None] = None
    include: Patterns = ()
    exclude: Patterns = ()
    force: bool = False
    separable_optimizers: Sequence[type[Optimizer]] = ()

    def __post_init__(self) -> None:
        checked = {
            "init_scale": check_init_scale(self.init_scale),
            "scale_lr_divisor": check_scale_lr_divisor(self.scale_lr_divisor),
            "exempt_weight_decay": check_exempt_weight_decay(self.exempt_weight_decay),
            "input_norm": check_input_norm(self.input_norm),
            "input_channels": check_input_channels(self.input_channels),
            "include": check_patterns(self.include, "include"),
            "exclude": check_patterns(self.exclude, "exclude"),
            "force": check_bool(self.force, "force"),
            "separable_optimizers": check_optimizer_classes(self.separable_optimizers),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)  # frozen: the normalized values replace the given ones

    def plain(self) -> dict[str, Any]:
        """The settings that shape the treatment, as plain values (checkpoints, run config, state keys)."""
        return {
            "init_scale": self.init_scale,
            "scale_lr_divisor": self.scale_lr_divisor,
            "exempt_weight_decay": self.exempt_weight_decay,
            "input_norm": self.input_norm,
            "include": [getattr(p, "pattern", p) for p in self.include],
            "exclude": [getattr(p, "pattern", p) for p in self.exclude],
            "force": self.force,
        }
