"""What an interrupted run keeps: checkpoints on a clock, and one more on Ctrl-C / SIGTERM.

- ``--checkpoint_every``: a cadence in training steps (``500``) or in time (``30s``,
  ``10min``, ``2h``; default ``5min``), on top of the checkpoint at every epoch end. A run
  killed without warning (SIGKILL, out of memory, power) loses at most that much training.
- Ctrl-C (SIGINT) or SIGTERM during training: the step in progress (and its validation, if
  one is running) finishes, that step is checkpointed, and the run stops with its summary,
  which names the checkpoint and its step; exit code 130 (SIGINT) or 143 (SIGTERM). A second
  Ctrl-C stops at once: the last checkpoint on disk stays whole (writes are atomic), and the
  summary names it and its step, or says that nothing can be resumed.

The interrupt checkpoint is written where the periodic ones are (``on_train_batch_end``; at a
step followed by a validation, after the validation), so resuming from it is the same exact
resume as from any periodic checkpoint. Under data parallel the decision to
save and to stop is rank 0's, broadcast every step, so all processes stop after the same step.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def clock() -> float:
    """Seconds, for the time cadence (a function of its own, so tests can drive it)."""
    return time.monotonic()


class Interrupted(KeyboardInterrupt):
    """Raised at the start of the step after a requested stop; ``signum`` says which signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def parse_every(value: Any) -> tuple[int, float]:
    """``--checkpoint_every`` -> ``(steps, seconds)``: ``500`` -> (500, 0), ``"10min"`` ->
    (0, 600), ``0`` -> (0, 0) (epoch ends only). Raises ``ValueError`` with the fix."""
    text = str(value).strip().lower()
    if re.fullmatch(r"\d+", text):
        return int(text), 0.0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)", text)
    if m and float(m.group(1)) > 0:
        return 0, float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(
        f"checkpoint_every: {value!r} is neither a number of training steps nor a duration; "
        f"use e.g. --checkpoint_every=500 (steps), --checkpoint_every=10min (also 30s, 2h), "
        f"or 0 for a checkpoint at epoch ends only")


def describe_every(steps: int, seconds: float) -> str:
    if steps:
        return f"every {steps} steps"
    if seconds:
        return f"every {seconds / 60:g} min" if seconds >= 60 else f"every {seconds:g} s"
    return "at epoch ends"


def validation_follows(trainer: L.Trainer) -> bool:
    """Whether Lightning validates right after this training step (asked in
    ``on_train_batch_end``; Lightning decides in ``on_advance_end`` from the same counters).

    A checkpoint of such a step is written after the validation, as Lightning's epoch
    checkpoints are: one written before it would make a resumed run skip that validation
    (Lightning takes it as done), losing its row if the run died during the validation."""
    loop = trainer.fit_loop.epoch_loop
    try:
        return bool(loop._should_check_val_fx(trainer.fit_loop._data_fetcher))
    except (AttributeError, TypeError):  # (Lightning's private API moved: the common case)
        return trainer.should_stop or loop.batch_progress.is_last_batch


class PeriodicCheckpoint(ModelCheckpoint):
    """``last.ckpt`` plus ``epoch=E-step=S.ckpt`` files (the latest ``keep``; 0: all), written
    at every epoch end, every ``steps`` training steps or ``seconds`` of training, and at the
    step during which SIGINT / SIGTERM arrived (see the module docstring).

    Args:
        steps, seconds: the cadence (``parse_every``); both 0: epoch ends only.
        keep: periodic files kept; ``best.ckpt`` and ``last.ckpt`` are always kept.
        resumed_from: ``(path, step)`` of the checkpoint the run resumed from (the one to
            resume from until this run writes its own).
    """

    def __init__(self, steps: int = 0, seconds: float = 0.0, keep: int = 3,
                 resumed_from: tuple[str, int] | None = None) -> None:
        super().__init__(save_last=True, save_top_k=keep or -1, monitor="step", mode="max",
                         every_n_epochs=1)
        self.steps, self.seconds, self.resumed_from = steps, seconds, resumed_from
        self.requested: int | None = None  # the signal received, until the run stops
        self._stop = False
        self._clock = clock()
        self._old: dict[int, Any] = {}

    @property
    def state_key(self) -> str:  # independent of the cadence: a resume may change it
        return type(self).__name__

    def last_checkpoint(self) -> tuple[str, int] | None:
        """``(path, step)`` of the checkpoint to resume from: this run's ``last.ckpt``, else
        the checkpoint the run resumed from, else ``None`` (nothing can be resumed)."""
        if self._last_global_step_saved and self.last_model_path:
            return self.last_model_path, self._last_global_step_saved
        return self.resumed_from

    def describe(self) -> str:
        return describe_every(self.steps, self.seconds)

    # ---- signals ----------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        super().on_train_start(trainer, pl_module)
        self._clock = clock()
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.getsignal(s)
                signal.signal(s, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            if signum == signal.SIGINT:  # the second Ctrl-C: stop now
                raise KeyboardInterrupt
            return
        self.requested = signum
        name = signal.Signals(signum).name
        again = " Ctrl-C again stops at once." if signum == signal.SIGINT else ""
        print(f"\ndnirnn: {name}: finishing the current step, then writing a checkpoint and "
              f"stopping.{again}", file=sys.stderr, flush=True)

    def _restore_signals(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._old = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        super().on_train_end(trainer, pl_module)
        self._restore_signals()  # (before Lightning restores its own, at its teardown)

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._restore_signals()

    # ---- saving -------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self._stop:
            raise Interrupted(self.requested or signal.SIGINT)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        now = clock()
        due = bool(self.steps) and trainer.global_step % self.steps == 0
        due = due or (bool(self.seconds) and now - self._clock >= self.seconds)
        stop = self.requested is not None
        if trainer.world_size > 1:  # one decision for all processes: rank 0's
            due, stop = trainer.strategy.broadcast((due, stop), src=0)
        self._stop = stop
        if due:
            self._clock = now
        if (due or stop) and not validation_follows(trainer):
            self._save_now(trainer)
        # else: the checkpoint of this step is written after its validation, at the
        # validation's end or the epoch's end (ModelCheckpoint's every_n_epochs=1 saves)

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        super().on_validation_end(trainer, pl_module)
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        stop = self.requested is not None  # a signal during the validation
        if trainer.world_size > 1:
            stop = trainer.strategy.broadcast(stop, src=0)
        if stop:  # (this step's checkpoint: just written, or at the epoch's end, next)
            self._stop = True

    def _save_now(self, trainer: L.Trainer) -> None:
        if self._should_skip_saving_checkpoint(trainer):  # (already saved at this step)
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
