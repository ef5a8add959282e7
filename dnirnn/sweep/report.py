"""The report of a grid: tables (mean ± spread over seeds), plots, every cell's command.

Numbers are read from the cells' own files each time (``metrics.csv``, ``summary.json``,
``*.jsonl``, the test run's ``summary.json``, the checkpoint), so ``dnirnn sweep GRID
--report`` recomputes the tables after the grid's ``metrics:`` / ``tables:`` change, without
running anything. The plots are ``dnirnn plot``'s (``dnirnn.compare.plot``), one per group
of cells, plus, for ``kind: boundary``, the cosine with the true future gradient per boundary
of an episode (``diagnostics.jsonl`` of the diagnostics callback).

The part of the Markdown file between ``<!-- notes -->`` and ``<!-- /notes -->`` is written by
hand and kept when the file is regenerated. An existing file without that block is copied to
``<name>.before-sweep.md`` first.

The run folders (``runs/``) are not committed; ``cells.csv`` beside the report is. A cell
without a folder whose row is in that file is read from it (its numbers as recorded when the
report was last written), so ``--report`` in a fresh checkout rewrites the tables as they
were. What needs the folders keeps what the previous file has: a plot of cells without
folders its PNG, a section (``dnirnn.sweep.sections``) with no curves its text.
"""

from __future__ import annotations

import csv
import platform
import re
import shutil
import statistics
import time
from collections import defaultdict
from importlib import metadata
from pathlib import Path
from typing import Any

from dnirnn.sweep.cells import CellData, better, cell_data
from dnirnn.sweep.grid import grid_dir
from dnirnn.sweep.parts import Grid, Metric, markdown_table, row_name, shown
from dnirnn.sweep.plots import plots
from dnirnn.sweep.report_spec import selected
from dnirnn.sweep.runner import read_json
from dnirnn.sweep.sections import SECTIONS

NOTES = ("<!-- notes -->", "<!-- /notes -->")


# ---- formatting -----------------------------------------------------------------------------

def fmt(v: float | None, spec: str | None = None) -> str:
    if v is None:
        return "–"
    if spec:
        return format(v, spec)
    if float(v).is_integer() and abs(v) < 1e9:
        return str(int(v))
    return f"{v:.4g}"


def entry(values: list[float], spec: str | None, mode: str = "full") -> str:
    """``mean ± sd (each seed)`` (``full``), ``mean ± sd`` (``spread``), ``mean``, or
    ``median (each seed)``."""
    if not values:
        return "–"
    if len(values) == 1:
        return fmt(values[0], spec)
    each = ", ".join(fmt(v, spec) for v in values)
    if mode == "median":
        return f"{fmt(statistics.median(values), spec)} ({each})"
    mean = statistics.fmean(values)
    if mode == "mean":
        return fmt(mean, spec)
    text = f"{fmt(mean, spec)} ± {fmt(statistics.stdev(values), spec)}"
    return text if mode == "spread" else f"{text} ({each})"


def _wall(d: CellData) -> float | None:
    return d.done.get("seconds") if d.done else None


WALL = Metric(name="wall s", key="wall_s", format=".0f")


def _metric(grid: Grid, name: str) -> Metric:
    return WALL if name == "wall_s" else grid.metrics[name]


# ---- tables ---------------------------------------------------------------------------------

