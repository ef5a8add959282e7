"""dnirnn sweep's report without training: its numbers, tables, wins and plots from fake run
folders, the parameter counts, values at a step or on a clock, entry formats, the dry run,
bad grids, the documented grid examples, and a report that never drops cells it lacks.
Grids and the runner: tests/test_sweep.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from dnirnn.sweep import main
from dnirnn.sweep.grid import load_grid
from dnirnn.sweep.parts import Metric
from dnirnn.sweep.report import CellData, entry, write_report
from dnirnn.sweep.runner import write_json

from .sweep_common import GRID, fake_cell, grid_file, two_cells


@pytest.fixture(autouse=True)
def in_tmp(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # runs/ and reports land in tmp


# ---- the report, from fake run folders ------------------------------------------------------

@pytest.mark.parametrize("layout", ["now", "before"])
def test_parameter_counts_count_least_squares_maps_not_statistics(tmp_path, layout):
    """A least-squares synthesizer counts its maps W (P, n, S), whether the checkpoint holds
    W beside A and b (before) or only A's triangle, b and the ages (now: W re-solved)."""
    (cell,) = two_cells(tmp_path)[:1]
    fake_cell(cell, [{"step": 0}])
    P, n, S = 4, 7, 6
    ls = {"A_upper": torch.zeros(P, n * (n + 1) // 2), "b": torch.zeros(P, n, S),
          "age": torch.zeros(P)} if layout == "now" else {
        "A": torch.zeros(P, n, n), "b": torch.zeros(P, n, S), "W": torch.zeros(P, n, S)}
    sd = {"engine.core.weight": torch.zeros(10, 3),
          **{f"engine.synthesizer.{k}": v for k, v in ls.items()},
          "engine.guard.rms": torch.zeros(P)}
    (cell.root / "version_0" / "checkpoints").mkdir()
    torch.save({"state_dict": sd}, cell.root / "version_0" / "checkpoints" / "last.ckpt")
    assert CellData(cell).params() == {"params/core": 30, "params/synthesizer": P * n * S}


def test_a_value_at_a_step_the_run_never_reached_is_none(tmp_path):
    """`at: N` is the last value at or before step N of a run that reached N; a run that
    stopped earlier (3 epochs where the table asks for epoch 6) has none there."""
    a, b = two_cells(tmp_path)
    rows = [{"step": 9, "val/ppl": 2.0}, {"step": 19, "val/ppl": 1.0}]
    fake_cell(a, rows, {"global_step": 20})  # reached step 20 (its last row logged at 19)
    fake_cell(b, rows[:1], {"global_step": 10})
    at = {n: Metric(name="v", key="val/ppl", at=n) for n in (10, 20)}
    assert [CellData(a).value(at[n]) for n in (10, 20)] == [2.0, 1.0]
    assert [CellData(b).value(at[n]) for n in (10, 20)] == [2.0, None]


def test_a_value_at_seconds_is_read_on_the_clock_series(tmp_path):
    """`at: t, x: time/train_cpu_s`: the last value logged at or before the step where the
    clock reaches t seconds; none past the run's last reading of the clock."""
    (a,) = two_cells(tmp_path)[:1]
    fake_cell(a, [{"step": 10, "time/train_cpu_s": 5.0, "curriculum/max_level_solved": 1},
                  {"step": 20, "time/train_cpu_s": 12.0, "curriculum/max_level_solved": 3},
                  {"step": 30, "time/train_cpu_s": 20.0, "curriculum/max_level_solved": 4}],
              {"global_step": 30})
    level = {t: Metric(name="l", key="curriculum/max_level_solved", at=t,
                       x="time/train_cpu_s") for t in (4, 5, 15, 20, 21)}
    assert [CellData(a).value(level[t]) for t in (4, 5, 15, 20, 21)] == [None, 1, 3, 4, None]


REPORT_GRID = """
runs: runs
out: results/r.md
recipe: "{task}_{mode}"
axes: {task: [copy], T: [2, 3], mode: [tbptt, dni]}
seeds: [0, 1]
metrics:
  level: curriculum/max_level_solved
  loss_late: {key: train/loss, reduce: mean, from: 0.5, format: .2f}
  loss_at: {key: train/loss, at: 5}
  cos_in: {file: diagnostics.jsonl, key: cos, where: {phase: input}}
  final: {file: summary.json, key: curriculum.max_level_solved}
  test_bpc: {key: test/bpc, stage: test, better: min}
tables:
  - title: Levels
    rows: [task, T]
    columns: mode
    metrics: [level]
    reference: {name: paper, values: {copy: {2: [7, 16], 3: {dni: 14}}}}
    wins: [[dni, tbptt]]
  - title: Numbers
    rows: [mode]
    metrics: [loss_late, loss_at, cos_in, final, test_bpc, wall_s]
    entry: spread
  - {title: Overall, rows: [], columns: mode, metrics: [level], entry: mean, wins: [[dni, tbptt]]}
plots:
  - by: [T]
"""


def test_metrics_tables_wins_reference_and_plots_from_fake_runs(tmp_path):
    g = load_grid(grid_file(tmp_path, REPORT_GRID))
    level = {("2", "tbptt"): (1, 2), ("2", "dni"): (6, 4), ("3", "tbptt"): (3, 3),
             ("3", "dni"): (3, 3)}
    for c in g.cells:
        lv = level[(c.labels["T"], c.labels["mode"])][int(c.labels["seed"])]
        rows = [{"step": s, "train/loss": float(s), "curriculum/max_level_solved": min(s, lv)}
                for s in range(0, 10)]
        diag = [{"step": 0, "k": 1, "phase": "input", "cos": 0.1},
                {"step": 5, "k": 1, "phase": "input", "cos": 0.3},
                {"step": 5, "k": 2, "phase": "answer", "cos": 0.9}]
        fake_cell(c, rows, {"curriculum": {"max_level_solved": lv + 100}}, diag,
                  test={"test/bpc": 1.25} if c.labels["mode"] == "dni" else None)
    d = CellData(next(c for c in g.cells if c.name == "copy_T2_dni_s1"))
    m = g.metrics
    assert d.value(m["level"]) == 4  # the best (max) of the series
    assert d.value(m["loss_late"]) == pytest.approx((5 + 6 + 7 + 8 + 9) / 5)  # steps >= 4.5
    assert d.value(m["loss_at"]) == 5.0
    assert d.value(m["cos_in"]) == pytest.approx(0.2)  # the answer-phase row left out
    assert d.value(m["final"]) == 104 and d.value(m["test_bpc"]) == 1.25
    out, pngs = write_report(g)
    text = out.read_text()
    assert "| task, T | tbptt | dni | paper: tbptt | paper: dni |" in text
    assert "| copy T2 | 1.5 ± 0.7071 (1, 2) | 5 ± 1.414 (6, 4) | 7 | 16 |" in text
    assert "| copy T3 | 3 ± 0 (3, 3) | 3 ± 0 (3, 3) | – | 14 |" in text
    assert ("- **copy**: dni beats tbptt at T2 (1 of 2 by the means, every seed apart at T2; "
            "ties at T3).") in text  # (dni's 6, 4 against tbptt's 1, 2)
    assert "| tbptt | 7.00 ± 0.00 | 5 ± 0 | 0.2 ± 0 | " in text  # loss_late, loss_at, cos
    assert "| dni | " in text and "1.25 ± 0 | 10 ± 0 | 4 |" in text  # test BPC, wall s, n
    assert "| all | 2.25 | 4 |" in text  # every T and seed of a mode in one entry
    assert ("- dni beats tbptt at all (1 of 1 by the means, every seed apart at none; ties at "
            "none).") in text  # (the seeds overlap: dni's 3 against tbptt's 3)
    assert [p.name for p in pngs] == ["T2.png", "T3.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert "![T2](r/T2.png)" in text
    assert "| copy_T2_tbptt_s0 | done | 1 | 7.00 |" in text  # the cells table, per cell
    # the hand-written notes survive a rewrite
    out.write_text(text.replace("(notes written by hand go here; kept when the report is "
                                "rewritten)", "MY ANALYSIS"))
    write_report(g)
    assert "MY ANALYSIS" in out.read_text() and not (out.parent / "r.before-sweep.md").exists()


def markdown_tables(text: str) -> list[list[str]]:
    """The Markdown tables of ``text``, each as its lines."""
    tables, run = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            run.append(line)
        elif run:
            tables, run = [*tables, run], []
    return tables


def cell_count(line: str) -> int:
    return len(re.split(r"(?<!\\)\|", line.strip())) - 2  # (an escaped \| is inside a cell)


def test_a_grid_without_metrics_gives_well_formed_tables(tmp_path):
    """Issue 32 item 16: a grid without `metrics:` gives tables whose header, delimiter and
    rows have the same number of cells, and no empty column: its table shows the wall time."""
    g = load_grid(grid_file(tmp_path, "runs: runs\nout: results/r.md\nrecipe: copy_{mode}\n"
                                      "axes: {mode: [tbptt, dni]}\n"
                                      "tables: [{}, {columns: mode}]\n"))
    for c in g.cells:
        fake_cell(c, [{"step": 0, "train/loss": 1.0}], seconds=12.0)
    tables = markdown_tables(write_report(g)[0].read_text())
    assert len(tables) == 3  # the two tables, the cells
    for t in tables:
        assert {cell_count(x) for x in t} == {cell_count(t[0])}, t
        assert "|  |" not in t[0], t
    assert tables[0][:3] == ["| mode | wall s | n |", "|---|---|---|", "| tbptt | 12 | 1 |"]
    assert tables[1][:3] == ["| cells | tbptt | dni |", "|---|---|---|", "| all | 12 | 12 |"]


def test_a_report_without_notes_block_is_backed_up_and_missing_cells_listed(tmp_path):
    g = load_grid(grid_file(tmp_path, REPORT_GRID))
    fake_cell(g.cells[0], [{"step": 0, "curriculum/max_level_solved": 1}])
    g.out.parent.mkdir()
    g.out.write_text("hand-made results\n")
    write_report(g)
    assert (g.out.parent / "r.before-sweep.md").read_text() == "hand-made results\n"
    text = g.out.read_text()
    assert "1 of 8 cells done (7 new)" in text
    assert "**Not in the tables (7)**" in text and "copy_T3_dni_s1" in text


def test_entry_formats():
    assert entry([], None) == "–" and entry([2.0], ".3f") == "2.000"
    assert entry([1.0, 3.0], None) == "2 ± 1.414 (1, 3)"
    assert entry([1.0, 3.0], None, "spread") == "2 ± 1.414"
    assert entry([1.0, 3.0], None, "mean") == "2"
    assert entry([1.0, 9.0, 2.0], None, "median") == "2 (1, 9, 2)"


def test_dry_run_prints_every_cell_and_writes_nothing(tmp_path, capsys):
    path = grid_file(tmp_path, GRID)
    main([str(path), "--dry-run"])
    out = capsys.readouterr().out
    assert out.count("dnirnn fit --config") == 9 and out.count("[new]") == 9
    assert "then OMP_NUM_THREADS=2 dnirnn test" in out
    assert not (tmp_path / "runs").exists()
    main([str(path), "--dry-run", "--only", "copy_T2_*"])
    assert capsys.readouterr().out.count("dnirnn fit") == 4


def test_bad_grid_exits_2_with_one_paragraph(tmp_path, capsys):
    path = grid_file(tmp_path, "recipe: copy_dnii\n")
    with pytest.raises(SystemExit) as e:
        main([str(path), "--dry-run"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("dnirnn sweep: error:") and "no recipe 'copy_dnii'" in err
    assert len(err.strip().splitlines()) == 1


def test_readme_grid_example_loads(tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    text = re.search(r"## Sweeps.*?```yaml\n(.*?)```", readme, re.S).group(1)
    g = load_grid(grid_file(tmp_path, text))
    assert len(g.cells) == 2 * 2 * 3 * 3
    assert {c.recipe for c in g.cells} == {"copy_dni", "repeat_copy_dni", "copy_tbptt",
                                           "repeat_copy_tbptt"}
    assert list(g.metrics) == ["curriculum/max_level_solved", "diag/sg_true_cos"]
    assert g.metrics["diag/sg_true_cos"].start == 0.5


def test_the_documented_grid_example_loads(tmp_path):
    import dnirnn.sweep

    doc = dnirnn.sweep.__doc__
    text = doc.split("::\n\n", 1)[1].split("\n\nCell names", 1)[0]
    g = load_grid(grid_file(tmp_path, "\n".join(line[4:] for line in text.splitlines())))
    assert len(g.cells) == 2 * 2 * 3 + 1 * 1 * 3  # the grid's seeds in both blocks
    assert [t["metrics"] for t in g.tables] == [["level", "test_bpc"]]
    assert {c.recipe for c in g.cells} == {"copy_tbptt", "copy_dni", "ptb_char_dni"}


def test_a_report_never_replaces_cells_it_does_not_have(tmp_path, capsys):
    """`--report` where the committed report holds finished cells whose folders here are
    failed here: exit 2, the report and its cells.csv left byte for byte; a sweep that ran
    sets them aside (``*.before-sweep.*``) before writing."""
    path = grid_file(tmp_path, "runs: runs\nout: results/r.md\nrecipe: copy_dni\n"
                               "axes: {T: [2, 3]}\nmetrics: {level: curriculum/max_level_solved}\n")
    g = load_grid(path)
    for c in g.cells:
        fake_cell(c, [{"step": 0, "curriculum/max_level_solved": 5}])
    main([str(path), "--report"])
    before = g.out.read_text()
    table = g.out.with_suffix("") / "cells.csv"
    rows = table.read_text()
    assert "2 of 2 cells done" in capsys.readouterr().out
    (g.cells[1].root / "done.json").unlink()  # a rerun of it failed here
    write_json(g.cells[1].root / "failed.json", {"stage": "fit", "returncode": 1})
    with pytest.raises(SystemExit) as e:
        main([str(path), "--report"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "T3 (failed)" in err and "left as it is" in err and "--out" in err
    assert len(err.strip().splitlines()) == 1
    assert g.out.read_text() == before and table.read_text() == rows
    # a fresh checkout (no folders): the report is rewritten from its cells.csv, unchanged
    import shutil
    shutil.rmtree(tmp_path / "runs")
    main([str(path), "--report"])
    assert "2 of 2 cells done (2 as recorded" in capsys.readouterr().out
    from dnirnn.sweep.report import set_aside
    assert [p.name for p in set_aside(g)] == ["r.before-sweep.md", "cells.before-sweep.csv"]
