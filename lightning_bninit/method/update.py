"""The revised update on an unmodified optimizer: its param groups split for the length of one step.

Why this is exact, and why the groups are put back after each step: ``docs/design.md`` ("The step split").
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import Optimizer

from lightning_bninit.method.layers import OTHER, SCALE, SHIFT
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


def keeps_state_per_parameter(optimizer: Optimizer) -> bool:
    """Whether ``optimizer``'s step is one of PyTorch's separable optimizers', which keep all their state per parameter
    and write nothing into their param groups while stepping (the float64 equivalence tests check each)."""
    owner = step_owner(type(optimizer))
    return any(owner is step_owner(cls) for cls in SEPARABLE_OPTIMIZERS)


def is_separable(optimizer: Optimizer, extra: Iterable[type[Optimizer]] = ()) -> bool:
    """Whether ``optimizer``'s step is one known to treat each param group independently.

    Decided by the class that defines the step (:func:`step_owner`): a subclass that keeps its base class's ``step``
    qualifies whatever the order in which the classes were first instantiated; one that overrides ``step`` does not
    (an overridden step may couple groups) unless it is in ``extra``.
    """
    owner = step_owner(type(optimizer))
    return any(owner is step_owner(cls) for cls in (*SEPARABLE_OPTIMIZERS, *extra))


SINGLE_GROUP_OPTIMIZERS: tuple[type[Optimizer], ...] = (torch.optim.LBFGS,)
"""Optimizers whose ``step`` updates their first param group only (``LBFGS`` refuses several): BN scales cannot step
with ``lr / c`` in a group of their own, so they are never separable, whatever ``separable_optimizers`` says."""


def is_single_group(optimizer_class: type) -> bool:
    return any(issubclass(optimizer_class, cls) for cls in SINGLE_GROUP_OPTIMIZERS)


def unsupported_optimizer_message(optimizer: Optimizer, caller: str = "BNInit") -> str:
    """Why ``optimizer`` is refused and the ways out that work for it, for ``caller`` (``"BNInit"`` or ``"attach"``)."""
    name = type(optimizer).__qualname__
    option = "BNInit(%s)" if caller == "BNInit" else "attach(model, optimizer, %s)"
    if is_single_group(type(optimizer)):
        return (
            f"{caller} cannot apply the revised BN update with optimizer {name}: its step updates its first param "
            f"group only (it refuses several), so BN scales cannot step with lr / c or without weight decay in a "
            f"group of their own. Ways out: pass `{option % 'scale_lr_divisor=1'}` (the initialization only; {name} "
            f"has no weight decay to remove, so nothing is split), or train with a separable optimizer "
            f"(e.g. torch.optim.SGD or Adam)."
        )
    known = ", ".join(cls.__name__ for cls in SEPARABLE_OPTIMIZERS)
    if caller == "BNInit":
        build = ("build the groups yourself in configure_optimizers with "
                 "`lightning_bninit.bn_param_groups(self, lr, weight_decay)` (BNInit then leaves that optimizer alone)")
    else:
        build = ("build the groups yourself with `lightning_bninit.bn_param_groups(model, lr, weight_decay)` and do "
                 "not attach that optimizer")
    return (
        f"{caller} cannot apply the revised BN update exactly with optimizer {name}: it can only do so for optimizers "
        f"whose step updates each param group on its own ({known}, and subclasses that keep their step). Ways out: "
        f"{build}, or, if {name}.step does treat each param group independently, pass "
        f"`{option % f'separable_optimizers=[{name}]'}`."
    )


_Piece = tuple[str, dict[str, Any]]
"""One group a user's group becomes: its role and the values it overrides (``params``, ``param_names``,
``weight_decay``; ``lr`` is set per step for scales)."""


@dataclass
class _Split:
    """Where the BN parameters sit in one param group, and the groups it becomes for each kind of split."""

    params: list[torch.Tensor]
    names: list[str] | None
    buckets: dict[str, list[int]]
    _pieces: dict[tuple[bool, bool], list[_Piece]] = field(default_factory=dict)

    def pieces(self, own_scales: bool, own_shifts: bool) -> list[_Piece]:
        """The groups this group becomes; BN parameters without a group of their own stay with the others (in the
        user's order)."""
        key = (own_scales, own_shifts)
        if key not in self._pieces:
            scales, shifts = self.buckets[SCALE], self.buckets[SHIFT]
            kept = sorted([*self.buckets[OTHER], *([] if own_scales else scales), *([] if own_shifts else shifts)])
            roles = ((OTHER, kept), (SCALE, scales if own_scales else []), (SHIFT, shifts if own_shifts else []))
            self._pieces[key] = [(role, self._overrides(role, idx, own_shifts)) for role, idx in roles if idx]
        return self._pieces[key]

    def _overrides(self, role: str, index: list[int], remove_decay: bool) -> dict[str, Any]:
        overrides: dict[str, Any] = {"params": [self.params[i] for i in index]}
        if self.names is not None:
            overrides["param_names"] = [self.names[i] for i in index]
        if role != OTHER and remove_decay:
            overrides["weight_decay"] = 0.0
        return overrides


_MISSING = object()


def _is_zero(value: Any) -> bool:
    # A tensor weight decay counts as non-zero: reading it would synchronize with the device every step.
    return isinstance(value, (int, float)) and value == 0


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - a value without a usable ==: not the same
        return False


_Copy = tuple[dict[str, Any], tuple[Any, ...], dict[str, Any]]
"""One split group of a step: the dict the optimizer steps, the values it was given, and those that the split set
(the piece's overrides, and ``lr`` for scales)."""
_Saved = tuple[list[dict[str, Any]], list[tuple[dict[str, Any], list[_Copy]]]]
"""What one split step replaced: the user's groups list, and each user's group that was split with its copies."""


class GroupStateError(TypeError):
    """The optimizer keeps state in its param groups that differs between the split groups of one user's group."""


class GroupSplitter:
    """Splits BN parameters out of an optimizer's param groups for one step, then puts the groups back.

    A group is only split as far as the update needs: BN scales get a group of their own when ``c != 1`` or their
    weight decay must be removed, BN shifts only for the latter. A group whose BN parameters need neither (``c = 1``
    and no weight decay to remove) is passed to the optimizer as it is, so the baseline arm costs nothing.

    Group-level state that the optimizer writes into the split groups during its step (a key it adds or rebinds,
    e.g. a step counter) is carried back to the user's group when the groups are put back, so the next step starts
    from it as a hand-built group would; state that differs between the split groups of one user's group cannot be
    carried back exactly and raises :class:`GroupStateError` naming the optimizer and the key.

    Args:
        roles: the role (``"scale"`` or ``"shift"``) of each BN parameter, keyed by the parameter itself.
        scale_lr_divisor: ``c``; BN scales step with the group's ``lr / c``.
        exempt_weight_decay: give BN scales and shifts ``weight_decay = 0``.
    """

    def __init__(self, roles: Mapping[torch.Tensor, str], scale_lr_divisor: float, exempt_weight_decay: bool) -> None:
        self.roles: dict[torch.Tensor, str] = dict(roles)
        self.scale_lr_divisor = scale_lr_divisor
        self.exempt_weight_decay = exempt_weight_decay
        # Per group dict: (the parameters the plan was made for, whether the group was marked, the plan). A plan is
        # reused only for the very same parameters (compared one by one, by identity) and the same roles.
        self._plans: dict[int, tuple[list[torch.Tensor], bool, _Split | None]] = {}
        self._saved: dict[int, _Saved] = {}

    @property
    def active(self) -> bool:
        return self.scale_lr_divisor != 1 or self.exempt_weight_decay

    def add_roles(self, roles: Mapping[torch.Tensor, str]) -> None:
        """Treat more BN parameters (layers found later); every plan is made afresh."""
        self.roles.update(roles)
        self._plans.clear()

    def holds_bn_params(self, optimizer: Optimizer) -> bool:
        """Whether ``optimizer`` has BN parameters in groups that :func:`bn_param_groups` did not build."""
        return any(self._plan(group) is not None for group in optimizer.param_groups)

    def holds_any(self, optimizer: Optimizer) -> bool:
        """Whether ``optimizer`` holds a parameter of the treated layers in any group (hand-built ones included)."""
        return any(p in self.roles for group in optimizer.param_groups for p in group["params"])

    def needs_split(self, optimizer: Optimizer) -> bool:
        """Whether a step of ``optimizer`` now would be split (some group holds BN parameters that need another lr or
        no weight decay)."""
        return self.active and any(
            self._plan(group) is not None and self._own_groups(group)[0] for group in optimizer.param_groups
        )

    def _own_groups(self, group: dict[str, Any]) -> tuple[bool, bool]:
        remove_decay = self.exempt_weight_decay and not _is_zero(group.get("weight_decay", 0))
        return remove_decay or self.scale_lr_divisor != 1, remove_decay

    def split(self, optimizer: Optimizer, track_state: bool = True) -> None:
        """Replace ``optimizer.param_groups`` by the split groups until :meth:`restore`.

        ``track_state=False`` skips the bookkeeping that carries group-level state back, for optimizers known to keep
        all their state per parameter (PyTorch's own: :func:`keeps_state_per_parameter`).
        """
        if not self.active or id(optimizer) in self._saved:
            return
        original = optimizer.param_groups
        groups: list[dict[str, Any]] = []
        tail: list[dict[str, Any]] = []
        copies: list[tuple[dict[str, Any], list[_Copy]]] = []
        for group in original:
            plan = self._plan(group)
            own_scales, remove_decay = self._own_groups(group) if plan is not None else (False, False)
            if not own_scales:
                groups.append(group)
                continue
            made: list[_Copy] = []
            for role, overrides in plan.pieces(own_scales, remove_decay):  # type: ignore[union-attr]
                copy = {**group, **overrides}
                if role == SCALE:
                    copy["lr"] = group["lr"] / self.scale_lr_divisor
                    if track_state:
                        overrides = {**overrides, "lr": copy["lr"]}
                (groups if role == OTHER else tail).append(copy)
                if track_state:
                    made.append((copy, tuple(copy.values()), overrides))
            if track_state:
                copies.append((group, made))
        if tail:
            self._saved[id(optimizer)] = (original, copies)
            optimizer.param_groups = groups + tail

    def restore(self, optimizer: Optimizer) -> None:
        """Put the user's own param groups back (a no-op when they are in place), with the group-level state the
        optimizer wrote into the split groups.

        Raises:
            GroupStateError: when that state differs between the split groups of one user's group.
        """
        saved = self._saved.pop(id(optimizer), None)
        if saved is None:
            return
        original, copies = saved
        optimizer.param_groups = original
        for group, made in copies:
            if not all(map(_untouched, made)):
                _carry_back(optimizer, group, made)

    def _plan(self, group: dict[str, Any]) -> _Split | None:
        params = group["params"]
        marked = GROUP_MARKER in group
        cached = self._plans.get(id(group))
        if (cached is not None and cached[1] == marked and len(cached[0]) == len(params)
                and all(map(operator.is_, cached[0], params))):
            return cached[2]
        plan = None
        if not marked:
            buckets: dict[str, list[int]] = {OTHER: [], SCALE: [], SHIFT: []}
            for index, param in enumerate(params):
                buckets[self.roles.get(param, OTHER)].append(index)
            if buckets[SCALE] or buckets[SHIFT]:
                plan = _Split(params=list(params), names=group.get("param_names"), buckets=buckets)
        self._plans[id(group)] = (list(params), marked, plan)
        return plan


def _untouched(copy: _Copy) -> bool:
    # One C-level pass: every value is still the object the split put there (tuple equality tries identity first).
    group, values, _ = copy
    try:
        return len(group) == len(values) and tuple(group.values()) == values
    except Exception:  # noqa: BLE001 - a rebound value whose == is not a bool (a tensor): look closer
        return False


def _carry_back(optimizer: Optimizer, group: dict[str, Any], made: list[_Copy]) -> None:
    """Write the keys the optimizer added or rebound in the split groups back to the user's ``group``."""
    changed: dict[str, list[Any]] = {}
    for copy, _, overrides in made:
        for key, value in copy.items():
            if value is not overrides.get(key, group.get(key, _MISSING)):
                changed.setdefault(key, [])
    for key, values in changed.items():
        for copy, _, overrides in made:
            if key in overrides:
                raise GroupStateError(_group_state_message(optimizer, key, "changes a value the split set"))
            values.append(copy.get(key, group.get(key, _MISSING)))
        if any(v is _MISSING for v in values) or not all(_same(values[0], v) for v in values[1:]):
            raise GroupStateError(_group_state_message(optimizer, key, "differs between the split groups"))
        group[key] = values[0]


def _group_state_message(optimizer: Optimizer, key: str, why: str) -> str:
    name = type(optimizer).__qualname__
    return (
        f"The revised BN update cannot be applied exactly with optimizer {name}: its step keeps state in the param "
        f"group dict (key {key!r}) that {why}, so a step on split copies of your group cannot be carried back to it. "
        f"Build the groups yourself with `lightning_bninit.bn_param_groups(model, lr, weight_decay)` (BNInit and "
        f"attach leave such groups alone), or use an optimizer that keeps its state per parameter."
    )
