"""``WallClock``: training time as a metric, for comparisons at equal time.

A Lightning callback that logs, at every logged step, the seconds spent in training steps so
far (validation excluded):

- ``time/train_s``: wall-clock seconds;
- ``time/train_cpu_s``: this process's CPU seconds (``time.process_time``). With one thread
  a process (``OMP_NUM_THREADS=1``, as the sweeps run) this is the wall time the run would
  have taken on a core of its own: it does not grow when other processes share the cores.

The counts travel in the checkpoint, so a resumed run continues them (the time the run was
stopped is not counted), and ``metrics.csv`` gives the level or loss against training time:

    dnirnn fit --config repeat_copy_dni --trainer.callbacks+=dnirnn.wallclock.WallClock
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class WallClock(L.Callback):
    """Logs ``time/train_s`` and ``time/train_cpu_s`` (see the module docstring)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self._start: tuple[float, float] | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start[0]
            self.cpu_seconds += time.process_time() - self._start[1]
            self._start = None
        n = trainer.log_every_n_steps
        if trainer.is_global_zero and n > 0 and trainer.global_step % n == 0:
            for lg in trainer.loggers:
                lg.log_metrics({"time/train_s": self.seconds,
                                "time/train_cpu_s": self.cpu_seconds}, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "cpu_seconds": self.cpu_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seconds = float(state.get("seconds", 0.0))
        self.cpu_seconds = float(state.get("cpu_seconds", 0.0))
