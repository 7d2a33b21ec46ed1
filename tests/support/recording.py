"""A logger that keeps every call, for the monitor's tests."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import Logger


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` and ``log_hyperparams`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int | None, dict[str, Any]]] = []
        self.hparams: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.calls.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.hparams.append(dict(params))

    @property
    def rows(self) -> list[tuple[int | None, dict[str, Any]]]:
        """The ``log_metrics`` calls, (step, metrics) each."""
        return self.calls

    def bn_steps(self) -> list[int | None]:
        return [step for step, metrics in self.calls if any(k.startswith("bn/") for k in metrics)]
