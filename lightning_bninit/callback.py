"""Old import path of :class:`~lightning_bninit.callbacks.bninit.BNInit` (0.1), kept for the class paths in saved configs and
command lines of runs made with 0.1; removed in 0.3. Import from ``lightning_bninit.callbacks.bninit``."""

from lightning_bninit.callbacks.bninit import BNInit

__all__ = ["BNInit"]
