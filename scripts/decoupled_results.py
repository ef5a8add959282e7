r"""Issue 19, item 6: the report of ``scripts/decoupled.yaml`` (decoupled layers against the
locked model): tokens per second, validation BPC at equal tokens and at equal wall time
(mean ± sd over the seeds), the goals checked, and the learning curves against wall time
and tokens.

    python scripts/decoupled_results.py scripts/decoupled.yaml [--out results/decoupled.md]

For each cell (``dnirnn sweep``'s folders) it reads ``version_*/metrics.csv``: the rows with
``val/bpc`` (a validation after ``s + 1`` training steps is the row of step ``s``, as the
training metrics of its last step) and ``time/train_s`` (``dnirnn.wallclock.WallClock``:
seconds spent in the first ``s`` training steps, validation excluded, on the row of step
``s``). Tokens are steps x windows_per_step x window x batch_size (the recipes': 2,048
characters per step).

- tokens/s: the last logged ``time/train_s`` and its step;
- BPC at equal tokens: ``val/bpc`` at the validation steps every cell reached;
- BPC at equal wall time: each cell's validation curve as a function of its training time
  (linear between validations, the first validation's time from 0 taken as unknown), read at
  times every cell of the compared modes reached: the fastest mode's last validation and its
  halfway point;
- the goals (issue 19, 2-core CPU): (c) >= 1.5x the tokens/s of (a); (c) within 0.05 BPC of
  (a) at equal tokens; (c) ahead of (a) at equal wall time.

The plot (``<out without .md>/curves.png``) draws val BPC against training seconds and
against tokens, one line per cell, one colour per mode. What is written by hand between
``<!-- notes -->`` and ``<!-- /notes -->`` is kept when the report is rewritten (as
``dnirnn sweep``'s reports).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

TOKENS_PER_STEP = 8 * 8 * 32  # windows_per_step x window x batch_size of the recipes
MODES = {"a": "a_locked", "b": "b_one_process", "c": "c_two_processes"}


def read_cell(root: Path) -> dict | None:
    """``{"val": [(step, bpc)], "time": {step: train_s}}`` of a cell, or None (not run)."""
    runs = sorted(root.glob("version_*/metrics.csv"))
    if not runs:
        return None
    val, time = [], {}
    with open(runs[-1]) as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            if row.get("val/bpc"):
                val.append((step, float(row["val/bpc"])))
            if row.get("time/train_s"):
                time[step] = float(row["time/train_s"])
    return {"val": sorted(val), "time": time}


def train_seconds(cell: dict, step: int) -> float | None:
    """The training seconds at ``step`` (the last WallClock row at or before it)."""
    known = [s for s in cell["time"] if s <= step]
    return cell["time"][max(known)] if known else None


def curve(cell: dict) -> list[tuple[float, float]]:
    """``[(train_s, val bpc)]`` at the validations whose time is known."""
    out = []
    for step, bpc in cell["val"]:
        t = train_seconds(cell, step + 1)
        if t is not None:
            out.append((t, bpc))
    return out


def at_time(points: list[tuple[float, float]], t: float) -> float | None:
    """The curve at ``t``, linear between its points; None outside them."""
    for (t0, y0), (t1, y1) in zip(points, points[1:]):
        if t0 <= t <= t1:
            return y0 if t1 == t0 else y0 + (y1 - y0) * (t - t0) / (t1 - t0)
    if points and points[-1][0] == t:
        return points[-1][1]
    return None


def tokens_per_second(cell: dict) -> float | None:
    if not cell["time"]:
        return None
    step = max(cell["time"])
    seconds = cell["time"][step]
    return None if seconds <= 0 else step * TOKENS_PER_STEP / seconds


def stats(values: list[float]) -> tuple[float, float, int] | None:
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


def analyse(cells: dict[str, dict[str, dict]]) -> dict:
    """``cells``: mode -> seed -> cell. The numbers of the report (see the docstring)."""
    out: dict = {"tokens_s": {}, "equal_tokens": {}, "equal_time": {}, "times": []}
    for mode, seeds in cells.items():
        out["tokens_s"][mode] = stats([tokens_per_second(c) for c in seeds.values()])
    every = [c for seeds in cells.values() for c in seeds.values()]
    common = set.intersection(*(set(s for s, _ in c["val"]) for c in every)) if every else set()
    for step in sorted(common):
        out["equal_tokens"][step] = {
            mode: stats([dict(c["val"])[step] for c in seeds.values()])
            for mode, seeds in cells.items()}
    ends = {mode: min(curve(c)[-1][0] for c in seeds.values() if curve(c))
            for mode, seeds in cells.items() if any(curve(c) for c in seeds.values())}
    if ends:
        horizon = min(ends.values())
        out["times"] = [horizon / 2, horizon]
        for t in out["times"]:
            out["equal_time"][t] = {mode: stats([at_time(curve(c), t) for c in seeds.values()])
                                    for mode, seeds in cells.items()}
    return out


def goals(res: dict) -> list[str]:
    """The issue's goals, each a line with its measured numbers (or why it cannot be read)."""
    a, c = MODES["a"], MODES["c"]
    lines = []
    ta, tc = res["tokens_s"].get(a), res["tokens_s"].get(c)
    if ta and tc:
        ratio = tc[0] / ta[0]
        lines.append(f"- throughput: (c) / (a) = {ratio:.2f}x (goal >= 1.5x): "
                     f"{'met' if ratio >= 1.5 else 'not met'}")
    if res["equal_tokens"]:
        step = max(res["equal_tokens"])
        ba, bc = res["equal_tokens"][step].get(a), res["equal_tokens"][step].get(c)
        if ba and bc:
            gap = bc[0] - ba[0]
            lines.append(f"- quality at equal tokens ({step + 1} steps): (c) - (a) = "
                         f"{gap:+.3f} BPC (goal <= +0.05): {'met' if gap <= 0.05 else 'not met'}")
    for t, row in res["equal_time"].items():
        ba, bc = row.get(a), row.get(c)
        if ba and bc:
            lines.append(f"- quality at equal wall time ({t:.0f} s of training): (c) - (a) = "
                         f"{bc[0] - ba[0]:+.3f} BPC (goal < 0): "
                         f"{'met' if bc[0] < ba[0] else 'not met'}")
    return lines