def table(grid: Grid, spec: dict, data: list[CellData]) -> list[str]:
    mine = [d for d in data if selected(d.cell, spec) and d.done is not None]
    rows, cols, mode = spec["rows"], spec["columns"], spec.get("entry", "full")
    metrics = [_metric(grid, n) for n in spec["metrics"]]
    out = [f"## {spec['title']}" if spec.get("title") else "## Results", ""]
    if spec.get("text"):
        out += [str(spec["text"]).strip(), ""]
    if not mine:
        return out + ["(no finished cells)", ""]

    def key(d: CellData, axes: list[str]) -> tuple[str, ...]:
        return tuple(d.cell.labels.get(a, "–") for a in axes)

    def order(keys, axes: list[str]) -> list[tuple[str, ...]]:
        return sorted(dict.fromkeys(keys), key=lambda k: grid.rank(axes, k))

    row_keys = order((key(d, rows) for d in mine), rows)
    groups: dict[tuple, list[CellData]] = defaultdict(list)
    for d in mine:
        groups[key(d, rows) + key(d, cols)].append(d)
    head = ", ".join(rows) or "cells"
    if not cols:  # one column per metric
        body = [[row_name(rows, r), *(entry(_values(groups[r], [m]), m.format, mode)
                                      for m in metrics), str(len(groups[r]))]
                for r in row_keys]
        return out + markdown_table([head, *(m.name for m in metrics), "n"], body) + [""]
    col_keys = order((key(d, cols) for d in mine), cols)
    ref = spec.get("reference") or {}
    ref_name, ref_values = ref.get("name", "reference"), ref.get("values") or {}
    head_cols = [row_name(cols, c) for c in col_keys]
    head_cols += [f"{ref_name}: {c}" for c in head_cols] if ref_values else []
    body = []
    for r in row_keys:
        cells = []
        for c in col_keys:
            g = groups.get(r + c, [])
            m = _first_metric(g, metrics)
            cells.append(entry(_values(g, [m]), m.format, mode) if m else "–")
        if ref_values:
            cells += [_reference(ref_values, r, c[0], col_keys) for c in col_keys]
        body.append([row_name(rows, r), *cells])
    out += markdown_table([head, *head_cols], body)
    out.append("")
    for a, b in spec.get("wins") or []:
        out += _wins(str(a), str(b), rows, row_keys, groups, metrics)
    return out + ([""] if spec.get("wins") else [])


def _values(g: list[CellData], metrics: list[Metric]) -> list[float]:
    return [v for d in g if (v := d.value(metrics[0])) is not None]


def _first_metric(g: list[CellData], metrics: list[Metric]) -> Metric | None:
    """The first of the table's metrics that these cells have (e.g. the level for copy cells,
    the test BPC for PTB cells, in one table)."""
    return next((m for m in metrics if _values(g, [m])), None)


def _reference(values: dict, row: tuple[str, ...], col: str, col_keys: list) -> str:
    node: Any = values
    for label in row:
        node = next((v for k, v in node.items() if str(k) == label), None) if isinstance(
            node, dict) else None
    if isinstance(node, list):
        i = [c[0] for c in col_keys].index(col)
        node = node[i] if i < len(node) else None
    elif isinstance(node, dict):
        node = next((v for k, v in node.items() if str(k) == col), None)
    return "–" if node is None else str(node)


def _wins(a: str, b: str, rows: list[str], row_keys: list[tuple], groups: dict,
          metrics: list[Metric]) -> list[str]:
    """``- <first row label>: a beats b at <rest> (k of n by the means, every seed apart at
    <rest>; ties at ...)``: the means over seeds with the metric's direction, and where
    every seed of ``a`` beats every seed of ``b`` (at least 2 seeds each: a win by one seed
    of either says little)."""
    by: dict[str, list[tuple[str, str, bool]]] = defaultdict(list)  # first -> (rest, result, apart)
    for r in row_keys:
        ga, gb = groups.get(r + (a,), []), groups.get(r + (b,), [])
        m = _first_metric(ga, metrics)
        if m is None or not _values(gb, [m]) or better(m) is None:
            continue
        xa, xb = _values(ga, [m]), _values(gb, [m])
        va, vb = statistics.fmean(xa), statistics.fmean(xb)
        up = better(m) == "max"
        res = "tie" if va == vb else "win" if (va > vb) == up else "loss"
        apart = res == "win" and min(len(xa), len(xb)) >= 2 and (
            min(xa) > max(xb) if up else max(xa) < min(xb))
        first, rest = (r[0], r[1:]) if len(r) > 1 else ("", r)
        by[first].append((row_name(rows[len(r) - len(rest):], rest), res, apart))
    lines = []
    for first, res in by.items():
        wins = [x for x, w, _ in res if w == "win"]
        apart = [x for x, _, ok in res if ok]
        ties = [x for x, w, _ in res if w == "tie"]
        name = f"**{first}**: " if first else ""
        lines.append(f"- {name}{a} beats {b} at {', '.join(wins) or 'none'} "
                     f"({len(wins)} of {len(res)} by the means, every seed apart at "
                     f"{', '.join(apart) or 'none'}; ties at {', '.join(ties) or 'none'}).")
    return lines


