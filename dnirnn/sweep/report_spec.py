"""A grid's report part: its ``metrics:``, ``tables:`` and ``plots:``, checked when the grid
file is read (keys, names, axes, filters), and the ``where:`` / ``exclude:`` filter a table,
plot or section applies to the cells (:func:`selected`). No Lightning import.
"""

from __future__ import annotations

import difflib
from typing import Any

from dnirnn.sweep.parts import Cell, GridError, Metric

METRIC_KEYS = {"key", "name", "file", "stage", "reduce", "from", "at", "x", "where", "better",
               "format"}
TABLE_KEYS = {"title", "text", "rows", "columns", "metrics", "entry", "where", "exclude",
              "reference", "wins"}
PLOT_KEYS = {"by", "kind", "where", "exclude", "x"}
ENTRIES = ("full", "spread", "mean", "median")
REDUCE = ("last", "first", "min", "max", "mean", "best")


def checked_keys(d: Any, allowed: set[str], where: str) -> dict:
    """``d`` as a mapping with only ``allowed`` keys (``None``: empty)."""
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise GridError(f"{where}: expected a mapping, got {d!r}.")
    bad = sorted(set(map(str, d)) - allowed)
    if bad:
        near = [m for b in bad for m in difflib.get_close_matches(b, allowed, n=1, cutoff=0.6)]
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise GridError(f"{where}: unknown key(s) {', '.join(bad)}.{hint} Allowed: "
                        f"{', '.join(sorted(allowed))}.")
    return d


def as_list(v: Any) -> list:
    return [] if v is None else list(v) if isinstance(v, list | tuple) else [v]


def read_report(raw: dict, axes: list[str]) -> tuple[dict[str, Metric], list[dict], list[dict]]:
    """The grid file's metrics, tables (one of every metric where none is given) and plots,
    checked against its axes (``axes``)."""
    metrics_raw = raw.get("metrics") or []
    if isinstance(metrics_raw, list):  # keys, or mappings with key: (and name:)
        metrics_raw = {str(m.get("name", m.get("key")) if isinstance(m, dict) else m): m
                       for m in metrics_raw}
    metrics = {str(k): _metric(str(k), v) for k, v in metrics_raw.items()}
    tables = [_table(t, i, metrics, axes) for i, t in enumerate(
        as_list(raw.get("tables")) or [{}])]
    plots = [_plot(p, i, axes) for i, p in enumerate(as_list(raw.get("plots")))]
    return metrics, tables, plots


def _metric(name: str, d: Any) -> Metric:
    where = f"metric {name}"
    if isinstance(d, str):
        d = {"key": d}
    d = dict(checked_keys(d, METRIC_KEYS, where))
    if "key" not in d:
        d["key"] = name
    m = Metric(name=str(d.get("name", name)), key=str(d["key"]),
               file=str(d.get("file", "metrics.csv")), stage=str(d.get("stage", "fit")),
               reduce=d.get("reduce"), start=d.get("from"), at=d.get("at"), x=d.get("x"),
               where=dict(d.get("where") or {}), better=d.get("better"),
               format=d.get("format"), column=name)
    if m.start is not None and not (isinstance(m.start, int | float) and 0 <= m.start < 1):
        raise GridError(f"{where}: from is a fraction of the run's steps in [0, 1), got "
                        f"{m.start!r}.")
    if m.at is not None and m.x is None and not isinstance(m.at, int):
        raise GridError(f"{where}: at is a training step, got {m.at!r} (at a value of a "
                        f"logged series, such as seconds: add x: time/train_cpu_s).")
    if m.x is not None and not (isinstance(m.at, int | float) and m.file == "metrics.csv"):
        raise GridError(f"{where}: x names the series that at is read on: give at (a number) "
                        f"and a key of metrics.csv, got at {m.at!r}, file {m.file!r}.")
    if m.reduce is not None and m.reduce not in REDUCE:
        raise GridError(f"{where}: reduce is one of {', '.join(REDUCE)}, got {m.reduce!r}.")
    if m.stage not in ("fit", "test"):
        raise GridError(f"{where}: stage is fit or test, got {m.stage!r}.")
    if m.better not in (None, "min", "max"):
        raise GridError(f"{where}: better is min or max, got {m.better!r}.")
    if m.file not in ("metrics.csv", "summary.json", "checkpoint") and not m.file.endswith(
            ".jsonl"):
        raise GridError(f"{where}: file is metrics.csv, summary.json, checkpoint or a "
                        f"*.jsonl of the run folder, got {m.file!r}.")
    return m


def _axes_list(v: Any, where: str, axes: list[str]) -> list[str]:
    out = [str(a) for a in as_list(v)]
    bad = [a for a in out if a not in axes]
    if bad:
        raise GridError(f"{where}: no axis {', '.join(bad)}; axes: {', '.join(axes)}.")
    return out


def _table(t: Any, i: int, metrics: dict[str, Metric], axes: list[str]) -> dict:
    where = f"table {i + 1}"
    t = dict(checked_keys(t, TABLE_KEYS, where))
    # (no metric named: every one of the grid's; a grid without metrics: the wall time)
    t["metrics"] = [str(m) for m in as_list(t.get("metrics"))] or list(metrics) or ["wall_s"]
    bad = [m for m in t["metrics"] if m not in metrics and m != "wall_s"]
    if bad:
        raise GridError(f"{where}: no metric {', '.join(bad)}; metrics: "
                        f"{', '.join([*metrics, 'wall_s'])}.")
    t["columns"] = _axes_list(t.get("columns"), where, axes)
    t["rows"] = _axes_list(t["rows"], where, axes) if "rows" in t else [
        a for a in axes if a != "seed" and a not in t["columns"]]
    if t.get("entry", "full") not in ENTRIES:
        raise GridError(f"{where}: entry is {', '.join(ENTRIES)}, got {t['entry']!r}.")
    if (t.get("wins") or t.get("reference")) and len(t["columns"]) != 1:
        raise GridError(f"{where}: wins and reference need `columns:` to be one axis.")
    for k in ("where", "exclude"):
        _axes_list(list((t.get(k) or {}).keys()), where, axes)
    return t


def _plot(p: Any, i: int, axes: list[str]) -> dict:
    where = f"plot {i + 1}"
    p = dict(checked_keys(p, PLOT_KEYS, where))
    p["by"] = _axes_list(p.get("by"), where, axes)
    if p.get("kind", "compare") not in ("compare", "boundary"):
        raise GridError(f"{where}: kind is compare (dnirnn plot's panels) or boundary "
                        f"(cos per boundary, from diagnostics.jsonl).")
    for k in ("where", "exclude"):
        _axes_list(list((p.get(k) or {}).keys()), where, axes)
    return p


def selected(cell: Cell, spec: dict) -> bool:
    """Whether a cell passes a table's or plot's ``where:`` / ``exclude:`` filters."""
    for axis, allowed in (spec.get("where") or {}).items():
        if cell.labels.get(axis) not in {str(x) for x in as_list(allowed)}:
            return False
    for axis, banned in (spec.get("exclude") or {}).items():
        if cell.labels.get(axis) in {str(x) for x in as_list(banned)}:
            return False
    return True
