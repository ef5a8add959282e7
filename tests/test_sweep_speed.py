"""grids/decoupled.yaml (issue 19, item 6) and the report section it asks for (`kind: speed`,
dnirnn.sweep.sections): (a), (b), (c) on their threads over 3 seeds; tokens/s, BPC at equal
tokens and at equal wall time read right on hand-made metrics.csv files whose answers are
known; the section written, and kept where the cells' folders are absent."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from dnirnn.sweep import sections
from dnirnn.sweep.grid import GridError, load_grid
from dnirnn.sweep.parts import shown
from dnirnn.sweep.report import write_csv, write_report
from dnirnn.sweep.runner import write_json

TPS = 2048


def test_the_grid_runs_a_b_c_on_their_threads_over_three_seeds():
    grid = load_grid("decoupled")
    by = {}
    for c in grid.cells:
        by.setdefault(c.labels["mode"], []).append(c)
    assert {m: len(cs) for m, cs in by.items()} == {
        "a_locked": 3, "b_one_process": 3, "c_two_processes": 3, "c_temporal_dni": 1,
        "c_no_context": 1}
    for mode, threads, recipe, devices in (("a_locked", 2, "ptb_char_stacked_tbptt", None),
                                           ("b_one_process", 2, "ptb_char_decoupled", "1"),
                                           ("c_two_processes", 1, "ptb_char_decoupled", None)):
        for c in by[mode]:
            assert (c.threads, c.recipe, c.args.get("trainer.devices")) == (threads, recipe,
                                                                            devices)
            assert "dnirnn.wallclock.WallClock" in c.callbacks
            assert c.args["trainer.max_steps"] == "2400" and c.args["wandb"] == "false"
    assert grid.threads == 2 and grid.out == Path("results/decoupled.md")
    (speed,) = grid.sections
    assert speed["kind"] == "speed" and speed["tokens_per_step"] == 8 * 8 * 32
    assert [g["measure"] for g in speed["goals"]] == ["throughput", "equal_tokens",
                                                      "equal_time"]


def curves(vals: dict[int, float], seconds_per_step: float, steps: int) -> dict:
    """A cell's curves as metrics.csv gives them: the clock on the row of step s after s
    steps, a validation after s + 1 steps on the row of step s."""
    return {"val": sorted((s - 1, v) for s, v in vals.items()),
            "time": {s: s * seconds_per_step for s in range(1, steps + 1)}}


SPEC = {"kind": "speed", "axis": "mode", "metric": "val/bpc", "name": "validation BPC",
        "unit": "BPC", "clock": "time/train_s", "tokens_per_step": TPS,
        "goals": [{"measure": "throughput", "of": "c", "against": "a", "at_least": 1.5},
                  {"measure": "equal_tokens", "of": "c", "against": "a", "at_most": 0.05},
                  {"measure": "equal_time", "of": "c", "against": "a", "below": 0}]}


def test_tokens_per_second_and_bpc_at_equal_tokens_and_time():
    # (a) 2 s a step, (c) 1 s a step; validations after 10 and 20 steps
    a, c = {10: 3.0, 20: 2.0}, {10: 3.2, 20: 2.2}
    cells = {"a": {}, "c": {}}
    for seed, shift in (("0", 0.0), ("1", 0.2)):
        cells["a"][seed] = curves({k: v + shift for k, v in a.items()}, 2.0, 20)
        cells["c"][seed] = curves({k: v + shift for k, v in c.items()}, 1.0, 20)
    res = sections.analyse(cells, TPS)
    assert res["tokens_s"]["a"][0] == pytest.approx(TPS / 2.0)
    assert res["tokens_s"]["c"][0] == pytest.approx(TPS / 1.0)
    assert sorted(res["equal_tokens"]) == [9, 19]  # (rows of steps 10 and 20)
    assert res["equal_tokens"][19]["a"][:2] == pytest.approx((2.1, 0.1414213), rel=1e-5)
    # equal time: (c) ends its 20 steps at 20 s, where (a) is at step 10 (3.0 / 3.2)
    assert res["times"] == [10.0, 20.0]
    assert res["equal_time"][20.0]["a"][0] == pytest.approx(3.1)
    assert res["equal_time"][20.0]["c"][0] == pytest.approx(2.3)
    assert res["equal_time"][10.0]["a"] is None  # (before (a)'s first validation)
    lines = "\n".join(sections.goals(res, SPEC))
    assert "throughput: c / a = 2.00x (goal >= 1.5x): met" in lines
    assert "(20 steps): c - a = +0.200 BPC (goal <= +0.05): not met" in lines
    assert "(20 s of training): c - a = -0.800 BPC (goal < 0): met" in lines


GRID = """title: t
description: d
runs: {runs}
out: {out}
seeds: [0]
threads: 2
axes:
  mode:
    a: {{recipe: ptb_char_stacked_tbptt}}
    c: {{recipe: ptb_char_decoupled, threads: 1}}
