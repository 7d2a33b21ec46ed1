"""The paper's three optimizer param groups, for users who build their optimizer by hand."""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_bninit.method.layers import OTHER, SCALE, SHIFT, find_bn_layers, update_roles
from lightning_bninit.method.settings import (
    ExemptWeightDecay, Patterns, check_exempt_weight_decay, check_patterns, check_scale_lr_divisor,
)

GROUP_MARKER = "bninit"
"""Key that :func:`bn_param_groups` sets in each group it builds (``"scale"``, ``"shift"`` or ``"other"``).

:class:`~lightning_bninit.BNInit` leaves marked groups alone, so the revised update is never applied twice.
"""


def bn_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    scale_lr_divisor: float = 100.0,
    exempt_weight_decay: ExemptWeightDecay = True,
    include: Patterns = None,
    exclude: Patterns = None,
) -> list[dict[str, Any]]:
    """Param groups for the paper's revised update: BN scales at ``lr / scale_lr_divisor`` without weight decay, BN
    shifts at ``lr`` without weight decay, all other parameters at ``lr`` with ``weight_decay``.

    With ``exempt_weight_decay="1d"`` the groups are those of the authors' ``train.py``: the ``"shift"`` group also
    holds every other parameter with at most one dimension of size > 1 (biases such as a classifier's), so only
    multi-dimensional weights are decayed.

    Frozen parameters (``requires_grad=False``) are left out; empty groups are dropped. Each group carries the key
    ``"bninit"`` so that :class:`~lightning_bninit.BNInit` recognizes it and does not apply the update twice. LR
    schedulers treat the groups as usual, each on its own base lr: the BN scales follow the schedule at
    ``1 / scale_lr_divisor`` of it, except that a schedule's floor (``eta_min``, ``min_lr``) is the floor of the
    scales' group too, not ``floor / scale_lr_divisor`` as with :class:`~lightning_bninit.BNInit` and
    :func:`~lightning_bninit.attach` (README, "Schedule floors").

    Args:
        model: the model whose parameters are grouped.
        lr: the optimizer's learning rate.
        weight_decay: decay for the non-BN parameters.
        scale_lr_divisor: ``c`` in the paper, a finite number >= 1.
        exempt_weight_decay: ``True``: no weight decay on BN scales and shifts; ``"1d"``: none on any parameter with
            at most one dimension of size > 1 either (the authors' groups); ``False``: BN parameters get
            ``weight_decay`` too.
        include: patterns selecting which BN layers get the revised update (see :func:`init_bn_`).
        exclude: patterns of BN layers treated as ordinary parameters.

    Raises:
        ValueError: for a ``scale_lr_divisor`` that is not a finite number >= 1, an ``exempt_weight_decay`` that is
            not ``True``, ``False`` or ``"1d"``, or a bad pattern.

    Example::

        optimizer = torch.optim.SGD(bn_param_groups(model, lr=0.1, weight_decay=5e-4), lr=0.1, momentum=0.9)
    """
    divisor = check_scale_lr_divisor(scale_lr_divisor)
    exempt = check_exempt_weight_decay(exempt_weight_decay)
    layers = find_bn_layers(model, check_patterns(include, "include"), check_patterns(exclude, "exclude"))
    roles = update_roles(model, layers.values(), exempt)
    bn_decay = 0.0 if exempt else weight_decay
    groups: dict[str, dict[str, Any]] = {
        OTHER: {"params": [], "lr": lr, "weight_decay": weight_decay, GROUP_MARKER: OTHER},
        SCALE: {"params": [], "lr": lr / divisor, "weight_decay": bn_decay, GROUP_MARKER: SCALE},
        SHIFT: {"params": [], "lr": lr, "weight_decay": bn_decay, GROUP_MARKER: SHIFT},
    }
    for param in model.parameters():
        if param.requires_grad:
            groups[roles.get(param, OTHER)]["params"].append(param)
    return [group for group in groups.values() if group["params"]]
