"""BN statistics: what is measured (``stats``), how (``hooks``), what is kept (``history``), where it goes (writers),
and the same statistics as a plain function for loops without a Trainer (``functional``).

May import torch, :mod:`lightning_bninit.compat`, the method's layer lookup and, inside the writers, Lightning's
loggers, W&B and matplotlib; never the method's update or the experiment tooling. The callback that drives it is
:class:`lightning_bninit.callbacks.BNMonitor`.
"""

from lightning_bninit.monitoring.functional import XhatCapture, bn_statistics, capture_xhat
from lightning_bninit.monitoring.history import MonitorHistory
from lightning_bninit.monitoring.stats import (
    ALL_MAX, ALL_MEAN, PARAM_STATS, STATS, XHAT_STATS, metric_key, param_stats, summarize, to_metrics, xhat_stats,
)

__all__ = [
    "ALL_MAX", "ALL_MEAN", "MonitorHistory", "PARAM_STATS", "STATS", "XHAT_STATS", "XhatCapture", "bn_statistics",
    "capture_xhat", "metric_key", "param_stats", "summarize", "to_metrics", "xhat_stats",
]
