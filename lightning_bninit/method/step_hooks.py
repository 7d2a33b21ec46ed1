"""Applies a :class:`~lightning_bninit.method.update.GroupSplitter` at every step, through the optimizer's own hooks.

One mechanism for every caller (the Lightning callback, plain loops, Fabric) and every way a step is reached
(Lightning's automatic or manual optimization, the raw optimizer, a GradScaler): ``docs/design.md`` ("The step
split") says why it is exact and what user code sees.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from lightning_bninit.method.update import GroupSplitter, keeps_state_per_parameter

_ATTACHED: weakref.WeakSet[Optimizer] = weakref.WeakSet()
"""Every optimizer that has a :class:`RevisedUpdate` attached, in this process: a second one would apply the update
twice (each would split the groups the other already split)."""


def check_not_attached(optimizer: Optimizer) -> None:
    """Refuse ``optimizer`` if some :class:`RevisedUpdate` (a ``BNInit`` or an ``attach``) has its hooks on it.

    Raises:
        ValueError: naming the optimizer and the way out (applying the update twice is never right).
    """
    if optimizer in _ATTACHED:
        raise ValueError(
            f"The revised BN update is already attached to this {type(optimizer).__name__} (by "
            "lightning_bninit.attach or a BNInit callback); attaching it again would apply the update twice. "
            "Keep one of them, or call .remove() on the first handle before attaching again."
        )


@dataclass
class _Hooks:
    optimizer: weakref.ref[Optimizer]
    refusal: str | None = None
    track_state: bool = True
    handles: list[RemovableHandle] = field(default_factory=list)
    closure_pending: bool = False  # a closure was given to the running step and has not been called yet


class RevisedUpdate:
    """Splits the param groups of attached optimizers for the length of each ``step()`` and restores them after.

    The step pre-hook splits the groups. When the step is given a closure, it is replaced by one that runs the
    original on the user's groups (forward, backward, clipping, ``on_before_optimizer_step``) and splits right after
    it, before the update, so user code never sees the split (the split is then made there, not in the pre-hook: a
    step whose optimizer never calls its closure raises after it). The post-hook restores the user's groups. A step
    that never runs (one a GradScaler skips) calls neither hook and leaves nothing behind.

    Args:
        splitter: which parameters move to which group, and with which ``lr`` / ``weight_decay``.
    """

    def __init__(self, splitter: GroupSplitter) -> None:
        self.splitter = splitter
        self._hooks: dict[int, _Hooks] = {}

    def is_attached(self, optimizer: Optimizer) -> bool:
        return id(optimizer) in self._hooks

    def attach(self, optimizer: Optimizer, refusal: str | None = None) -> None:
        """Register the step hooks on ``optimizer`` (a no-op when already attached).

        Args:
            refusal: for an optimizer whose step may couple param groups, the ``TypeError`` message its first step
                raises if its groups then hold BN parameters that need a split (they may join it later, e.g. in a
                param group added mid-fit); ``None`` for a separable optimizer.

        Raises:
            ValueError: if another :class:`RevisedUpdate` (another ``BNInit`` or ``attach``) is attached to it.
        """
        if self.is_attached(optimizer):
            return
        check_not_attached(optimizer)
        _ATTACHED.add(optimizer)
        self._hooks[id(optimizer)] = _Hooks(
            optimizer=weakref.ref(optimizer), refusal=refusal, track_state=not keeps_state_per_parameter(optimizer),
            handles=[
                optimizer.register_step_pre_hook(self._pre_step),
                optimizer.register_step_post_hook(self._post_step),
            ],
        )

    def detach(self) -> None:
        """Put the user's groups back on every attached optimizer and remove every hook this object registered."""
        for hooks in self._hooks.values():
            optimizer = hooks.optimizer()
            if optimizer is not None:
                self.splitter.restore(optimizer)
                _ATTACHED.discard(optimizer)
            for handle in hooks.handles:
                handle.remove()
        self._hooks.clear()

    @property
    def optimizers(self) -> list[Optimizer]:
        """The attached optimizers that still exist."""
        return [o for o in (h.optimizer() for h in self._hooks.values()) if o is not None]

    def _pre_step(
        self, optimizer: Optimizer, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[tuple, dict[str, Any]] | None:
        # A step that raised never ran its post-hook; its split, if any, is undone before this step splits afresh.
        self.splitter.restore(optimizer)
        hooks = self._hooks[id(optimizer)]
        if hooks.refusal is not None and self.splitter.needs_split(optimizer):
            raise TypeError(hooks.refusal)
        # ``args`` starts with the optimizer itself; a closure is the first argument after it, or ``closure=``.
        if len(args) > 1 and callable(args[1]):
            hooks.closure_pending = True
            return (args[0], self._with_users_groups(optimizer, hooks, args[1]), *args[2:]), kwargs
        if kwargs.get("closure") is not None:
            hooks.closure_pending = True
            return args, {**kwargs, "closure": self._with_users_groups(optimizer, hooks, kwargs["closure"])}
        self.splitter.split(optimizer, hooks.track_state)
        return None

    def _with_users_groups(self, optimizer: Optimizer, hooks: _Hooks, closure: Callable[[], Any]) -> Callable[[], Any]:
        def closure_with_users_groups() -> Any:
            self.splitter.restore(optimizer)  # a closure the optimizer calls again (LBFGS-style) sees them too
            result = closure()  # if it raises, the user's groups stay in place
            hooks.closure_pending = False
            self.splitter.split(optimizer, hooks.track_state)
            return result

        return closure_with_users_groups

    def _post_step(self, optimizer: Optimizer, args: tuple, kwargs: dict[str, Any]) -> None:
        self.splitter.restore(optimizer)
        hooks = self._hooks[id(optimizer)]
        if hooks.closure_pending:
            hooks.closure_pending = False
            if self.splitter.needs_split(optimizer):
                raise RuntimeError(
                    f"{type(optimizer).__qualname__}.step was given a closure and did not call it, so this step ran "
                    "without the revised BN update (the split is made when the closure returns). Call the closure "
                    "in step, or compute the loss before and call step() without one."
                )
