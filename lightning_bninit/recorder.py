"""Old import path of :class:`~lightning_bninit.experiments.recorder.RunRecorder` (0.1), kept for the class paths in saved configs and
command lines of runs made with 0.1; removed in 0.3. Import from ``lightning_bninit.experiments.recorder``."""

from lightning_bninit.experiments.recorder import RunRecorder

__all__ = ["RunRecorder"]
