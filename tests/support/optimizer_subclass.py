"""Run by test_update_split.py in a fresh process: ``python optimizer_subclass.py {subclass_first|base_first}``.

PyTorch wraps ``step`` on the class of the first optimizer instance, once per class, so whether a subclass has a
``step`` of its own depends on which class was instantiated first in the process. For several optimizers this makes
one subclass that keeps its base's step (only a name, or an extra argument), instantiates the classes in the order
asked, attaches the revised update, trains in float64 next to the hand-built three groups, and prints JSON.
"""

from __future__ import annotations

import copy
import json
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from loops import dataset, plain_loop, reference_fit, tiny_net  # noqa: E402 - no Lightning: starts fast

from lightning_bninit import attach  # noqa: E402

LR, WD, C = 0.01, 1e-2, 100.0


def subclass(base: type[torch.optim.Optimizer], with_argument: bool) -> type[torch.optim.Optimizer]:
    if not with_argument:
        return type(f"My{base.__name__}", (base,), {})

    def __init__(self, params, note: str = "mine", **kwargs) -> None:  # noqa: ANN001, N807
        self.note = note
        base.__init__(self, params, **kwargs)

    return type(f"My{base.__name__}", (base,), {"__init__": __init__})


BASES = {"SGD": {"momentum": 0.9}, "Adam": {}, "AdamW": {}, "RMSprop": {"momentum": 0.5}, "Adagrad": {}}


def main(order: str) -> dict:
    torch.manual_seed(0)
    start = tiny_net().double()
    classes = {name: subclass(getattr(torch.optim, name), with_argument=i % 2 == 1) for i, name in enumerate(BASES)}
    if order == "base_first":
        for name in BASES:
            getattr(torch.optim, name)([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    runs, result = {}, {"own_step": {}, "max_diff": {}, "refused_override": None}
    for name, cls in classes.items():  # every subclass instantiated (and checked) before the bases' references
        net = copy.deepcopy(start)
        optimizer = cls(net.parameters(), lr=LR, weight_decay=WD, **BASES[name])
        attach(net, optimizer, scale_lr_divisor=C)
        result["own_step"][name] = "step" in cls.__dict__
        runs[name] = (net, optimizer)
    for name, (net, optimizer) in runs.items():
        plain_loop(net, optimizer, None, dataset(), 4, 2)
        make = partial(getattr(torch.optim, name), lr=LR, weight_decay=WD, **BASES[name])
        expected = reference_fit(start, dataset(), make, None, 4, 2, init_scale=0.1, divisor=C, lr=LR,
                                 weight_decay=WD)
        result["max_diff"][name] = max(float((a - b).detach().abs().max() / b.detach().abs().max().clamp_min(1e-300))
                                       for a, b in zip(net.parameters(), expected.parameters()))

    class Overrides(torch.optim.AdamW):
        def step(self, closure=None):  # noqa: ANN001, ANN201
            return super().step(closure)

    net = tiny_net()
    try:
        attach(net, Overrides(net.parameters()))
    except TypeError as err:
        result["refused_override"] = str(err)
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
