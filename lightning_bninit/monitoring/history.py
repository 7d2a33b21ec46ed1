"""What the monitor recorded during fit: the one input of its writers (W&B panels, PNG plots, console table)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_bninit.monitoring.stats import PARAM_STATS, STATS, layer_labels


@dataclass
class MonitorHistory:
    """Per logging step, every statistic of every layer; plus each layer's initial and final scale.

    ``rows[i]`` holds ``len(layer_names) * len(STATS)`` floats, layer-major (NaN where unknown), for ``steps[i]``.
    """

    layer_names: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    rows: list[list[float]] = field(default_factory=list)
    initial_scale: dict[str, float] = field(default_factory=dict)
    """Per layer, the mean scale at the start of fit."""
    final: dict[str, list[float]] = field(default_factory=dict)
    """Per layer, :data:`PARAM_STATS` at the end of fit."""

    def append(self, step: int, values: list[list[float]]) -> None:
        """Record one logging step: ``values[layer][stat]`` in the order of ``layer_names`` and ``STATS``."""
        self.steps.append(int(step))
        self.rows.append([v for row in values for v in row])

    def series(self, stat: str) -> list[list[float]]:
        """Per layer (network order), the values of ``stat`` at each logging step."""
        k, n = STATS.index(stat), len(STATS)
        return [[row[i * n + k] for row in self.rows] for i in range(len(self.layer_names))]

    def peaks(self, stat: str) -> list[float]:
        """Per layer, the largest value of ``stat`` over the logged steps (NaN where never measured)."""
        out = []
        for values in self.series(stat):
            valid = [v for v in values if not math.isnan(v)]
            out.append(max(valid) if valid else float("nan"))
        return out

    @property
    def labels(self) -> list[str]:
        """The layers' labels in the logged keys (``bn_<stat>/<label>``), in network order."""
        return layer_labels(self.layer_names)

    def summary_rows(self) -> list[dict[str, Any]]:
        """Per layer, worst first (highest peak |x̂| / sqrt(m − 1), then largest drift / γ₀): ``layer``, ``m``,
        ``sqrt_m_minus_1``, ``peak_xhat``, ``peak_ratio``, ``scale_drift_rel``, ``shift_drift``, ``init`` (mean γ₀),
        ``final_scale_mean``, ``scale_drift``.

        Peaks are maxima over the logged steps; ``m`` is that of the step of the peak ratio (the last batch of an
        epoch can be smaller); the final values are those measured at the end of fit, or else at the last logging
        step.
        """
        last = self._last_param_stats()
        rows = []
        for name, (m, ratio, peak) in zip(self.layer_names, self._peak_ratio_and_m()):
            final = self.final.get(name) or last.get(name)
            value = (lambda stat: final[PARAM_STATS.index(stat)] if final else math.nan)  # noqa: E731
            rows.append({
                "layer": name, "m": m, "sqrt_m_minus_1": math.sqrt(m - 1) if m > 1 else math.nan,
                "peak_xhat": peak, "peak_ratio": ratio, "scale_drift_rel": value("scale_drift_rel"),
                "shift_drift": value("shift_drift"), "init": self.initial_scale.get(name, math.nan),
                "final_scale_mean": value("scale_mean"), "scale_drift": value("scale_drift"),
            })
        return sorted(rows, key=_worst_first)

    def _peak_ratio_and_m(self) -> list[tuple[float, float, float]]:
        """Per layer, (m at the step of the peak ratio, the peak ratio, the peak |x̂|); NaN where never measured."""
        if not self.rows:
            return [(math.nan, math.nan, math.nan)] * len(self.layer_names)
        out = []
        peaks = self.peaks("xhat_absmax")
        for ratios, ms, peak in zip(self.series("xhat_bound_ratio"), self.series("m"), peaks):
            valid = [(r, m) for r, m in zip(ratios, ms) if not math.isnan(r)]
            ratio, m = max(valid) if valid else (math.nan, math.nan)
            out.append((m, ratio, peak))
        return out

    def _last_param_stats(self) -> dict[str, list[float]]:
        if not self.rows:
            return {}
        n, p = len(STATS), len(PARAM_STATS)
        row = self.rows[-1]
        return {name: row[i * n: i * n + p] for i, name in enumerate(self.layer_names)}

    def state_dict(self) -> dict[str, Any]:
        """Plain containers and tensors only: loadable with ``torch.load(weights_only=True)``."""
        width = len(self.layer_names) * len(STATS)
        return {
            "layer_names": list(self.layer_names),
            "steps": torch.tensor(self.steps, dtype=torch.int64),
            "rows": torch.tensor(self.rows, dtype=torch.float64).reshape(len(self.rows), width),
            "initial_scale": dict(self.initial_scale),
            "final": {k: list(v) for k, v in self.final.items()},
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> MonitorHistory:
        """The history saved by :meth:`state_dict`; one saved with other columns (0.2) gives an empty history of
        the same layers."""
        names = list(state.get("layer_names", []))
        rows = state.get("rows", torch.zeros(0, 0))
        if rows.numel() and rows.shape[1] != len(names) * len(STATS):
            return cls(layer_names=names, initial_scale=dict(state.get("initial_scale", {})))
        return cls(
            layer_names=list(state.get("layer_names", [])),
            steps=[int(s) for s in state.get("steps", torch.zeros(0)).tolist()],
            rows=[list(r) for r in state.get("rows", torch.zeros(0, 0)).tolist()],
            initial_scale=dict(state.get("initial_scale", {})),
            final={k: list(v) for k, v in state.get("final", {}).items() if len(v) == len(PARAM_STATS)},
        )


def _worst_first(row: dict[str, Any]) -> tuple[float, float]:
    def desc(v: float) -> float:
        return -v if not math.isnan(v) else math.inf

    return desc(row["peak_ratio"]), desc(row["scale_drift_rel"])
