"""The monitor's end-of-fit summary as a plain-text table (no dependency beyond the standard library)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

TITLE = "BN layers at the end of fit"
COLUMNS = (("layer", "Layer"), ("init", "Init scale"), ("final_scale_mean", "Final scale mean"),
           ("scale_drift", "Scale drift"), ("peak_xhat", "Peak |x̂|"))


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "-" if value is None or math.isnan(value) else f"{value:.4g}"


def format_summary(rows: Sequence[dict[str, Any]]) -> str:
    """One line per layer (from :meth:`MonitorHistory.summary_rows`), columns aligned, under a title line."""
    cells = [[title for _, title in COLUMNS]] + [[_fmt(row[key]) for key, _ in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]

    def line(values: list[str]) -> str:
        first = values[0].ljust(widths[0])
        return "  ".join([first] + [v.rjust(w) for v, w in zip(values[1:], widths[1:])])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([TITLE, line(cells[0]), rule, *(line(c) for c in cells[1:])])
