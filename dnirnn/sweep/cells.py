"""A cell's numbers, read from its folder (``metrics.csv``, ``summary.json``, ``*.jsonl``, the
test run's ``summary.json``, the checkpoint), or, for a cell without a folder, from its row of
the report's ``cells.csv`` (see ``dnirnn.sweep.report``)."""

from __future__ import annotations

import csv
import json
import math
import statistics
from typing import Any

from dnirnn import compare
from dnirnn.sweep.parts import Cell, Grid, Metric, shown
from dnirnn.sweep.runner import read_json, run_folder, state

BETTER = dict(compare.HEADLINE)  # metric -> "max" | "min"
# a least-squares synthesizer's statistics, not weights (b stands for the maps W: same shape)
LS_STATISTICS = ("A", "A_upper", "age", "W")


class CellData:
    """A cell's files, read once each."""

    def __init__(self, cell: Cell, recorded: dict[str, str] | None = None) -> None:
        self.cell = cell
        self.state = state(cell)
        self.done = read_json(cell.root / "done.json") if self.state == "done" else None
        self.failed = read_json(cell.root / "failed.json")
        self.run = run_folder(cell.root)
        self._cache: dict[str, Any] = {}
        self.recorded = recorded if self.state == "new" and recorded is not None else None
        if self.recorded is not None:  # (its row of cells.csv: no folder here)
            self.state = "done"
            self.done = {"seconds": _number(self.recorded.get("wall_s"))}
            if cell.test:
                self.done["test_command"] = shown(
                    cell.test_args(f"<run>/checkpoints/{cell.test}.ckpt"), cell.threads)

    def series(self) -> dict[str, list[tuple[int, float]]]:
        if "series" not in self._cache:
            path = self.run / "metrics.csv" if self.run else None
            self._cache["series"] = compare.load_run(self.run).series if (
                path and path.is_file()) else {}
        return self._cache["series"]

    def last_step(self) -> int:
        steps = [s for pts in self.series().values() for s, _ in pts]
        return max(steps, default=0)

    def reached(self) -> int:
        """The training steps the run took: its summary's global step, else the last logged."""
        step = self.summary("fit").get("global_step")
        return step if isinstance(step, int) else self.last_step()

    def rows(self, name: str) -> list[dict]:
        if name not in self._cache:
            path = self.run / name if self.run else None
            self._cache[name] = [json.loads(line) for line in path.open() if line.strip()] \
                if path and path.is_file() else []
        return self._cache[name]

    def summary(self, stage: str) -> dict:
        root = self.cell.root / "test" if stage == "test" else self.cell.root
        run = run_folder(root)
        return (read_json(run / "summary.json") or {}) if run else {}

    def params(self) -> dict[str, int]:
        """Weights in ``last.ckpt``: the core (with readout) and the synthesizers. A
        least-squares synthesizer counts its maps ``W``, which the checkpoint does not hold
        (they are re-solved on load) but which have the shape of its statistic ``b``; its
        other statistics (``A``, ``A_upper``, ``age``) and the guard's count nowhere."""
        if "params" not in self._cache:
            import torch

            ckpt = self.run / "checkpoints" / "last.ckpt" if self.run else None
            core = synth = 0
            if ckpt and ckpt.is_file():
                sd = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
                for k, v in sd.items():
                    if "synthesizer" in k:
                        synth += 0 if k.rsplit(".", 1)[-1] in LS_STATISTICS else v.numel()
                    elif ".guard." not in f".{k}":
                        core += v.numel()
            self._cache["params"] = {"params/core": core, "params/synthesizer": synth}
        return self._cache["params"]

    def value(self, m: Metric) -> float | None:
        """The metric's number for this cell, or None where it has none."""
        if self.done is None:
            return None
        if self.recorded is not None:
            return _number(self.recorded.get(m.column or m.key))
        if m.key == "wall_s" and m.file == "metrics.csv":
            return self.done.get("seconds")
        if m.stage == "test" or m.file == "summary.json":
            node: Any = self.summary(m.stage)
            for part in (["metrics", m.key] if m.stage == "test" and m.file != "summary.json"
                         else m.key.split(".")):
                node = node.get(part) if isinstance(node, dict) else None
            return _finite(node)
        if m.file == "checkpoint":
            return self.params().get(m.key)
        if m.file.endswith(".jsonl"):
            points = [(int(r.get("step", 0)), r[m.key]) for r in self.rows(m.file)
                      if m.key in r and all(r.get(k) == v for k, v in m.where.items())]
            reduce = m.reduce or "mean"
        else:
            points = self.series().get(m.key, [])
            reduce = m.reduce or ("best" if m.key in BETTER else "last")
        points = sorted(((s, float(v)) for s, v in points if _finite(v) is not None),
                        key=lambda p: p[0])  # (stable: rows of one step keep their order)
        if m.start is not None:
            first = m.start * self.last_step()
            points = [(s, v) for s, v in points if s >= first]
        if m.at is not None:
            limit = self._step_at(m)
            if limit is None:
                return None  # the run stopped before `at`: its last value is not that point's
            points = [(s, v) for s, v in points if s <= limit][-1:]
        if not points:
            return None
        values = [v for _, v in points]
        if reduce == "best":
            reduce = BETTER.get(m.key, "last")
        return {"last": values[-1], "first": values[0], "min": min(values), "max": max(values),
                "mean": statistics.fmean(values)}[reduce]


    def _step_at(self, m: Metric) -> float | None:
        """The last step at or before ``m.at``: a step, or where the series ``m.x`` (seconds,
        say) reaches it; None if the run stopped before."""
        if m.x is None:
            return m.at if self.reached() >= m.at else None
        clock = [(s, v) for s, v in ((s, _finite(v)) for s, v in self.series().get(m.x, []))
                 if v is not None]
        if not clock or max(v for _, v in clock) < m.at:
            return None
        return max((s for s, v in clock if v <= m.at), default=None)

def _finite(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _number(v: str | None) -> float | int | None:
    """A value of cells.csv as it was written (an int stays an int)."""
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        return _finite(v)


def cell_data(grid: Grid) -> list[CellData]:
    """Every cell's data: its folder, else its row of the report's cells.csv."""
    path = grid.out.with_suffix("") / "cells.csv"
    rows = {}
    if path.is_file():
        with open(path, newline="") as f:
            rows = {r["cell"]: r for r in csv.DictReader(f)}
    return [CellData(c, rows.get(c.name)) for c in grid.cells]


def better(m: Metric) -> str | None:
    return m.better or (m.reduce if m.reduce in ("min", "max") else None) or BETTER.get(m.key)
