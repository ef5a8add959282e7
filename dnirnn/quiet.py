"""What Lightning prints around a run, kept to what the user asked for.

While a run is put together (the trainer built, the checks of ``dnirnn.preflight`` run),
Lightning logs lines such as "GPU available: False, used: False" and warns about settings.
Printed at once, they would come before a one-line ``dnirnn: error:`` that ends the run.
``SETUP`` holds them instead: ``hold()`` when the command starts, ``release()`` once the
checks have passed (they then print, in their order), ``drop()`` when the command ends
(an error: they never print). Lightning's advertising tips ("💡 Tip: ... litlogger") never
print, and ``install_filters`` silences the warnings that reach every run and say nothing
about it (a deprecation inside Lightning's own code; the ``IterableDataset`` ``__len__``
warning, which concerns loader workers, and dnirnn's loaders have none).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

LOGGERS = ("lightning.pytorch", "lightning.fabric", "")  # their handlers ("": the root's)
TIPS = "💡 Tip:"
NOISE = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # lightning/.../_pytree.py
         r"Your `IterableDataset` has `__len__` defined")  # (dnirnn's loaders: no workers)


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIPS)


class Held:
    """Holds log records and warnings until ``release`` (see the module docstring)."""

    def __init__(self) -> None:
        self.pending: list[Callable[[], Any]] = []
        self.filters: list[tuple[logging.Handler, _HoldOn]] = []
        self.showwarning: Any = None  # warnings' own, while holding

    @property
    def holding(self) -> bool:
        return self.showwarning is not None

    def hold(self) -> None:
        if self.holding:
            return
        self.showwarning = warnings.showwarning
        handlers = {id(h): h for name in LOGGERS for h in logging.getLogger(name).handlers}
        for h in handlers.values():
            f = _HoldOn(self, h)
            h.addFilter(f)
            self.filters.append((h, f))
        shown = self.showwarning

        def held(*args: Any, **kwargs: Any) -> None:
            self.pending.append(lambda: shown(*args, **kwargs))

        warnings.showwarning = held

    def _stop(self) -> list[Callable[[], Any]]:
        if not self.holding:
            return []
        warnings.showwarning, self.showwarning = self.showwarning, None
        for h, f in self.filters:
            h.removeFilter(f)
        self.filters = []
        pending, self.pending = self.pending, []
        return pending

    def release(self) -> None:
        """Prints what was held, in its order, and stops holding."""
        for emit in self._stop():
            emit()

    def drop(self) -> None:
        """Forgets what was held (the command ended with an error) and stops holding."""
        self._stop()


class _HoldOn(logging.Filter):
    """``Held``'s filter on one handler: a record held is replayed on that handler."""

    def __init__(self, held: Held, handler: logging.Handler) -> None:
        super().__init__()
        self.held, self.handler = held, handler

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.held.holding:
            return True
        self.held.pending.append(lambda: self.handler.handle(record))
        return False


SETUP = Held()


def install_filters() -> None:
    """Lightning's tips never print; the warnings of ``NOISE`` are ignored."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())
    for message in NOISE:
        warnings.filterwarnings("ignore", message=message)
