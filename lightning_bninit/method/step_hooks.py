"""Applies a :class:`~lightning_bninit.method.update.GroupSplitter` at every step, through the optimizer's own hooks.

One implementation for every caller: the Lightning callback (``deferred=True``) and plain loops or Fabric
(``deferred=False``); ``docs/design.md`` ("The step split") says why the callback defers.
"""

from __future__ import annotations

import weakref
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
    handles: list[RemovableHandle] = field(default_factory=list)
    in_step: bool = False
    armed: bool = False


class RevisedUpdate:
    """Splits the param groups of attached optimizers for the length of each ``step()`` and restores them after.

    Args:
        splitter: which parameters move to which group, and with which ``lr`` / ``weight_decay``.
        deferred: ``False``: every step is split, from the optimizer's step pre-hook. ``True``: a step is split only
            once :meth:`arm` was called for it: at once when called inside ``step()`` (Lightning's
            ``on_before_optimizer_step`` with plain or bf16 precision), else by the pre-hook of the next step that
            really runs (with a GradScaler, which skips steps with non-finite gradients).
    """

    def __init__(self, splitter: GroupSplitter, deferred: bool = False) -> None:
        self.splitter = splitter
        self.deferred = deferred
        self._hooks: dict[int, _Hooks] = {}

    def is_attached(self, optimizer: Optimizer) -> bool:
        return id(optimizer) in self._hooks

    def attach(self, optimizer: Optimizer) -> None:
        """Register the step hooks on ``optimizer`` (a no-op when already attached).

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
        self._hooks[id(optimizer)] = _Hooks(optimizer=weakref.ref(optimizer), handles=[
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_step_post_hook(self._post_step),
        ])

    def arm(self, optimizer: Optimizer) -> None:
        """(``deferred``) Split the step of ``optimizer`` that is running now, or else its next one."""
        hooks = self._hooks.get(id(optimizer))
        if hooks is None:
            return
        if hooks.in_step:
            self.splitter.split(optimizer)
        else:
            hooks.armed = True

    def disarm(self) -> None:
        """(``deferred``) Forget an :meth:`arm` whose step did not run (a step the GradScaler skipped)."""
        for hooks in self._hooks.values():
            hooks.armed = False

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

    def _pre_step(self, optimizer: Optimizer, args: tuple, kwargs: dict[str, Any]) -> None:
        hooks = self._hooks[id(optimizer)]
        hooks.in_step = True
        # A step that raised never ran its post-hook; its split, if any, is undone before this step splits afresh.
        self.splitter.restore(optimizer)
        if hooks.armed or not self.deferred:
            self.splitter.split(optimizer)

    def _post_step(self, optimizer: Optimizer, args: tuple, kwargs: dict[str, Any]) -> None:
        hooks = self._hooks[id(optimizer)]
        hooks.in_step = hooks.armed = False
        self.splitter.restore(optimizer)
