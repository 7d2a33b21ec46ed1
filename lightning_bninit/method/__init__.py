"""The method in plain PyTorch: find BN layers, re-initialize them, the revised update, the input BN.

May import torch, :mod:`lightning_bninit.compat` and itself; never Lightning, the monitor or the experiment
tooling. Everything the callbacks do to training lives here (:func:`~lightning_bninit.method.application.apply_method`), so
plain loops and Fabric use the same code through :func:`~lightning_bninit.method.attach.attach`.
"""

from lightning_bninit.method.init import InitReport, init_bn_, reset_bn_
from lightning_bninit.method.input_norm import RELU_STD, InputNorm, attach_input_norm, find_input_norm
from lightning_bninit.method.layers import find_bn_layers, param_roles
from lightning_bninit.method.param_groups import GROUP_MARKER, bn_param_groups
from lightning_bninit.method.attach import BNInitHandle, attach
from lightning_bninit.method.settings import MethodSettings
from lightning_bninit.method.step_hooks import RevisedUpdate
from lightning_bninit.method.application import MethodApplication, apply_method
from lightning_bninit.method.update import SEPARABLE_OPTIMIZERS, GroupSplitter, is_separable, step_owner

__all__ = [
    "BNInitHandle", "GROUP_MARKER", "GroupSplitter", "InitReport", "InputNorm", "MethodSettings", "RELU_STD",
    "RevisedUpdate", "SEPARABLE_OPTIMIZERS", "MethodApplication", "attach", "attach_input_norm", "bn_param_groups",
    "find_bn_layers", "find_input_norm", "init_bn_", "is_separable", "param_roles", "reset_bn_", "step_owner",
    "apply_method",
]
