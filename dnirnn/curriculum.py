"""The copy-task curriculum (DNI / NTM practice) as a Lightning callback."""

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
