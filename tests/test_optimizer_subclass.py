"""Optimizer subclasses that keep their base class's step are accepted whatever the instantiation order.

PyTorch stores its step wrapper on the class of the first instance, so the order is process-global: each order runs
in a fresh process. Separability is decided by the class that defines ``step``, not by comparing ``step`` objects.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from support.launch import run_script
from lightning_bninit.method.update import is_separable, step_owner


@pytest.mark.parametrize("order", ["subclass_first", "base_first"])
def test_subclasses_keep_the_exact_update_in_either_order(order: str) -> None:
    result = json.loads(run_script("optimizer_subclass.py", order, timeout=240).stdout.strip().splitlines()[-1])
    # The process really was in the situation asked for: PyTorch gave the subclasses a step of their own, or not.
    assert set(result["own_step"].values()) == {order == "subclass_first"}
    for name, diff in result["max_diff"].items():
        assert diff < 1e-10, name  # the trajectory of bn_param_groups, in float64
    assert re.search(r"optimizer \S*Overrides: .*separable_optimizers=\[\S*Overrides\]", result["refused_override"])


def test_step_owner_looks_through_pytorchs_wrapper_only() -> None:
    class Named(torch.optim.SGD):
        pass

    class Overrides(torch.optim.SGD):
        def step(self, closure=None):  # noqa: ANN001, ANN201
            return super().step(closure)

    params = [torch.nn.Parameter(torch.zeros(1))]
    for cls in (Named, Overrides):
        cls(params, lr=0.1)  # instantiated: PyTorch wraps (or has wrapped) their step
    assert step_owner(Named) is torch.optim.SGD and step_owner(torch.optim.AdamW) is step_owner(torch.optim.Adam)
    assert step_owner(Overrides) is Overrides
    assert is_separable(Named(params, lr=0.1)) and not is_separable(Overrides(params, lr=0.1))
    assert is_separable(Overrides(params, lr=0.1), extra=[Overrides])
    assert not is_separable(torch.optim.LBFGS(params))
