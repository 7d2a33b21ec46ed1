"""Optional dependencies: one clear message naming the extra to install, instead of a bare ImportError."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

#: Which extra brings which importable package.
EXTRA_OF = {
    "jsonargparse": "cli",
    "yaml": "experiments",
    "scipy": "experiments",
    "numpy": "experiments",
    "matplotlib": "experiments",
    "rich": "experiments",
    "ray": "ray",
}
PIP_NAME = {"yaml": "pyyaml"}


class MissingExtraError(ImportError):
    """An optional package is not installed; the message says which extra brings it."""


def message(module: str, feature: str) -> str:
    top = module.split(".")[0]
    extra = EXTRA_OF.get(top, "all")
    return (f"{feature} needs the package '{PIP_NAME.get(top, top)}', which is not installed: "
            f"pip install 'lightning-bninit[{extra}]'")


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``feature`` and the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(message(module, feature)) from err


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
