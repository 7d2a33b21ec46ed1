"""The monitor's end-of-fit summary as a plain-text table (no dependency beyond the standard library)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from typing import Any

TITLE = "BN layers at the end of fit, worst first"
COLUMNS = (("layer", "Layer"), ("m", "m"), ("sqrt_m_minus_1", "sqrt(m-1)"), ("peak_xhat", "Peak |x̂|"),
           ("peak_ratio", "Peak / sqrt(m-1)"), ("scale_drift_rel", "Scale drift / γ₀"),
           ("shift_drift", "Shift drift"), ("init", "γ₀"))
"""The summary table's columns (keys of :meth:`MonitorHistory.summary_rows`) and their titles."""


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "-" if value is None or math.isnan(value) else f"{value:.4g}"


def format_summary(rows: Sequence[dict[str, Any]], title: str = TITLE) -> str:
    """One line per layer (from :meth:`MonitorHistory.summary_rows`), columns aligned, under a title line."""
    cells = [[title for _, title in COLUMNS]] + [[_fmt(row[key]) for key, _ in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]

    def line(values: list[str]) -> str:
        first = values[0].ljust(widths[0])
        return "  ".join([first] + [v.rjust(w) for v, w in zip(values[1:], widths[1:])])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([title, line(cells[0]), rule, *(line(c) for c in cells[1:])])


def format_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The same table in Markdown (TensorBoard's text dashboard renders it)."""
    head = "| " + " | ".join(title.replace("|", "\\|") for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" if key == "layer" else "---:" for key, _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_fmt(row[key]) for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def write_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
    """The table as CSV, every column of :meth:`MonitorHistory.summary_rows`, worst layers first."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [key for key, _ in COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
