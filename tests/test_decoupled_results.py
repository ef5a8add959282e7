"""Issue 19, item 6's grid and report: scripts/decoupled.yaml names (a), (b), (c) on their
threads over 3 seeds, and scripts/decoupled_results.py reads tokens/s, BPC at equal tokens
and at equal wall time right (on hand-made metrics.csv files whose answers are known)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from dnirnn.sweep.grid import load_grid

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("decoupled_results",
                                              ROOT / "scripts" / "decoupled_results.py")
results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results)


def test_the_grid_runs_a_b_c_on_their_threads_over_three_seeds():
    grid = load_grid(str(ROOT / "scripts" / "decoupled.yaml"))
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


def write_cell(root: Path, vals: dict[int, float], seconds_per_step: float, steps: int):
    """A cell's metrics.csv as dnirnn writes it: time/train_s on the row of step s after s
    steps, a validation after s + 1 steps on the row of step s."""
    folder = root / "version_0"
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["epoch", "step", "time/train_s", "val/bpc"])
        w.writeheader()
        for s in range(1, steps + 1):
            w.writerow({"epoch": 0, "step": s, "time/train_s": s * seconds_per_step})
        for s, bpc in vals.items():
            w.writerow({"epoch": 0, "step": s - 1, "val/bpc": bpc})


def test_tokens_per_second_and_bpc_at_equal_tokens_and_time(tmp_path):
    # (a) 2 s a step, (c) 1 s a step; validations after 10 and 20 steps
    a = {10: 3.0, 20: 2.0}
    c = {10: 3.2, 20: 2.2}
    for seed, shift in (("0", 0.0), ("1", 0.2)):
        write_cell(tmp_path / f"a{seed}", {k: v + shift for k, v in a.items()}, 2.0, 20)
        write_cell(tmp_path / f"c{seed}", {k: v + shift for k, v in c.items()}, 1.0, 20)
    cells = {"a_locked": {s: results.read_cell(tmp_path / f"a{s}") for s in "01"},
             "c_two_processes": {s: results.read_cell(tmp_path / f"c{s}") for s in "01"}}
    res = results.analyse(cells)
    tps = results.TOKENS_PER_STEP
    assert res["tokens_s"]["a_locked"][0] == pytest.approx(tps / 2.0)
    assert res["tokens_s"]["c_two_processes"][0] == pytest.approx(tps / 1.0)
    assert sorted(res["equal_tokens"]) == [9, 19]  # (rows of steps 10 and 20)
    assert res["equal_tokens"][19]["a_locked"][:2] == pytest.approx((2.1, 0.1414213), rel=1e-5)
    # equal time: (c) ends its 20 steps at 20 s, where (a) is at step 10 (3.0 / 3.2)
    assert res["times"] == [10.0, 20.0]
    assert res["equal_time"][20.0]["a_locked"][0] == pytest.approx(3.1)
    assert res["equal_time"][20.0]["c_two_processes"][0] == pytest.approx(2.3)
    assert res["equal_time"][10.0]["a_locked"] is None  # (before (a)'s first validation)
    lines = "\n".join(results.goals(res))
    assert "(c) / (a) = 2.00x (goal >= 1.5x): met" in lines
    assert "(20 steps): (c) - (a) = +0.200 BPC (goal <= +0.05): not met" in lines
    assert "(20 s of training): (c) - (a) = -0.800 BPC (goal < 0): met" in lines


def test_the_report_writes_the_goals_and_keeps_its_hand_written_notes(tmp_path):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(f"""title: t
description: d
runs: {tmp_path / "runs"}
out: {tmp_path / "grid.md"}
seeds: [0]
axes:
  mode:
    a_locked: {{recipe: ptb_char_stacked_tbptt, threads: 2}}
    c_two_processes: {{recipe: ptb_char_decoupled, threads: 1}}
""")
    for cell in load_grid(str(grid_file)).cells:
        fast = cell.labels["mode"] == "c_two_processes"
        write_cell(cell.root, {10: 3.2 if fast else 3.0, 20: 2.2 if fast else 2.0},
                   1.0 if fast else 2.0, 20)
    out = tmp_path / "decoupled.md"
    assert results.report(str(grid_file), out) == out
    text = out.read_text()
    assert "(c) / (a) = 2.00x (goal >= 1.5x): met" in text
    assert (out.with_suffix("") / "curves.png").stat().st_size > 0
    out.write_text(text.replace("(notes written by hand go here; kept when the report is "
                                "rewritten)", "Measured on a quiet machine."))
    results.report(str(grid_file), out)
    assert "Measured on a quiet machine." in out.read_text()
    assert "notes written by hand go here" not in out.read_text()
