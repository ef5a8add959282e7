"""The copy-task curriculum (DNI / NTM practice) as a Lightning callback, and the level at
which `dnirnn validate / test` score a copy-task checkpoint (``ScoreAtSolvedLevel``)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


class Curriculum(L.Callback):
    """Raises the level when the mean training error falls below ``threshold``.

    The error is bits per answer step, averaged on the device over the last ``check_every``
    training steps; the callback reads it (one host sync) every ``check_every`` steps. Levels
    go copy: L -> L+1; repeat copy: R up to L, then L+1 (see ``dnirnn.tasks.CopyTask``).

    Args:
        threshold: bits per answer step under which a level counts as solved.
        check_every: training steps averaged per decision.
        max_level: stop training once this level (answer length L*R) is solved (0: never).
    """

    def __init__(self, threshold: float = 0.15, check_every: int = 10, max_level: int = 0) -> None:
        if threshold <= 0:
            raise ValueError(f"Curriculum threshold must be > 0, got {threshold}")
        if check_every < 1:
            raise ValueError(f"Curriculum check_every must be >= 1, got {check_every}")
        self.threshold, self.check_every, self.max_level = threshold, check_every, max_level
        self.error_sum: torch.Tensor | None = None
        self.steps = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs, batch, idx) -> None:
        error = pl_module.last_train_error
        if error is None:
            return
        self.error_sum = error.detach() if self.error_sum is None else self.error_sum + error
        self.steps += 1
        if self.steps < self.check_every:
            return
        total = self.error_sum
        if trainer.world_size > 1:  # every process must take the same decision
            total = trainer.strategy.reduce(total.clone(), reduce_op="mean")
        mean = float(total) / self.steps  # the one host sync, every check_every steps
        self.error_sum, self.steps = None, 0
        task = pl_module.task
        if mean < self.threshold:
            task.advance()
            if self.max_level and task.max_level_solved >= self.max_level:
                trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"error_sum": self.error_sum, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.error_sum, self.steps = state["error_sum"], state["steps"]


def previous_level(length: int, repeats: int, repeat: bool) -> tuple[int, int]:
    """The curriculum level before ``(length, repeats)`` (the inverse of ``next_level``)."""
    if repeats > 1:
        return length, repeats - 1
    return (length - 1, length - 1) if repeat else (length - 1, 1)


def solved_level(task: Any) -> tuple[int, int] | None:
    """The ``(length, repeats)`` of the level whose answer length is the task's
    ``max_level_solved`` (the latest such level, walking back along the curriculum from the
    current one), or ``None`` when no level is solved."""
    if not task.max_level_solved:
        return None
    length, repeats = task.length, task.repeats
    while length > 1 or repeats > 1:
        length, repeats = previous_level(length, repeats, task.repeat)
        if length * repeats == task.max_level_solved:
            return length, repeats
    return None


class ScoreAtSolvedLevel(L.Callback):
    """``dnirnn validate / test`` of a copy-task checkpoint: scores at the level of its
    ``max_level_solved`` (the run's headline figure), not at the curriculum's current level,
    which is the one the run had not yet solved. A checkpoint that solved no level is scored
    at its current level. ``scored`` says which, for the summary; ``checkpoint_level`` keeps
    the checkpoint's own curriculum state, restored after scoring."""

    def __init__(self) -> None:
        self.scored: dict[str, Any] | None = None
        self.checkpoint_level: dict[str, Any] | None = None

    def _choose(self, pl_module: Any) -> None:
        task = getattr(pl_module, "task", None)
        if task is None or not hasattr(task, "max_level_solved"):
            return
        self.checkpoint_level = task.state_dict()
        if getattr(task, "grow", "length") == "delay":
            self._choose_delay(task)
            return
        level = solved_level(task)
        if level is None:
            why = (f"the checkpoint solved no level yet, so this is its current level "
                   f"(max_level_solved = {task.max_level_solved})")
        else:
            why = (f"the level of the checkpoint's max_level_solved = {task.max_level_solved} "
                   f"(its curriculum was at length {task.length} x repeats {task.repeats})")
            task.length, task.repeats = level
        self.scored = {"length": task.length, "repeats": task.repeats,
                       "level": task.length * task.repeats, "why": why}

    def _choose_delay(self, task: Any) -> None:
        """A delay curriculum's checkpoint: scored at its largest delay solved."""
        if task.max_delay_solved < 0:
            why = (f"the checkpoint solved no delay yet, so this is its current delay "
                   f"({task.delay})")
        else:
            why = (f"the checkpoint's max_delay_solved = {task.max_delay_solved} (its "
                   f"curriculum was at delay {task.delay})")
            task.delay = task.max_delay_solved
        self.scored = {"length": task.length, "repeats": task.repeats, "delay": task.delay,
                       "level": task.length * task.repeats, "why": why}

    def _restore(self, pl_module: Any) -> None:
        if self.checkpoint_level is not None:
            pl_module.task.load_state_dict(self.checkpoint_level)

    def on_validation_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.state.fn == "validate":
            self._choose(pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._choose(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.state.fn == "validate":
            self._restore(pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._restore(pl_module)
