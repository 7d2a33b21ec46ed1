"""Each reader of Lightning's private attributes (lightning_bninit.compat), checked against the installed Lightning."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from support.helpers import Classifier, dataset, loader, tiny_net, trainer

from lightning_bninit import compat


def _sgd(params):
    return torch.optim.SGD(params, lr=0.1)


class Probe(pl.Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, bool, int]] = []
        self.compiled: list[bool] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.seen.append((compat.batches_that_stepped(trainer), compat.should_accumulate(trainer),
                          compat.log_every_n_steps(trainer)))
        self.compiled.append(compat.is_compiled(pl_module))


def test_step_counter_accumulation_and_log_interval() -> None:
    probe = Probe()
    trainer(max_steps=2, accumulate_grad_batches=2, log_every_n_steps=7, callbacks=[probe]).fit(
        Classifier(tiny_net(), _sgd), loader(dataset(dtype=torch.float32)))
    # 4 micro-batches, the optimizer steps on the 2nd and 4th; the counter is the one Lightning logs with
    assert probe.seen == [(0, True, 7), (0, False, 7), (1, True, 7), (1, False, 7)]
    assert probe.compiled == [False] * 4


def test_is_compiled_sees_a_compiled_module() -> None:
    probe = Probe()
    model = Classifier(tiny_net(), _sgd)
    trainer(max_steps=1, callbacks=[probe]).fit(torch.compile(model, backend="eager"),
                                                 loader(dataset(dtype=torch.float32)))
    assert probe.compiled == [True]
    inner = Classifier(tiny_net(), _sgd)
    inner.net = torch.compile(inner.net, backend="eager")
    assert compat.is_compiled(inner) and not compat.is_compiled(Classifier(tiny_net(), _sgd))


def test_is_forward_redirected_during_lightnings_redirection() -> None:
    """What the input BN's forward pre-hook sees: redirected while the wrapper calls the module to reach
    ``training_step``; not in ``training_step`` itself (where the real forward runs) nor after."""
    from lightning.pytorch.strategies.strategy import _ForwardRedirection

    seen: list[tuple[str, bool]] = []

    class Module(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

        def training_step(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(("training_step", compat.is_forward_redirected(self)))
            return self(x)

    module = Module()
    module.register_forward_pre_hook(lambda m, args: seen.append(("pre-hook", compat.is_forward_redirected(m))))
    wrapper = torch.nn.Sequential(module)  # stands in for DDP: calling it calls the module
    assert not compat.is_forward_redirected(module)
    _ForwardRedirection()(wrapper, module, "training_step", torch.ones(1))
    assert seen == [("pre-hook", True), ("training_step", False), ("pre-hook", False)]
    assert not compat.is_forward_redirected(module)


def test_logger_prefix(tmp_path) -> None:
    assert compat.logger_prefixed(CSVLogger(str(tmp_path), prefix="run1"), "bn/x") == "run1-bn/x"
    assert compat.logger_prefixed(CSVLogger(str(tmp_path)), "bn/x") == "bn/x"


def test_fabric_wrappers_are_seen_through() -> None:
    """What fabric.setup returns wraps the objects attach works on: the module and the optimizer whose hooks run."""
    from lightning.fabric import Fabric
    from lightning.fabric.wrappers import _FabricModule, _FabricOptimizer

    net = tiny_net()
    optimizer = _sgd(net.parameters())
    model, wrapped = Fabric(accelerator="cpu", devices=1).setup(net, optimizer)
    assert isinstance(model, _FabricModule) and isinstance(wrapped, _FabricOptimizer)
    assert compat.fabric_module(model) is net and compat.fabric_optimizer(wrapped) is optimizer
    assert compat.fabric_module(net) is None and compat.fabric_optimizer(optimizer) is None
    # A hook registered through the wrapper lands on the optimizer and is called with it, not with the wrapper.
    called_with = []
    wrapped.register_step_pre_hook(lambda opt, args, kwargs: called_with.append(opt))
    wrapped.step()
    assert called_with == [optimizer]
