"""LR schedulers that set every param group's lr from one value, which undoes hand-built BN scale groups."""

from __future__ import annotations

from typing import Any

from torch.optim.lr_scheduler import CyclicLR, OneCycleLR

from lightning_bninit.method.layers import SCALE
from lightning_bninit.method.param_groups import GROUP_MARKER


def _peaks(scheduler: Any) -> list[float] | None:
    if isinstance(scheduler, OneCycleLR):
        return [group.get("max_lr") for group in scheduler.optimizer.param_groups]
    if isinstance(scheduler, CyclicLR):
        return list(scheduler.max_lrs)
    return None


def cyclic_schedule_warning(scheduler: Any, scale_lr_divisor: float) -> str | None:
    """Why ``scheduler`` gives the BN scale group of :func:`~lightning_bninit.bn_param_groups` the same lr as the
    other parameters, or ``None`` when it does not (or when ``c = 1``, where that is intended).

    ``OneCycleLR`` and ``CyclicLR`` set each group's lr from ``max_lr`` (and ``base_lr``): a scalar gives every group
    the same, so the scale group's ``lr / c`` is lost. The split that ``BNInit`` and ``attach`` make on the user's own
    groups is not affected: it takes ``lr / c`` of whatever lr the schedule sets.
    """
    peaks = _peaks(scheduler)
    if peaks is None or scale_lr_divisor == 1:
        return None
    groups = scheduler.optimizer.param_groups
    scales = [i for i, g in enumerate(groups) if g.get(GROUP_MARKER) == SCALE]
    others = [i for i, g in enumerate(groups) if g.get(GROUP_MARKER) not in (None, SCALE)]
    if not any(peaks[i] == peaks[j] for i in scales for j in others):
        return None
    name = type(scheduler).__name__
    return (
        f"{name} sets the same peak lr ({peaks[scales[0]]:g}) for the BN scales' param group (built by "
        f"bn_param_groups, lr / c) as for the other groups: {name} sets every group's lr from its max_lr, so the BN "
        f"scales train at the full lr, not lr / {scale_lr_divisor:g}. Give it one value per group, in a list: "
        f"max_lr=[g['lr'] for g in optimizer.param_groups] (and base_lr likewise for CyclicLR), or build the "
        f"optimizer on model.parameters() and let BNInit split the groups (the split follows any schedule at 1/c)."
    )
