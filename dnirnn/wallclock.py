"""``WallClock``: training wall time as a metric, for comparisons at equal time.

A Lightning callback that logs ``time/train_s``, the wall-clock seconds spent in training
steps so far (validation excluded), at every logged step. The count travels in the
checkpoint, so a resumed run continues it (the time the run was stopped is not counted), and
``metrics.csv`` gives the level or loss against training time:

    dnirnn fit --config repeat_copy_dni --trainer.callbacks+=dnirnn.wallclock.WallClock
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class WallClock(L.Callback):
    """Logs ``time/train_s`` (see the module docstring)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self._start = None
        n = trainer.log_every_n_steps
        if trainer.is_global_zero and n > 0 and trainer.global_step % n == 0:
            for lg in trainer.loggers:
                lg.log_metrics({"time/train_s": self.seconds}, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seconds = float(state.get("seconds", 0.0))
