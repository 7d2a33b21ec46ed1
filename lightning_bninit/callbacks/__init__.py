"""The Lightning callbacks: :class:`BNInit` (the method, with its monitor) and :class:`BNMonitor` (statistics only).

Thin wiring of :mod:`lightning_bninit.method` and :mod:`lightning_bninit.monitoring` into Lightning's hooks; may
import those two, :mod:`lightning_bninit.compat` and Lightning, never the experiment tooling.
"""

from lightning_bninit.callbacks.bn_monitor import BNMonitor
from lightning_bninit.callbacks.bninit import BNInit

__all__ = ["BNInit", "BNMonitor"]