metrics:
  bpc: {{key: val/bpc, reduce: last, format: .3f}}
sections:
  - {{kind: speed, axis: mode, metric: val/bpc, name: validation BPC, unit: BPC,
      tokens_per_step: 2048, goals: [{{measure: throughput, of: c, against: a, at_least: 1.5}}]}}
"""


def write_cell(cell, vals: dict[int, float], seconds_per_step: float, steps: int) -> None:
    folder = cell.root / "version_0"
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["epoch", "step", "time/train_s", "val/bpc"])
        w.writeheader()
        for s in range(1, steps + 1):
            w.writerow({"epoch": 0, "step": s, "time/train_s": s * seconds_per_step})
        for s, bpc in vals.items():
            w.writerow({"epoch": 0, "step": s - 1, "val/bpc": bpc})
    write_json(cell.root / "done.json", {"spec": cell.spec(), "seconds": 1.0,
                                         "command": shown(cell.fit_args(), cell.threads)})


def test_the_report_writes_the_section_and_keeps_it_and_its_notes_without_the_folders(
        tmp_path):
    grid_file = tmp_path / "grid.yaml"
    out = tmp_path / "results" / "g.md"
    grid_file.write_text(GRID.format(runs=tmp_path / "runs", out=out))
    g = load_grid(grid_file)
    for cell in g.cells:
        fast = cell.labels["mode"] == "c"
        write_cell(cell, {10: 3.2 if fast else 3.0, 20: 2.2 if fast else 2.0},
                   1.0 if fast else 2.0, 20)
    write_report(g)
    write_csv(g, out.with_suffix("") / "cells.csv")
    text = out.read_text()
    assert "- throughput: c / a = 2.00x (goal >= 1.5x): met" in text
    assert "| 20 (0.04 M) | 2.000 ± 0.000 (n=1) | 2.200 ± 0.000 (n=1) |" in text
    assert "![validation BPC against wall time and tokens](g/curves.png)" in text
    assert (out.with_suffix("") / "curves.png").stat().st_size > 0
    out.write_text(text.replace("(notes written by hand go here; kept when the report is "
                                "rewritten)", "Measured on a quiet machine."))
    # a fresh checkout: no run folders, the committed report and cells.csv
    (tmp_path / "runs").rename(tmp_path / "gone")
    before = out.read_text()
    write_report(g)
    after = out.read_text()
    assert "Measured on a quiet machine." in after
    assert "- throughput: c / a = 2.00x (goal >= 1.5x): met" in after  # (kept)
    assert "| a | 2.000 | 1 |" in after  # (the table, from cells.csv)
    strip = [line for line in before.splitlines() if "written by dnirnn sweep" not in line]
    assert strip == [line for line in after.splitlines()
                     if "written by dnirnn sweep" not in line]


@pytest.mark.parametrize("change, message", [
    ("kind: speed, axis: nope", "axis is one of"),
    ("kind: speed, axis: mode, metric: val/bpc", "tokens_per_step"),
    ("kind: pace", "kind: speed"),
])
def test_a_bad_section_says_what_to_change(tmp_path, change, message):
    grid_file = tmp_path / "grid.yaml"
    text = GRID.format(runs=tmp_path / "runs", out=tmp_path / "g.md")
    grid_file.write_text(text[:text.index("sections:")] + f"sections:\n  - {{{change}}}\n")
    with pytest.raises(GridError, match=message):
        load_grid(grid_file)
