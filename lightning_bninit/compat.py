"""The one place that reads Lightning's private attributes: a Lightning upgrade that renames one breaks here.

Each function documents what it relies on; ``tests/test_compat.py`` checks each against the installed Lightning.
Nothing here imports Lightning at module level, so :mod:`lightning_bninit.method` can use it and stay pure torch.
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn


def batches_that_stepped(trainer: Any) -> int:
    """Optimizer steps taken so far in fit; the step Lightning passes to ``logger.log_metrics``.

    Relies on ``trainer.fit_loop.epoch_loop._batches_that_stepped`` (Lightning >= 2.0).
    """
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def should_accumulate(trainer: Any) -> bool:
    """Whether the current micro-batch only accumulates gradients (the optimizer does not step on it).

    Relies on ``trainer.fit_loop.epoch_loop._should_accumulate()`` (Lightning >= 2.0).
    """
    return bool(trainer.fit_loop.epoch_loop._should_accumulate())


def log_every_n_steps(trainer: Any) -> int:
    """The Trainer's ``log_every_n_steps``: set on the Trainer by its logger connector, not declared on the class."""
    return int(trainer.log_every_n_steps)


def is_compiled(pl_module: nn.Module) -> bool:
    """Whether the LightningModule, or one of its submodules, runs under ``torch.compile``.

    Relies on ``LightningModule._compiler_ctx``, which Lightning sets when ``fit`` receives a compiled module.
    """
    if getattr(pl_module, "_compiler_ctx", None) is not None:
        return True
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # pragma: no cover - torch without dynamo
        return False
    return any(isinstance(m, OptimizedModule) for m in pl_module.modules())


def is_forward_redirected(module: nn.Module) -> bool:
    """Whether ``module.forward`` is patched on the instance right now.

    Lightning's forward redirection (DDP, FSDP, DeepSpeed strategies: ``_ForwardRedirection``) replaces the
    instance's ``forward`` while it calls the wrapped module with the batch to reach ``training_step``.
    """
    patched = module.__dict__.get("forward")
    return patched is not None and getattr(patched, "__func__", None) is not type(module).forward


def logger_prefixed(logger: Any, key: str) -> str:
    """``key`` as the logger writes it: with the logger's ``prefix`` (``WandbLogger(prefix=...)``), if any.

    Relies on ``Logger._prefix`` and ``LOGGER_JOIN_CHAR``, which Lightning's loggers use in ``log_metrics``.
    """
    prefix = getattr(logger, "_prefix", "") or ""
    return f"{prefix}{getattr(logger, 'LOGGER_JOIN_CHAR', '-')}{key}" if prefix else key


def _fabric_class(name: str) -> type | None:
    # Only looked up when Fabric is already imported: an object cannot be a Fabric wrapper otherwise, and a plain
    # PyTorch user does not pay for importing Lightning.
    for module_name in ("lightning.fabric.wrappers", "lightning_fabric.wrappers"):
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, name):
            return getattr(module, name)
    return None


def fabric_module(model: nn.Module) -> nn.Module | None:
    """The module that ``fabric.setup`` wrapped, if ``model`` is such a wrapper (else ``None``).

    Relies on ``lightning.fabric.wrappers._FabricModule`` and its public ``module`` property (the original module).
    """
    cls = _fabric_class("_FabricModule")
    return model.module if cls is not None and isinstance(model, cls) else None


def fabric_optimizer(optimizer: Any) -> Any:
    """The optimizer that ``fabric.setup`` wrapped, if ``optimizer`` is such a wrapper (else ``None``).

    Relies on ``lightning.fabric.wrappers._FabricOptimizer`` and its public ``optimizer`` property; the wrapper is a
    subclass of the optimizer's class whose hooks live on the original, which is what they are called with.
    """
    cls = _fabric_class("_FabricOptimizer")
    return optimizer.optimizer if cls is not None and isinstance(optimizer, cls) else None