def plot(cells: dict[str, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for i, (mode, seeds) in enumerate(cells.items()):
        color = f"C{i}"
        for n, c in enumerate(seeds.values()):
            pts = curve(c)
            label = mode if n == 0 else None
            left.plot([t for t, _ in pts], [b for _, b in pts], color=color, marker=".",
                      label=label, alpha=0.8)
            right.plot([(s + 1) * TOKENS_PER_STEP / 1e6 for s, _ in c["val"]],
                       [b for _, b in c["val"]], color=color, marker=".", alpha=0.8)
    left.set_xlabel("training wall time (s, validation excluded)")
    right.set_xlabel("training tokens (millions of characters)")
    left.set_ylabel("validation BPC")
    left.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(grid_path: str, out: Path | None) -> Path:
    from dnirnn.sweep.grid import load_grid
    from dnirnn.sweep.report import notes_block

    grid = load_grid(grid_path)
    out = out or grid.out.with_name("decoupled.md")
    cells: dict[str, dict[str, dict]] = {}
    missing = []
    for cell in grid.cells:
        data = read_cell(cell.root)
        if data is None or not data["val"]:
            missing.append(cell.name)
            continue
        cells.setdefault(cell.labels["mode"], {})[cell.labels["seed"]] = data
    res = analyse(cells)
    about = grid.about.get("mode", {})
    lines = [f"# {grid.title}", "", grid.description.strip(), "",
             f"Grid: `{grid.path}`; report: `python scripts/decoupled_results.py {grid_path}`.",
             "", "## Goals (issue 19)", "", *(goals(res) or ["- (not enough cells yet)"]), "",
             "## Tokens per second (training steps only)", "",
             "| mode | what | tokens/s |", "|---|---|---|"]
    for mode in cells:
        lines.append(f"| {mode} | {about.get(mode, '')} | {show(res['tokens_s'][mode], '.0f')} |")
    lines += ["", "## Validation BPC at equal tokens", "",
              "| steps (tokens) | " + " | ".join(cells) + " |",
              "|---|" + "---|" * len(cells)]
    for step, row in res["equal_tokens"].items():
        lines.append(f"| {step + 1} ({(step + 1) * TOKENS_PER_STEP / 1e6:.2f} M) | "
                     + " | ".join(show(row[m]) for m in cells) + " |")
    lines += ["", "## Validation BPC at equal wall time", "",
              "Each cell's validation curve against its training seconds, linear between "
              "validations, read at the end of the fastest mode's run and halfway to it.", "",
              "| training s | " + " | ".join(cells) + " |", "|---|" + "---|" * len(cells)]
    for t, row in res["equal_time"].items():
        lines.append(f"| {t:.0f} | " + " | ".join(show(row[m]) for m in cells) + " |")
    figure = out.with_suffix("") / "curves.png"
    if cells:
        plot(cells, figure)
        lines += ["", "## Learning curves", "", f"![val BPC against wall time and tokens]"
                  f"({figure.relative_to(out.parent).as_posix()})"]
    if missing:
        lines += ["", f"Cells without a validation yet: {', '.join(missing)}."]
    lines += ["", notes_block(out)]  # (what was written by hand: kept)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("grid", help="the grid file (scripts/decoupled.yaml)")
    p.add_argument("--out", type=Path, default=None,
                   help="the report (default: decoupled.md beside the grid's out:)")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    print(report(a.grid, a.out))


if __name__ == "__main__":
    main()
