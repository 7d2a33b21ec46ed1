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

from lightning_bninit.method.update import GroupSplitter

_ATTACHED: weakref.WeakSet[Optimizer] = weakref.WeakSet()
"""Every optimizer that has a :class:`RevisedUpdate` attached, in this process: a second one would apply the update
twice (each would split the groups the other already split)."""


def is_attached_anywhere(optimizer: Optimizer) -> bool:
    """Whether some :class:`RevisedUpdate` (a ``BNInit`` or an ``attach``) has its hooks on ``optimizer``."""
    return optimizer in _ATTACHED


@dataclass
class _Hooks:
    optimizer: weakref.ref[Optimizer]
    refusal: str | None = None
    handles: list[RemovableHandle] = field(default_factory=list)


class RevisedUpdate:
    """Splits the param groups of attached optimizers for the length of each ``step()`` and restores them after.

    The step pre-hook splits the groups; when the step is given a closure, the closure is replaced by one that puts
    the user's groups back while the original runs (forward, backward, clipping, ``on_before_optimizer_step``) and
    splits again after it, so user code never sees the split. The post-hook restores the user's groups. A step that
    never runs (one a GradScaler skips) calls neither hook and leaves nothing behind.

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
        if optimizer in _ATTACHED:
            raise ValueError(
                f"The revised BN update is already attached to this {type(optimizer).__name__} (by "
                "lightning_bninit.attach or a BNInit callback); attaching it again would apply the update twice. "
                "Keep one of them, or call .remove() on the first handle before attaching again."
            )
        _ATTACHED.add(optimizer)
        self._hooks[id(optimizer)] = _Hooks(optimizer=weakref.ref(optimizer), refusal=refusal, handles=[
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_step_post_hook(self._post_step),
        ])

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
        refusal = self._hooks[id(optimizer)].refusal
        if refusal is not None and self.splitter.needs_split(optimizer):
            raise TypeError(refusal)
        self.splitter.split(optimizer)
        # ``args`` starts with the optimizer itself; a closure is the first argument after it, or ``closure=``.
        if len(args) > 1 and callable(args[1]):
            return (args[0], self._with_users_groups(optimizer, args[1]), *args[2:]), kwargs
        if kwargs.get("closure") is not None:
            return args, {**kwargs, "closure": self._with_users_groups(optimizer, kwargs["closure"])}
        return None

    def _with_users_groups(self, optimizer: Optimizer, closure: Callable[[], Any]) -> Callable[[], Any]:
        def closure_with_users_groups() -> Any:
            self.splitter.restore(optimizer)
            result = closure()  # if it raises, the user's groups stay in place
            self.splitter.split(optimizer)
            return result

        return closure_with_users_groups

    def _post_step(self, optimizer: Optimizer, args: tuple, kwargs: dict[str, Any]) -> None:
        self.splitter.restore(optimizer)
