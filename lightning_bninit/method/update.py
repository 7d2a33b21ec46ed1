"""The revised update on an unmodified optimizer: its param groups split for the length of one step.

Why this is exact, and why the groups are put back after each step: ``docs/design.md`` ("The step split").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import Optimizer

from lightning_bninit.method.layers import SCALE, SHIFT
from lightning_bninit.method.param_groups import GROUP_MARKER

SEPARABLE_OPTIMIZERS: tuple[type[Optimizer], ...] = tuple(
    getattr(torch.optim, name)
    for name in (
        "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop",
        "Adafactor",
    )
    if hasattr(torch.optim, name)
)
"""Optimizers whose ``step`` updates each param group independently of the others (PyTorch's own, except ``LBFGS``,
which allows one group only, and ``SparseAdam``, which takes no dense gradients)."""


def step_owner(cls: type[Optimizer]) -> type:
    """The class whose own code is ``cls.step``: the first class of the MRO that defines ``step``, looking through
    the wrappers that PyTorch itself adds.

    ``Optimizer.__init__`` wraps ``step`` for its hooks and profiling and stores the wrapper on the class being
    instantiated, once per class (``_patch_step_function``). A subclass that only adds a name or an argument thus gets
    a ``step`` of its own if it is instantiated before its base class, and none if after; the wrapped function is
    the same either way, and that function decides.
    """
    own = [(klass, _unwrapped(klass.__dict__["step"])) for klass in cls.__mro__ if "step" in klass.__dict__]
    if not own:
        return object
    function = own[0][1]
    # Wrappers of an inherited step unwrap to the same function as the class that defines it: the last such class.
    return [klass for klass, unwrapped in own if unwrapped is function][-1]


def _unwrapped(step: Any) -> Any:
    # Only PyTorch's hook wrapper (Optimizer.profile_hook_step: functools.wraps, marked `hooked`) is looked through;
    # a class's own decorators (e.g. `_use_grad_for_differentiable`) belong to its step.
    while getattr(step, "hooked", False) and hasattr(step, "__wrapped__"):
        step = step.__wrapped__
    return step


def is_separable(optimizer: Optimizer, extra: Iterable[type[Optimizer]] = ()) -> bool:
    """Whether ``optimizer``'s step is one known to treat each param group independently.

    Decided by the class that defines the step (:func:`step_owner`): a subclass that keeps its base class's ``step``
    qualifies whatever the order in which the classes were first instantiated; one that overrides ``step`` does not
    (an overridden step may couple groups) unless it is in ``extra``.
    """
    owner = step_owner(type(optimizer))
    return any(owner is step_owner(cls) for cls in (*SEPARABLE_OPTIMIZERS, *extra))


def unsupported_optimizer_message(optimizer: Optimizer, caller: str = "BNInit") -> str:
    """Why ``optimizer`` is refused and the two ways out, for ``caller`` (``"BNInit"`` or ``"attach"``)."""
    name = type(optimizer).__qualname__
    known = ", ".join(cls.__name__ for cls in SEPARABLE_OPTIMIZERS)
    if caller == "BNInit":
        build = ("build the groups yourself in configure_optimizers with "
                 "`lightning_bninit.bn_param_groups(self, lr, weight_decay)` (BNInit then leaves that optimizer alone)")
        option = f"`BNInit(separable_optimizers=[{name}])`"
    else:
        build = ("build the groups yourself with `lightning_bninit.bn_param_groups(model, lr, weight_decay)` and do "
                 "not attach that optimizer")
        option = f"`attach(model, optimizer, separable_optimizers=[{name}])`"
    return (
        f"{caller} cannot apply the revised BN update exactly with optimizer {name}: it can only do so for optimizers "
        f"whose step updates each param group on its own ({known}, and subclasses that keep their step). Ways out: "
        f"{build}, or, if {name}.step does treat each param group independently, pass {option}."
    )


@dataclass
class _Split:
    """Where the BN parameters sit in one param group, and the groups it becomes for each kind of split."""

    params: list[torch.Tensor]
    names: list[str] | None
    buckets: dict[str, list[int]]
    _pieces: dict[tuple[bool, bool], list[tuple[str, list[torch.Tensor], list[str] | None]]] = field(
        default_factory=dict
    )

    def pieces(self, own_scales: bool, own_shifts: bool) -> list[tuple[str, list[torch.Tensor], list[str] | None]]:
        """``(role, params, names)`` of the groups this group becomes; BN parameters without a group of their own
        stay with the others (in the user's order)."""
        key = (own_scales, own_shifts)
        if key not in self._pieces:
            scales, shifts = self.buckets[SCALE], self.buckets[SHIFT]
            kept = sorted([*self.buckets[_OTHER], *([] if own_scales else scales), *([] if own_shifts else shifts)])
            roles = ((_OTHER, kept), (SCALE, scales if own_scales else []), (SHIFT, shifts if own_shifts else []))
            self._pieces[key] = [
                (role, [self.params[i] for i in idx], None if self.names is None else [self.names[i] for i in idx])
                for role, idx in roles
                if idx
            ]
        return self._pieces[key]


_OTHER = "other"


def _is_zero(value: Any) -> bool:
    # A tensor weight decay counts as non-zero: reading it would synchronize with the device every step.
    return isinstance(value, (int, float)) and value == 0


class GroupSplitter:
    """Splits BN parameters out of an optimizer's param groups for one step, then puts the groups back.

    A group is only split as far as the update needs: BN scales get a group of their own when ``c != 1`` or their
    weight decay must be removed, BN shifts only for the latter. A group whose BN parameters need neither (``c = 1``
    and no weight decay to remove) is passed to the optimizer as it is, so the baseline arm costs nothing.

    Args:
        roles: the role (``"scale"`` or ``"shift"``) of each BN parameter, keyed by the parameter itself.
        scale_lr_divisor: ``c``; BN scales step with the group's ``lr / c``.
        exempt_weight_decay: give BN scales and shifts ``weight_decay = 0``.
    """

    def __init__(self, roles: Mapping[torch.Tensor, str], scale_lr_divisor: float, exempt_weight_decay: bool) -> None:
        self.roles = roles
        self.scale_lr_divisor = scale_lr_divisor
        self.exempt_weight_decay = exempt_weight_decay
        # Per group dict: (its params list object, that list's length, the split). Groups rarely change, so the
        # per-step cost is a dict copy per group rather than a pass over every parameter.
        self._plans: dict[int, tuple[list, int, _Split | None]] = {}
        self._saved: dict[int, list[dict[str, Any]]] = {}

    @property
    def active(self) -> bool:
        return self.scale_lr_divisor != 1 or self.exempt_weight_decay

    def holds_bn_params(self, optimizer: Optimizer) -> bool:
        """Whether ``optimizer`` has BN parameters in groups that :func:`bn_param_groups` did not build."""
        return any(self._plan(group) is not None for group in optimizer.param_groups)

    def split(self, optimizer: Optimizer) -> None:
        """Replace ``optimizer.param_groups`` by the split groups until :meth:`restore`."""
        if not self.active or id(optimizer) in self._saved:
            return
        original = optimizer.param_groups
        groups: list[dict[str, Any]] = []
        tail: list[dict[str, Any]] = []
        for group in original:
            plan = self._plan(group)
            remove_decay = self.exempt_weight_decay and not _is_zero(group.get("weight_decay", 0))
            own_scales = remove_decay or self.scale_lr_divisor != 1
            if plan is None or not own_scales:
                groups.append(group)
                continue
            for role, params, names in plan.pieces(own_scales, remove_decay):
                copy = dict(group)
                copy["params"] = params
                if names is not None:
                    copy["param_names"] = names
                if role == _OTHER:
                    groups.append(copy)
                    continue
                if remove_decay:
                    copy["weight_decay"] = 0.0
                if role == SCALE:
                    copy["lr"] = group["lr"] / self.scale_lr_divisor
                tail.append(copy)
        if tail:
            self._saved[id(optimizer)] = original
            optimizer.param_groups = groups + tail

    def restore(self, optimizer: Optimizer) -> None:
        """Put the user's own param groups back (a no-op when they are in place)."""
        original = self._saved.pop(id(optimizer), None)
        if original is not None:
            optimizer.param_groups = original

    def _plan(self, group: dict[str, Any]) -> _Split | None:
        params = group["params"]
        cached = self._plans.get(id(group))
        if cached is not None and cached[0] is params and cached[1] == len(params):
            return cached[2]
        plan = None
        if GROUP_MARKER not in group:
            buckets: dict[str, list[int]] = {_OTHER: [], SCALE: [], SHIFT: []}
            for index, param in enumerate(params):
                buckets[self.roles.get(param, _OTHER)].append(index)
            if buckets[SCALE] or buckets[SHIFT]:
                plan = _Split(params=list(params), names=group.get("param_names"), buckets=buckets)
        self._plans[id(group)] = (params, len(params), plan)
        return plan
