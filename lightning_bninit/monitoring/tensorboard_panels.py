"""What the monitor adds for TensorBoard: a custom-scalars layout, histograms, live heat maps and the summary table.

The scalars themselves go through ``TensorBoardLogger.log_metrics`` as for every logger; these functions write what
``log_metrics`` cannot, through the logger's own ``SummaryWriter`` (``logger.experiment``), so everything lands in the
logger's run folder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch.nn.modules.batchnorm import _BatchNorm

from lightning_bninit.compat import logger_prefixed
from lightning_bninit.method.layers import is_materialized
from lightning_bninit.monitoring.stats import COMPACT_STATS, PREFIX, STATS, metric_key

LAYOUT_CATEGORY = "BN per statistic (a line per layer)"
SUMMARY_CATEGORY = "BN network summaries"


def is_tensorboard_logger(logger: Any) -> bool:
    try:
        from lightning.pytorch.loggers import TensorBoardLogger
    except ImportError:  # pragma: no cover
        return False
    return isinstance(logger, TensorBoardLogger)


def custom_scalars_layout(logger: Any, stats: Sequence[str] = COMPACT_STATS) -> dict[str, Any]:
    """The custom-scalars layout: per statistic one multi-line chart (a line per layer, matched by a regex on the
    section's tags), and the network summaries. Tags carry the logger's prefix, if any."""
    def tag_regex(key: str) -> str:
        return re.escape(logger_prefixed(logger, key))

    per_stat = {stat: ["Multiline", [tag_regex(f"{PREFIX}_{stat}/") + ".*"]] for stat in stats}
    summaries = {
        "peak |x̂| / sqrt(m − 1), max over layers": ["Multiline", [tag_regex(metric_key("all", "xhat_bound_ratio"))]],
        "scale drift / γ₀, mean over layers": ["Multiline", [tag_regex(metric_key("all", "scale_drift_rel"))]],
        "scale min and max over layers": ["Multiline", [tag_regex(metric_key("all", "scale_min")),
                                                         tag_regex(metric_key("all", "scale_max"))]],
        "layers flagged": ["Multiline", [tag_regex(metric_key("all", "layers_near_bound")),
                                         tag_regex(metric_key("all", "layers_collapsed"))]],
    }
    return {LAYOUT_CATEGORY: per_stat, SUMMARY_CATEGORY: summaries}


def add_layout(logger: Any, full: bool) -> None:
    logger.experiment.add_custom_scalars(custom_scalars_layout(logger, STATS if full else COMPACT_STATS))


def add_histograms(logger: Any, layers: Mapping[str, _BatchNorm], labels: Sequence[str], step: int) -> None:
    """``bn_hist_scale/<label>`` and ``bn_hist_shift/<label>``: the layer's values over channels."""
    writer = logger.experiment
    for label, bn in zip(labels, layers.values()):
        if not is_materialized(bn):
            continue
        writer.add_histogram(logger_prefixed(logger, f"bn_hist_scale/{label}"), bn.weight.detach().float().cpu(), step)
        writer.add_histogram(logger_prefixed(logger, f"bn_hist_shift/{label}"), bn.bias.detach().float().cpu(), step)


def add_images(logger: Any, images: Mapping[str, Any], step: int, section: str = "bn_heatmap") -> None:
    """RGB arrays ``(H, W, 3)`` as ``<section>/<name>`` in the images dashboard."""
    for name, rgb in images.items():
        logger.experiment.add_image(logger_prefixed(logger, f"{section}/{name}"), rgb, step, dataformats="HWC")


def add_summary(logger: Any, markdown: str, step: int) -> None:
    """The summary table in the text dashboard (``bn_summary/layers``)."""
    logger.experiment.add_text(logger_prefixed(logger, "bn_summary/layers"), markdown, step)
    logger.experiment.flush()