# ---- the file -------------------------------------------------------------------------------

def kept(text: str, start: str, end: str) -> str | None:
    """The block of ``text`` from the line ``start`` to the line ``end``, both included."""
    m = re.search(re.escape(start) + ".*?" + re.escape(end), text, re.S)
    return m.group(0) if m else None


def notes_block(out: Path) -> str:
    """The hand-written block of ``out`` (``NOTES``), kept when a report rewrites ``out``; a
    placeholder block if it has none (a file without one is first copied aside)."""
    text = out.read_text() if out.is_file() else ""
    block = kept(text, *NOTES)
    if block:
        return block
    if text:
        backup = out.with_name(f"{out.stem}.before-sweep.md")
        shutil.copyfile(out, backup)
        print(f"{out} had no {NOTES[0]} block: copied it to {backup}")
    return f"{NOTES[0]}\n(notes written by hand go here; kept when the report is rewritten)\n" \
           f"{NOTES[1]}"


def _made_by(grid: Grid, data: list[CellData], before: str) -> str:
    meta = read_json(grid.runs / "sweep.json") or {}
    counts = defaultdict(int)
    for d in data:
        counts[d.state] += 1
    threads = sorted({c.threads for c in grid.cells})
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "?"
    total = sum(_wall(d) or 0 for d in data)
    states = ", ".join(f"{n} {s}" for s, n in counts.items() if s != "done")
    recorded = sum(d.recorded is not None for d in data)
    line = re.search(r"^Made by `dnirnn sweep .*$", before, re.M)
    if recorded == counts["done"] and not meta and line:  # (no cell's folder here)
        return line.group(0)  # (how the recorded cells were made: their machine, jobs, torch)
    if recorded and not meta:
        return (f"Made by `dnirnn sweep {_named(grid)}` from real runs: {counts['done']} of "
                f"{len(data)} cells done{f' ({states})' if states else ''}, OMP_NUM_THREADS="
                f"{'/'.join(map(str, threads))}; sum of cell wall times {total / 60:.1f} min. "
                f"Numbers of {recorded} cells as recorded in "
                f"{grid.out.with_suffix('') / 'cells.csv'} (their folders are not here).")
    return (f"Made by `dnirnn sweep {meta.get('grid', _named(grid))} --jobs {meta.get('jobs', 1)}`"
            f" from real runs: {counts['done']} of {len(data)} cells done"
            f"{f' ({states})' if states else ''}. One `dnirnn fit` process per cell, "
            f"OMP_NUM_THREADS={'/'.join(map(str, threads))}, {meta.get('jobs', 1)} at a time, "
            f"on {platform.machine()} ({meta.get('host', platform.node())}), torch {torch}; "
            f"sum of cell wall times {total / 60:.1f} min.")


def _named(grid: Grid) -> str:
    """The grid as one types it: a shipped grid's name, else its path."""
    return grid.name if grid.path.parent.resolve() == grid_dir().resolve() else str(grid.path)


def cells_table(grid: Grid, data: list[CellData]) -> list[str]:
    metrics = [grid.metrics[n] for n in grid.metrics]
    out = ["## Cells: state, numbers, wall time, command", ""]
    body = []
    for d in data:
        st = d.state
        if st == "failed" and d.failed:
            st = f"failed ({d.failed.get('stage')}, exit {d.failed.get('returncode')}): " \
                 f"{d.failed.get('reason', '')}"
        cmd = (d.done or {}).get("command") or shown(d.cell.fit_args(), d.cell.threads)
        test = (d.done or {}).get("test_command")
        cmd = f"`{cmd}`" + (f" then `{test}`" if test else "")
        wall = _wall(d)
        body.append([d.cell.name, st, *(fmt(d.value(m), m.format) for m in metrics),
                     "" if wall is None else f"{wall:.0f}", cmd])
    header = ["cell", "state", *(m.name for m in metrics), "wall s", "command"]
    return out + markdown_table(header, body) + [""]


