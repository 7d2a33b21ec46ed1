"""Revisiting Batch Norm Initialization (Davis & Frank, ECCV 2022) for PyTorch Lightning."""

from lightning_bninit.callback import BNInit
from lightning_bninit.init import InitReport, init_bn_
from lightning_bninit.input_norm import RELU_STD, InputNorm
from lightning_bninit.layers import find_bn_layers
from lightning_bninit.monitor import BNMonitor
from lightning_bninit.param_groups import bn_param_groups
from lightning_bninit.update import SEPARABLE_OPTIMIZERS

__all__ = [
    "BNInit",
    "BNMonitor",
    "InitReport",
    "InputNorm",
    "RELU_STD",
    "SEPARABLE_OPTIMIZERS",
    "bn_param_groups",
    "find_bn_layers",
    "init_bn_",
]
__version__ = "0.1.0"
