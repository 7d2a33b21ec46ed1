"""Revisiting Batch Norm Initialization (Davis & Frank, ECCV 2022) for PyTorch Lightning.

The parts: :mod:`~lightning_bninit.method` (plain PyTorch), :mod:`~lightning_bninit.monitoring` (BN statistics),
:mod:`~lightning_bninit.callbacks` (``BNInit``, ``BNMonitor``), :mod:`~lightning_bninit.cli` (the LightningCLI flag)
and :mod:`~lightning_bninit.experiments` (``bninit compare`` / ``report``); ``docs/design.md`` shows how they fit.
The names below are imported on first use, so the ``bninit`` command starts without importing torch.
"""

from __future__ import annotations

import logging
from importlib import import_module, metadata
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BNInit": "lightning_bninit.callbacks.bninit",
    "BNInitHandle": "lightning_bninit.method.attach",
    "attach": "lightning_bninit.method.attach",
    "BNMonitor": "lightning_bninit.callbacks.bn_monitor",
    "InitReport": "lightning_bninit.method.init",
    "init_bn_": "lightning_bninit.method.init",
    "InputNorm": "lightning_bninit.method.input_norm",
    "RELU_STD": "lightning_bninit.method.input_norm",
    "find_bn_layers": "lightning_bninit.method.layers",
    "bn_param_groups": "lightning_bninit.method.param_groups",
    "SEPARABLE_OPTIMIZERS": "lightning_bninit.method.update",
    "bn_statistics": "lightning_bninit.monitoring.functional",
    "capture_xhat": "lightning_bninit.monitoring.functional",
}
__all__ = sorted(_EXPORTS)

try:
    __version__ = metadata.version("lightning-bninit")
except metadata.PackageNotFoundError:  # pragma: no cover - imported from a source tree that is not installed
    __version__ = "0+unknown"

# Messages (the input BN, the monitor's summary table) go to this logger, set up as Lightning sets up its own: INFO,
# printed to stderr unless the application configured logging. Silence with
# `logging.getLogger("lightning_bninit").setLevel(logging.WARNING)`.
_logger = logging.getLogger(__name__)
_logger.setLevel(logging.INFO)
if not logging.getLogger().hasHandlers():
    _logger.addHandler(logging.StreamHandler())
    _logger.propagate = False

if TYPE_CHECKING:  # pragma: no cover
    from lightning_bninit.callbacks.bn_monitor import BNMonitor
    from lightning_bninit.callbacks.bninit import BNInit
    from lightning_bninit.method.attach import BNInitHandle, attach
    from lightning_bninit.method.init import InitReport, init_bn_
    from lightning_bninit.method.input_norm import RELU_STD, InputNorm
    from lightning_bninit.method.layers import find_bn_layers
    from lightning_bninit.method.param_groups import bn_param_groups
    from lightning_bninit.method.update import SEPARABLE_OPTIMIZERS
    from lightning_bninit.monitoring.functional import bn_statistics, capture_xhat


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_bninit' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
