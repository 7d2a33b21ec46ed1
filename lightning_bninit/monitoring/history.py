"""What the monitor recorded during fit: the one input of its writers (W&B panels, PNG plots, console table)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_bninit.monitoring.stats import PARAM_STATS, STATS


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

    def summary_rows(self) -> list[dict[str, Any]]:
        """Per layer: ``layer``, ``init`` (mean initial scale), ``final_scale_mean``, ``scale_drift``, ``peak_xhat``.

        The final values are those measured at the end of fit, or else at the last logging step.
        """
        last = self._last_param_stats()
        peaks = self.peaks("xhat_absmax") if self.rows else [float("nan")] * len(self.layer_names)
        rows = []
        for name, peak in zip(self.layer_names, peaks):
            final = self.final.get(name) or last.get(name)
            rows.append({
                "layer": name,
                "init": self.initial_scale.get(name, float("nan")),
                "final_scale_mean": final[PARAM_STATS.index("scale_mean")] if final else float("nan"),
                "scale_drift": final[PARAM_STATS.index("scale_drift")] if final else float("nan"),
                "peak_xhat": peak,
            })
        return rows

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
        return cls(
            layer_names=list(state.get("layer_names", [])),
            steps=[int(s) for s in state.get("steps", torch.zeros(0)).tolist()],
            rows=[list(r) for r in state.get("rows", torch.zeros(0, 0)).tolist()],
            initial_scale=dict(state.get("initial_scale", {})),
            final={k: list(v) for k, v in state.get("final", {}).items()},
        )
