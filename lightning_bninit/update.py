"""The revised update, applied to an unmodified optimizer.

For the duration of one ``optimizer.step()`` the optimizer's param groups are replaced by the paper's split: within
each user group, BN scales move to a copy of that group with ``lr / c`` (and no weight decay), BN shifts to a copy
with no weight decay, everything else stays in a copy of the group as it is. Right after the step the user's own
groups are put back. Optimizer state is keyed by parameter, so it is the same state a hand-built three-group optimizer
would hold, and every hyperparameter is read from the user's group at step time, so LR schedulers (which only touch
groups between steps) keep working unchanged. The result equals that three-group optimizer for every optimizer whose
step treats each param group on its own, which :data:`SEPARABLE_OPTIMIZERS` lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer

from lightning_bninit.layers import SCALE, SHIFT
from lightning_bninit.param_groups import GROUP_MARKER

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


def is_separable(optimizer: Optimizer, extra: Iterable[type] = ()) -> bool:
    """Whether ``optimizer``'s step is one known to treat each param group independently.

    A subclass qualifies only if it keeps its base class's ``step``: an overridden step may couple groups.
    """
    step = type(optimizer).step
    return any(step is cls.step for cls in (*SEPARABLE_OPTIMIZERS, *extra))


def unsupported_optimizer_message(optimizer: Optimizer) -> str:
    name = type(optimizer).__qualname__
    known = ", ".join(cls.__name__ for cls in SEPARABLE_OPTIMIZERS)
    return (
        f"BNInit cannot apply the revised BN update exactly with optimizer {name}: it can only do so for optimizers "
        f"whose step updates each param group on its own ({known}). Ways out: build the groups yourself in "
        f"configure_optimizers with `lightning_bninit.bn_param_groups(self, lr, weight_decay)` (BNInit then leaves "
        f"that optimizer alone), or, if {name}.step does treat each param group independently, pass "
        f"`BNInit(separable_optimizers=[{name}])`."
    )


@dataclass(frozen=True)
class _Split:
    others: list[torch.Tensor]
    scales: list[torch.Tensor]
    shifts: list[torch.Tensor]
    names: tuple[list[str], list[str], list[str]] | None


class GroupSplitter:
    """Splits BN parameters out of an optimizer's param groups for one step, then puts the groups back.

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

    def is_split(self, optimizer: Optimizer) -> bool:
        return id(optimizer) in self._saved

    def split(self, optimizer: Optimizer) -> None:
        """Replace ``optimizer.param_groups`` by the split groups until :meth:`restore`."""
        if not self.active or id(optimizer) in self._saved:
            return
        original = optimizer.param_groups
        groups: list[dict[str, Any]] = []
        tail: list[dict[str, Any]] = []
        for group in original:
            plan = self._plan(group)
            if plan is None:
                groups.append(group)
                continue
            if plan.others:
                groups.append(self._copy(group, plan.others, plan.names and plan.names[0]))
            if plan.scales:
                scales = self._copy(group, plan.scales, plan.names and plan.names[1], exempt=True)
                scales["lr"] = group["lr"] / self.scale_lr_divisor
                tail.append(scales)
            if plan.shifts:
                tail.append(self._copy(group, plan.shifts, plan.names and plan.names[2], exempt=True))
        self._saved[id(optimizer)] = original
        optimizer.param_groups = groups + tail

    def restore(self, optimizer: Optimizer) -> None:
        """Put the user's own param groups back (a no-op when they are in place)."""
        original = self._saved.pop(id(optimizer), None)
        if original is not None:
            optimizer.param_groups = original

    def _copy(
        self, group: dict[str, Any], params: list[torch.Tensor], names: list[str] | None, exempt: bool = False
    ) -> dict[str, Any]:
        copy = dict(group)
        copy["params"] = params
        if names is not None:
            copy["param_names"] = names
        if exempt and self.exempt_weight_decay and "weight_decay" in copy:
            copy["weight_decay"] = 0.0
        return copy

    def _plan(self, group: dict[str, Any]) -> _Split | None:
        params = group["params"]
        cached = self._plans.get(id(group))
        if cached is not None and cached[0] is params and cached[1] == len(params):
            return cached[2]
        plan = None
        if GROUP_MARKER not in group:
            buckets: dict[str, list[int]] = {"other": [], SCALE: [], SHIFT: []}
            for index, param in enumerate(params):
                buckets[self.roles.get(param, "other")].append(index)
            if buckets[SCALE] or buckets[SHIFT]:
                pick = lambda seq, idx: [seq[i] for i in idx]  # noqa: E731
                names = group.get("param_names")
                plan = _Split(
                    others=pick(params, buckets["other"]),
                    scales=pick(params, buckets[SCALE]),
                    shifts=pick(params, buckets[SHIFT]),
                    names=None if names is None else tuple(pick(names, buckets[k]) for k in ("other", SCALE, SHIFT)),
                )
        self._plans[id(group)] = (params, len(params), plan)
        return plan
