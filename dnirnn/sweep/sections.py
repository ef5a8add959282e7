"""Report sections a grid asks for by name (``sections:``), written after its labels and
before its tables. One kind so far:

``speed``: the cells of one axis's labels against wall time (``time/train_s`` of
``dnirnn.wallclock.WallClock``: seconds in training steps, validation excluded)::

    sections:
      - kind: speed
        axis: mode                  # one line per label (the modes), the seeds pooled
        metric: val/bpc             # a validation series of metrics.csv
        name: validation BPC        # (headings; default the key), unit: BPC (goal lines)
        clock: time/train_s         # (the default)
        tokens_per_step: 2048       # windows_per_step x window x batch_size
        where: {...}, exclude: {...}    # cells, as a table's filters
        goals:                      # lines "met" / "not met", each with its number
          - {measure: throughput, of: c, against: a, at_least: 1.5}    # tokens/s ratio
          - {measure: equal_tokens, of: c, against: a, at_most: 0.05}  # metric gap, last
          - {measure: equal_time, of: c, against: a, below: 0}         #   common validation

It writes tokens per second (the last logged clock and its step), the metric at equal tokens
(the validations every cell reached; a validation after ``s + 1`` steps is logged on the row
of step ``s``), the metric at equal wall time (each cell's curve against its training
seconds, linear between validations, read at the end of the fastest label's run and halfway
to it), mean ± sd (n) over the cells of a label, and ``curves.png`` beside the report's other
plots (the metric against training seconds and against tokens). Cells whose folders are not
here (numbers recorded in cells.csv only) have no curves: with none, the report keeps the
section as the previous file has it (``dnirnn.sweep.report``).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dnirnn.sweep.parts import Grid, GridError, markdown_table

if TYPE_CHECKING:
    from dnirnn.sweep.cells import CellData

SPEED_KEYS = {"kind", "axis", "metric", "name", "unit", "clock", "tokens_per_step", "where",
              "exclude", "goals"}
GOAL_KEYS = {"measure", "of", "against", "at_least", "at_most", "below", "above"}
MEASURES = ("throughput", "equal_tokens", "equal_time")
BOUNDS = {"at_least": ">=", "at_most": "<=", "below": "<", "above": ">"}


def check_section(s: Any, i: int, axes: list[str], labels: dict[str, list[str]]) -> dict:
    """A section of the grid file, checked (``GridError`` says what to change)."""
    where = f"section {i + 1}"
    if not isinstance(s, dict) or s.get("kind") != "speed":
        raise GridError(f"{where}: a mapping with kind: speed (the one kind of section).")
    bad = sorted(set(map(str, s)) - SPEED_KEYS)
    if bad:
        raise GridError(f"{where}: unknown key(s) {', '.join(bad)}; allowed: "
                        f"{', '.join(sorted(SPEED_KEYS))}.")
    s = dict(s)
    if s.get("axis") not in axes:
        raise GridError(f"{where}: axis is one of the grid's axes ({', '.join(axes)}).")
    if not s.get("metric") or not isinstance(s.get("tokens_per_step"), int):
        raise GridError(f"{where}: metric (a validation key, val/bpc) and tokens_per_step "
                        f"(an integer: windows_per_step x window x batch_size) are needed.")
    for k in ("where", "exclude"):
        bad = sorted(set(map(str, s.get(k) or {})) - set(axes))
        if bad:
            raise GridError(f"{where}: {k} names no axis {', '.join(bad)}.")
    s.setdefault("clock", "time/train_s")
    s.setdefault("name", s["metric"])
    s.setdefault("unit", "")
    known = labels.get(s["axis"], [])
    for j, g in enumerate(s.get("goals") or []):
        w = f"{where}, goal {j + 1}"
        if not isinstance(g, dict) or set(map(str, g)) - GOAL_KEYS:
            raise GridError(f"{w}: a mapping of {', '.join(sorted(GOAL_KEYS))}.")
        if g.get("measure") not in MEASURES:
            raise GridError(f"{w}: measure is one of {', '.join(MEASURES)}.")
        for k in ("of", "against"):
            if str(g.get(k)) not in known:
                raise GridError(f"{w}: {k} is a label of axis {s['axis']} "
                                f"({', '.join(known)}).")
        if len([k for k in BOUNDS if k in g]) != 1:
            raise GridError(f"{w}: one bound: {', '.join(BOUNDS)}.")
    s["goals"] = list(s.get("goals") or [])
    return s


# ---- the speed section ----------------------------------------------------------------------

def _curves(d: CellData, spec: dict) -> dict | None:
    """``{"val": [(step, value)], "time": {step: seconds}}`` of a cell with a run folder."""
    if d.run is None:
        return None
    series = d.series()
    val = sorted(series.get(spec["metric"], []))
    return {"val": val, "time": dict(series.get(spec["clock"], []))} if val else None


def train_seconds(cell: dict, step: int) -> float | None:
    """The training seconds at ``step`` (the last clock row at or before it)."""
    known = [s for s in cell["time"] if s <= step]
    return cell["time"][max(known)] if known else None


def curve(cell: dict) -> list[tuple[float, float]]:
    """``[(train_s, value)]`` at the validations whose time is known."""
    out = []
    for step, v in cell["val"]:
        t = train_seconds(cell, step + 1)
        if t is not None:
            out.append((t, v))
    return out


def at_time(points: list[tuple[float, float]], t: float) -> float | None:
    """The curve at ``t``, linear between its points; None outside them."""
    for (t0, y0), (t1, y1) in zip(points, points[1:]):
        if t0 <= t <= t1:
            return y0 if t1 == t0 else y0 + (y1 - y0) * (t - t0) / (t1 - t0)
    if points and points[-1][0] == t:
        return points[-1][1]
    return None


def tokens_per_second(cell: dict, tokens_per_step: int) -> float | None:
    if not cell["time"]:
        return None
    step = max(cell["time"])
    seconds = cell["time"][step]
    return None if seconds <= 0 else step * tokens_per_step / seconds


def stats(values: list[float | None]) -> tuple[float, float, int] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), sd, len(values)


def show(s: tuple[float, float, int] | None, fmt: str = ".3f") -> str:
    if s is None:
        return "-"
    mean, sd, n = s
    return f"{mean:{fmt}} ± {sd:{fmt}} (n={n})"


def analyse(cells: dict[str, dict[str, dict]], tokens_per_step: int) -> dict:
    """``cells``: label -> cell name -> curves. Tokens/s, the metric at equal tokens and at
    equal wall time, per label (mean, sd, n)."""
    out: dict = {"tokens_s": {}, "equal_tokens": {}, "equal_time": {}, "times": []}
    for label, group in cells.items():
        out["tokens_s"][label] = stats([tokens_per_second(c, tokens_per_step)
                                        for c in group.values()])
    every = [c for group in cells.values() for c in group.values()]
    common = set.intersection(*(set(s for s, _ in c["val"]) for c in every)) if every else set()
    for step in sorted(common):
        out["equal_tokens"][step] = {label: stats([dict(c["val"])[step] for c in group.values()])
                                     for label, group in cells.items()}
    ends = {label: min(curve(c)[-1][0] for c in group.values() if curve(c))
            for label, group in cells.items() if any(curve(c) for c in group.values())}
    if ends:
        horizon = min(ends.values())
        out["times"] = [horizon / 2, horizon]
        for t in out["times"]:
            out["equal_time"][t] = {label: stats([at_time(curve(c), t) for c in group.values()])
                                    for label, group in cells.items()}
    return out


def _bound(g: dict) -> tuple[str, float]:
    k = next(k for k in BOUNDS if k in g)
    return k, float(g[k])


def _met(value: float, k: str, bound: float) -> bool:
    return {"at_least": value >= bound, "at_most": value <= bound, "below": value < bound,
            "above": value > bound}[k]


def goals(res: dict, spec: dict) -> list[str]:
    """One line per goal with its measured number (none where it cannot be read yet)."""
    lines, unit = [], f" {spec['unit']}" if spec["unit"] else ""
    for g in spec["goals"]:
        a, b = str(g["of"]), str(g["against"])
        k, bound = _bound(g)
        if g["measure"] == "throughput":
            ta, tb = res["tokens_s"].get(a), res["tokens_s"].get(b)
            if ta and tb:
                ratio = ta[0] / tb[0]
                lines.append(f"- throughput: {a} / {b} = {ratio:.2f}x (goal {BOUNDS[k]} "
                             f"{bound:g}x): {'met' if _met(ratio, k, bound) else 'not met'}")
            continue
        if g["measure"] == "equal_tokens":
            rows = [(f"equal tokens ({max(res['equal_tokens']) + 1} steps)",
                     res["equal_tokens"][max(res["equal_tokens"])])] if res["equal_tokens"] else []
        else:
            rows = [(f"equal wall time ({t:.0f} s of training)", row)
                    for t, row in res["equal_time"].items()]
        shown_bound = f"{bound:+g}" if bound else "0"
        for what, row in rows:
            va, vb = row.get(a), row.get(b)
            if va and vb:
                gap = va[0] - vb[0]
                lines.append(f"- {spec['name']} at {what}: {a} - {b} = {gap:+.3f}{unit} (goal "
                             f"{BOUNDS[k]} {shown_bound}): "
                             f"{'met' if _met(gap, k, bound) else 'not met'}")
    return lines


def speed(grid: Grid, spec: dict, data: list[CellData], folder: Path) -> list[str] | None:
    """The section's Markdown lines, or None where no cell has curves here."""
    from dnirnn.sweep.report_spec import selected

    tps = spec["tokens_per_step"]
    cells: dict[str, dict[str, dict]] = {}
    missing = []
    for d in data:
        if not selected(d.cell, spec):
            continue
        c = _curves(d, spec)
        if c is None:
            missing.append(d.cell.name)
        else:
            cells.setdefault(d.cell.labels[spec["axis"]], {})[d.cell.name] = c
    if not cells:
        return None
    res = analyse(cells, tps)
    about = grid.about.get(spec["axis"], {})
    name = spec["name"][:1].upper() + spec["name"][1:]
    lines = []
    if spec["goals"]:
        lines += ["## Goals", "", *(goals(res, spec) or ["- (not enough cells yet)"]), ""]
    lines += ["## Tokens per second (training steps only)", ""]
    lines += markdown_table([spec["axis"], "what", "tokens/s"],
                            [[label, about.get(label, ""), show(res["tokens_s"][label], ".0f")]
                             for label in cells])
    lines += ["", f"## {name} at equal tokens", ""]
    lines += markdown_table(["steps (tokens)", *cells],
                            [[f"{step + 1} ({(step + 1) * tps / 1e6:.2f} M)",
                              *(show(row[m]) for m in cells)]
                             for step, row in res["equal_tokens"].items()])
    lines += ["", f"## {name} at equal wall time", "",
              "Each cell's validation curve against its training seconds, linear between "
              f"validations, read at the end of the fastest {spec['axis']}'s run and halfway "
              "to it.", ""]
    lines += markdown_table(["training s", *cells],
                            [[f"{t:.0f}", *(show(row[m]) for m in cells)]
                             for t, row in res["equal_time"].items()])
    figure = folder / "curves.png"
    plot(cells, figure, spec)
    lines += ["", "## Learning curves", "", f"![{spec['name']} against wall time and tokens]"
              f"({folder.name}/{figure.name})"]
    if missing:
        lines += ["", f"Cells without a validation yet: {', '.join(missing)}."]
    return lines


def plot(cells: dict[str, dict[str, dict]], path: Path, spec: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tps = spec["tokens_per_step"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for i, (label, group) in enumerate(cells.items()):
        color = f"C{i}"
        for n, c in enumerate(group.values()):
            pts = curve(c)
            left.plot([t for t, _ in pts], [b for _, b in pts], color=color, marker=".",
                      label=label if n == 0 else None, alpha=0.8)
            right.plot([(s + 1) * tps / 1e6 for s, _ in c["val"]], [b for _, b in c["val"]],
                       color=color, marker=".", alpha=0.8)
    left.set_xlabel("training wall time (s, validation excluded)")
    right.set_xlabel("training tokens (millions)")
    left.set_ylabel(spec["name"])
    left.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


SECTIONS = {"speed": speed}
