"""The parts of a grid: the settings each level contributes, the metrics read from a
finished cell, the cells (one ``dnirnn fit`` each, with their command) and the grid itself.
``dnirnn.sweep.grid`` builds them from a grid file."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class GridError(ValueError):
    """A grid file that cannot run; the message says where and what to write instead."""


@dataclass
class Settings:
    """What one level (the grid, a block, an axis label) contributes to a cell."""

    recipe: str | None = None
    overlays: list[str] = field(default_factory=list)
    args: dict[str, Any] = field(default_factory=dict)
    callbacks: dict[str, dict] = field(default_factory=dict)
    threads: int | None = None
    test: str | None = None
    about: str | None = None

    def then(self, other: Settings) -> Settings:
        """``self`` overridden by ``other`` (overlays and callbacks accumulate)."""
        callbacks = {k: dict(v) for k, v in self.callbacks.items()}
        for cls, init in other.callbacks.items():
            callbacks[cls] = {**callbacks.get(cls, {}), **init}
        return Settings(other.recipe or self.recipe, self.overlays + other.overlays,
                        {**self.args, **other.args}, callbacks, other.threads or self.threads,
                        other.test if other.test is not None else self.test)


@dataclass
class Metric:
    """How one number is read from a finished cell (see the module docstring of the package)."""

    name: str
    key: str
    file: str = "metrics.csv"
    stage: str = "fit"
    reduce: str | None = None
    start: float | None = None  # ``from``: fraction of the run's last step
    at: float | None = None  # a training step, or a value of ``x``
    x: str | None = None  # ``at`` is read on this logged series (e.g. time/train_cpu_s)
    where: dict = field(default_factory=dict)
    better: str | None = None
    format: str | None = None
    column: str | None = None  # its column in the report's cells.csv (its key under metrics:)


@dataclass
class Cell:
    name: str
    labels: dict[str, str]  # axis -> label, the seed included (axis "seed")
    recipe: str
    overlays: list[str]
    args: dict[str, str]  # dotted overrides, final CLI strings
    callbacks: dict[str, dict]
    threads: int
    test: str | None
    root: Path
    configs: list[str]  # the --config values: the recipe, then the overlays' paths

    def spec(self) -> dict:
        """What defines the cell's result; a finished cell with another spec is stale."""
        return {"recipe": self.recipe, "overlays": self.overlays, "args": self.args,
                "callbacks": self.callbacks, "test": self.test}

    def _args(self) -> list[str]:
        out = []
        for c in self.configs:
            out += ["--config", c]
        return out + [f"--{k}={v}" for k, v in self.args.items()]

    def _callbacks(self) -> list[str]:
        out = []
        for cls, init in self.callbacks.items():
            out.append(f"--trainer.callbacks+={cls}")
            out += [f"--trainer.callbacks.{k}={cli_value(v)}" for k, v in init.items()]
        return out

    def fit_args(self, ckpt: Path | None = None) -> list[str]:
        """``fit ...``: the arguments after ``python -m dnirnn``."""
        return ["fit", *self._args(), f"--trainer.default_root_dir={self.root}",
                *self._callbacks(), *([f"--ckpt_path={ckpt}"] if ckpt else [])]

    def test_args(self, ckpt: Path | str) -> list[str]:
        """``test ...`` of the checkpoint: the same model and data, no extra callbacks."""
        return ["test", *self._args(), f"--trainer.default_root_dir={self.root / 'test'}",
                f"--ckpt_path={ckpt}"]


@dataclass
class Grid:
    path: Path
    name: str
    title: str
    description: str
    runs: Path
    out: Path
    cells: list[Cell]
    metrics: dict[str, Metric]
    tables: list[dict]
    plots: list[dict]
    axes: list[str]  # every axis, in order of first appearance (the seed last)
    labels: dict[str, list[str]]  # axis -> its labels: as defined under axes:, then as met
    about: dict[str, dict[str, str]]  # axis -> label -> description
    threads: int = 1  # the grid's own ``threads:``: its cells' default (shipped grids: most)
    sections: list[dict] = field(default_factory=list)  # report sections (sweep.sections)

    def rank(self, axes: list[str], labels: tuple[str, ...]) -> tuple[int, ...]:
        """Sorts label tuples in the grid's order of labels (as defined, then as met)."""
        order = [self.labels.get(a, []) for a in axes]
        return tuple(o.index(x) if x in o else -1 for o, x in zip(order, labels))


def cli_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list | dict):
        return json.dumps(v)
    return str(v)


def shown(cmd: list[str], threads: int | None = None) -> str:
    """A command as a person would type it."""
    env = f"OMP_NUM_THREADS={threads} " if threads else ""
    return env + "dnirnn " + " ".join(cmd)


def name_part(axis: str, label: str) -> str:
    """A label's part of a cell name: numbers carry their axis (``T2``, ``s0``)."""
    if re.fullmatch(r"-?[\d.]+", label):
        return ("s" if axis == "seed" else axis) + label
    return label


def row_name(axes: list[str], labels: tuple[str, ...]) -> str:
    """A row's or plot's name from its labels (``copy T2``; "all" for none)."""
    return " ".join(name_part(a, x) if x != "–" else x for a, x in zip(axes, labels)) or "all"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines: the header, its delimiter row (one cell per header cell) and
    the rows, each checked to have as many cells as the header. ``|`` in a cell is escaped."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"a table row has {len(r)} cells, its header {len(header)}: {r}")
    return [line(header), "|" + "---|" * len(header), *map(line, rows)]
