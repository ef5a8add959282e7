"""A grid report's plots: ``dnirnn plot``'s panels per group of cells (optionally against a
logged series such as ``time/train_s``), or cos(SG, true future gradient) per boundary."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from dnirnn import compare
from dnirnn.sweep.parts import Grid, name_part, row_name
from dnirnn.sweep.report_spec import selected

if TYPE_CHECKING:
    from dnirnn.sweep.cells import CellData


def method_axis(grid: Grid) -> str | None:
    """The axis whose labels are the methods compared: the first table's one ``columns``
    axis, else the grid's last axis (``mode``, ``variant``)."""
    axes = [a for a in grid.axes if a != "seed"]
    cols = next((t["columns"][0] for t in grid.tables if len(t.get("columns") or []) == 1),
                None)
    return cols if cols in axes else (axes[-1] if axes else None)


def default_plots(grid: Grid) -> list[dict]:
    """One figure per label of the other axes, with every method in it."""
    method = method_axis(grid)
    return [{"by": [a for a in grid.axes if a not in ("seed", method)], "kind": "compare"}]


def plots(grid: Grid, data: list[CellData], folder: Path) -> list[Path]:
    specs = grid.plots or default_plots(grid)
    written = []
    for spec in specs:
        by, kind = spec["by"], spec.get("kind", "compare")
        groups: dict[tuple, list[CellData]] = defaultdict(list)
        for d in data:
            if d.done is not None and selected(d.cell, spec):
                groups[tuple(d.cell.labels.get(a, "–") for a in by)].append(d)
        for labels, members in sorted(groups.items(), key=lambda kv: grid.rank(by, kv[0])):
            stem = "_".join(name_part(a, x) for a, x in zip(by, labels)) or grid.name
            x = spec.get("x")
            name = (f"boundary_cos_{stem}" if kind == "boundary" else stem if x is None
                    else f"{stem}_by_{re.sub(r'[^A-Za-z0-9]+', '_', x)}")
            path: Path | None = folder / f"{name}.png"
            members = [d for d in members if d.run is not None]
            if not members:  # (cells recorded in cells.csv only: the committed PNG stays)
                path = path if path.is_file() else None
            elif kind == "boundary":
                path = _boundary_plot(members, path, row_name(by, labels))
            else:
                runs = [d for d in members if (d.run / "metrics.csv").is_file()]
                names = {d.run: row_name(*_others(d, by)) for d in runs}  # (what differs)
                path = compare.plot([compare.load_run(d.run) for d in runs], path, x=x,
                                    names=names)
            if path:
                written.append(path)
    return written


def _others(d: CellData, by: list[str]) -> tuple[list[str], tuple[str, ...]]:
    """The cell's axes and labels that vary within a figure grouped ``by`` (not the seed)."""
    axes = [a for a in d.cell.labels if a not in by and a != "seed"]
    return axes, tuple(d.cell.labels[a] for a in axes)


def _boundary_plot(members: list[CellData], path: Path, title: str) -> Path | None:
    """Mean cos(SG, true future gradient) per boundary index k over the second half of
    training, one line per group of cells that differ only by seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for d in members:
        name = "_".join(name_part(a, x) for a, x in d.cell.labels.items() if a != "seed")
        half = d.last_step() / 2
        for r in d.rows("diagnostics.jsonl"):
            if r.get("step", 0) >= half and "cos" in r:
                per[name][int(r["k"])].append(float(r["cos"]))
    if not per:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, by_k in per.items():
        ks = sorted(by_k)
        ax.plot(ks, [statistics.fmean(by_k[k]) for k in ks], marker="o", label=name)
    ax.axhline(0, color="k", lw=0.5)
    ax.set(title=f"{title}: cos(SG, true future gradient) per boundary, 2nd half",
           xlabel="boundary index k within the episode", ylabel="mean cosine")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