def write_report(grid: Grid) -> tuple[Path, list[Path]]:
    """Writes ``grid.out`` and its plots (in the folder of the same name); returns them."""
    data = cell_data(grid)
    out = grid.out
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = out.with_suffix("")
    before = out.read_text() if out.is_file() else ""
    pngs = plots(grid, data, folder)
    lines = [f"# {grid.title}", ""]
    if grid.description.strip():
        lines += [grid.description.strip(), ""]
    lines += [_made_by(grid, data, before), "", notes_block(out), ""]
    if grid.about:
        lines += ["Labels:", ""]
        for axis, labels in grid.about.items():
            lines += [f"- {axis} `{label}`: {text}" for label, text in labels.items()]
        lines.append("")
    for i, spec in enumerate(grid.sections):
        marks = (f"<!-- section {i + 1}: {spec['kind']} -->",
                 f"<!-- /section {i + 1}: {spec['kind']} -->")
        body = SECTIONS[spec["kind"]](grid, spec, data, folder)
        block = "\n".join([marks[0], *body, marks[1]]) if body is not None else kept(
            before, *marks)
        lines += [block or f"{marks[0]}\n(no cell has curves yet)\n{marks[1]}", ""]
    for spec in grid.tables:
        lines += table(grid, spec, data)
    missing = [d.cell.name for d in data if d.state != "done"]
    if missing:
        lines += [f"**Not in the tables ({len(missing)})**: {', '.join(missing)}.", ""]
    if pngs:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({folder.name}/{p.name})\n" for p in pngs]
    lines += cells_table(grid, data)
    lines.append(f"<!-- written by dnirnn sweep, {time.strftime('%Y-%m-%d %H:%M')} -->")
    out.write_text("\n".join(lines) + "\n")
    return out, pngs


def held_cells(out: Path) -> set[str]:
    """The cells that the report ``out`` holds as done: the rows of its ``cells.csv`` and the
    rows of its cells table marked done."""
    names: set[str] = set()
    table = out.with_suffix("") / "cells.csv"
    if table.is_file():
        with open(table, newline="") as f:
            names |= {r["cell"] for r in csv.DictReader(f) if r.get("cell")}
    if out.is_file():
        names |= set(re.findall(r"^\| (\S+) \| done \|", out.read_text(), re.M))
    return names


def lost_cells(grid: Grid, data: list[CellData]) -> list[CellData]:
    """The grid's cells that the existing report holds as done but a report written now would
    not (their folders here are unfinished, or the report's files are not this grid's)."""
    held = held_cells(grid.out)
    return [d for d in data if d.cell.name in held and d.state != "done"]


def set_aside(grid: Grid) -> list[Path]:
    """Copies the report and its ``cells.csv`` to ``*.before-sweep.*`` beside them."""
    out, table = grid.out, grid.out.with_suffix("") / "cells.csv"
    kept_as = []
    for path, to in ((out, out.with_name(f"{out.stem}.before-sweep.md")),
                     (table, table.with_name("cells.before-sweep.csv"))):
        if path.is_file():
            shutil.copyfile(path, to)
            kept_as.append(to)
    return kept_as


def write_csv(grid: Grid, path: Path) -> Path:
    """Every done cell's labels and metric values, one row each (for your own analysis)."""
    data = cell_data(grid)
    names = list(grid.metrics)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell", *grid.axes, *names, "wall_s"])
        for d in data:
            if d.done is None:
                continue
            w.writerow([d.cell.name, *(d.cell.labels.get(a, "") for a in grid.axes),
                        *(d.value(grid.metrics[n]) for n in names), _wall(d)])
    return path
