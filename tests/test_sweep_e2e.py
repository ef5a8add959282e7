"""dnirnn sweep end to end on a tiny grid of real cells (2 recipes x 2 seeds, 4 training
steps each, plus a cell with a bad override): each cell is its own `python -m dnirnn fit`
process; the failing cell is recorded and the others finish; the report's table holds the
numbers of the cells' own metrics.csv; the plots exist; a rerun skips the finished cells;
--report rewrites the report without running anything. About 40 s of CPU."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from dnirnn.sweep import main

GRID = """
title: Tiny
runs: runs
out: results/tiny.md
args:
  trainer.max_steps: 4
  trainer.log_every_n_steps: 1
  trainer.enable_model_summary: false
  data.init_args.steps_per_epoch: 2
  data.init_args.val_batches: 1
  model.hidden_size: 8
  wandb: false
seeds: [0, 1]
axes:
  variant:
    tbptt: copy_tbptt
    dni: {recipe: copy_dni, model.window: 3}
blocks:
  - axes: {variant: }
  - axes: {variant: {bad: {recipe: copy_tbptt, model.no_such_option: 3}}}
    seeds: [0]
metrics:
  loss: {key: train/loss, reduce: mean, format: .6f}
  val: {key: val/bits_per_step, reduce: last, format: .6f}
tables:
  - rows: [variant]
    metrics: [loss, val]
plots:
  - by: [variant]
"""


def column(run: Path, key: str) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def expected(values: list[float]) -> str:
    """The report's entry, computed here from the raw numbers."""
    sd = statistics.stdev(values)
    return (f"{statistics.fmean(values):.6f} ± {sd:.6f} ("
            + ", ".join(f"{v:.6f}" for v in values) + ")")


def test_sweep_runs_a_tiny_grid_end_to_end(tmp_path, cli_sandbox, capsys):
    (tmp_path / "tiny.yaml").write_text(GRID)
    with pytest.raises(SystemExit) as e:
        main(["tiny.yaml", "--jobs", "2"])
    assert e.value.code == 1  # one cell failed
    out = capsys.readouterr().out
    assert "5 cells, 0 done, 5 to run" in out and "FAILED bad_s0" in out
    runs = tmp_path / "runs"
    failed = json.loads((runs / "bad_s0" / "failed.json").read_text())
    assert failed["returncode"] == 2 and "no_such_option" in failed["reason"]
    done = ["tbptt_s0", "tbptt_s1", "dni_s0", "dni_s1"]
    for name in done:
        record = json.loads((runs / name / "done.json").read_text())
        assert record["seconds"] > 0 and "OMP_NUM_THREADS=1 dnirnn fit" in record["command"]
        summary = json.loads((runs / name / "version_0" / "summary.json").read_text())
        assert summary["global_step"] == 4
    # the table holds the cells' own numbers: mean ± sd (each seed) of each variant
    report = (tmp_path / "results" / "tiny.md").read_text()
    for variant in ("tbptt", "dni"):
        runs_ = [runs / f"{variant}_s{s}" / "version_0" for s in (0, 1)]
        loss = [statistics.fmean(column(r, "train/loss")) for r in runs_]
        val = [column(r, "val/bits_per_step")[-1] for r in runs_]
        assert loss[0] != loss[1]  # the seeds differ, so the spread is a real check
        assert f"| {variant} | {expected(loss)} | {expected(val)} | 2 |" in report
    assert "| bad_s0 | failed (fit, exit 2): dnirnn: error: unknown option " \
           "--model.no_such_option" in report
    assert "--model.window=3" in report and "--seed_everything=1" in report  # commands
    pngs = sorted((tmp_path / "results" / "tiny").glob("*.png"))
    assert [p.name for p in pngs] == ["dni.png", "tbptt.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 5000 for p in pngs)
    assert "![dni](tiny/dni.png)" in report
    # a rerun skips the finished cells (the failed one would be tried again: not selected
    # here, to save its 6 s; tests/test_sweep.py checks the retry)
    before = {n: ((runs / n / "done.json").read_text(), (runs / n / "fit.log").stat().st_size)
              for n in done}
    main(["tiny.yaml", "--jobs", "2", "--only", "tbptt_*,dni_*"])
    out = capsys.readouterr().out
    assert "4 cells, 4 done, 0 to run" in out and "start" not in out
    assert before == {n: ((runs / n / "done.json").read_text(),
                          (runs / n / "fit.log").stat().st_size) for n in done}
    # --report alone: the same tables from the files, nothing run
    (tmp_path / "results" / "tiny.md").unlink()
    main(["tiny.yaml", "--report"])
    again = (tmp_path / "results" / "tiny.md").read_text()
    assert again.split("## Results")[1].split("## Plots")[0] == \
        report.split("## Results")[1].split("## Plots")[0]
    assert "start" not in capsys.readouterr().out
