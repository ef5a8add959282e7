"""dnirnn sweep without training: grid files -> cells and commands, the runner's resume /
restart / failure logic with a fake launcher, and the report's numbers from fake run folders.
The end-to-end run of real cells is tests/test_sweep_e2e.py."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from dnirnn.sweep import main
from dnirnn.sweep.grid import GridError, load_grid
from dnirnn.sweep.parts import Metric
from dnirnn.sweep.report import CellData, entry, write_report
from dnirnn.sweep.runner import Runner, failure_reason, state, write_json


@pytest.fixture(autouse=True)
def in_tmp(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # runs/ and reports land in tmp


def grid_file(tmp_path: Path, text: str, name: str = "g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GRID = """
runs: runs
recipe: "{task}_dni"
args: {model.window: "{T}", wandb: false}
callbacks:
  dnirnn.diagnostics.SyntheticGradientDiagnostics: {every_n_steps: 100, windows: 4}
axes:
  variant:
    tbptt: {recipe: "{task}_tbptt"}
    paper: dni_paper
    rls: {overlays: [dni_paper], model.synthesizer.fit: rls, about: "least squares, a, b"}
blocks:
  - axes: {task: [copy], T: [2, 3], variant: [tbptt, paper]}
    seeds: [0, 1]
  - axes: {task: [repeat_copy], T: {4: {model.windows_per_step: 2}}, variant: [rls]}
    callbacks:
      dnirnn.diagnostics.SyntheticGradientDiagnostics: {every_n_steps: 50}
    threads: 2
    test: best
"""


def test_grid_expands_blocks_labels_seeds_and_templates(tmp_path):
    g = load_grid(grid_file(tmp_path, GRID))
    assert [c.name for c in g.cells] == [
        "copy_T2_tbptt_s0", "copy_T2_tbptt_s1", "copy_T2_paper_s0", "copy_T2_paper_s1",
        "copy_T3_tbptt_s0", "copy_T3_tbptt_s1", "copy_T3_paper_s0", "copy_T3_paper_s1",
        "repeat_copy_T4_rls"]
    by = {c.name: c for c in g.cells}
    tb, paper, rls = by["copy_T3_tbptt_s1"], by["copy_T2_paper_s0"], by["repeat_copy_T4_rls"]
    assert tb.recipe == "copy_tbptt" and tb.overlays == [] and tb.threads == 1
    assert tb.args == {"model.window": "3", "wandb": "false", "seed_everything": "1"}
    assert paper.recipe == "copy_dni" and paper.overlays == ["dni_paper"]
    assert paper.configs[1].endswith("recipes/overlays/dni_paper.yaml")
    assert rls.args == {"model.window": "4", "wandb": "false", "model.windows_per_step": "2",
                        "model.synthesizer.fit": "rls"}  # no seeds in that block
    assert rls.threads == 2 and rls.test == "best" and tb.test is None
    assert rls.callbacks == {"dnirnn.diagnostics.SyntheticGradientDiagnostics":
                             {"every_n_steps": 50, "windows": 4}}
    cmd = tb.fit_args()
    assert cmd[:3] == ["fit", "--config", "copy_tbptt"]
    assert f"--trainer.default_root_dir={Path('runs') / tb.name}" in cmd
    i = cmd.index("--trainer.callbacks+=dnirnn.diagnostics.SyntheticGradientDiagnostics")
    assert cmd[i + 1:] == ["--trainer.callbacks.every_n_steps=100",
                           "--trainer.callbacks.windows=4"]
    assert rls.fit_args(Path("x/last.ckpt"))[-1] == "--ckpt_path=x/last.ckpt"
    test = rls.test_args("b.ckpt")
    assert test[0] == "test" and test[-1] == "--ckpt_path=b.ckpt"
    assert not any("callbacks" in a for a in test)  # the model and data only
    assert f"--trainer.default_root_dir={rls.root / 'test'}" in test
    assert g.about == {"variant": {"rls": "least squares, a, b"}}
    assert g.axes == ["task", "T", "variant", "seed"]
    assert g.labels["variant"] == ["tbptt", "paper", "rls"]  # the definition's order


@pytest.mark.parametrize("change, message", [
    ({"colour": 1}, "unknown key(s) colour"),
    ({"seed": [0, 1]}, "unknown key(s) seed. Did you mean seeds?"),
    ({"recipe": "copy_dnii"}, "no recipe 'copy_dnii'"),
    ({"overlays": ["no_such"]}, "no overlay 'no_such'"),
    ({"args": {"trainer.default_root_dir": "x"}}, "set by the sweep"),
    ({"args": {"model.window": "{W}"}}, "{W} names no axis"),
    ({"axes": {"mode": {"a": {"recipe": "copy_dni", "about": "x", "b": None}}}},
     "text split at a comma"),
    ({"axes": {"mode": {"a b": None}}}, "names a folder"),
    ({"blocks": [{"axes": {"mode": ["c"]}}]}, "axis mode has no label(s) c"),
    ({"blocks": [{"axes": {"mode": ["a"]}}, {"axes": {"mode": ["a"]}}]},
     "cells with the same name"),
    ({"tables": [{"metrics": ["nope"]}]}, "no metric nope"),
    ({"tables": [{"columns": "mode", "rows": ["T"]}]}, "no axis T"),
    ({"metrics": {"m": {"key": "x", "reduce": "median"}}}, "reduce is one of"),
])
def test_grid_errors_say_what_to_change(tmp_path, change, message):
    raw = {"recipe": "copy_dni", "axes": {"mode": {"a": None}}, **change}
    with pytest.raises(GridError) as err:
        load_grid(grid_file(tmp_path, yaml.safe_dump(raw)))
    assert message in str(err.value)


# ---- the runner, with a fake `python -m dnirnn` ---------------------------------------------

class FakeDnirnn:
    """Records the commands; ``fit`` leaves what a finished run leaves (or fails)."""

    def __init__(self, fail: set[str] = frozenset(), code: int = 2):
        self.calls: list[list[str]] = []
        self.envs: list[dict] = []
        self.fail, self.code = fail, code

    def __call__(self, cmd, log, env, running):
        self.calls.append(cmd)
        self.envs.append(env)
        root = Path(next(a.split("=", 1)[1] for a in cmd
                         if a.startswith("--trainer.default_root_dir=")))
        log.write_text(log.read_text() + "some output\n" if log.exists() else "some output\n")
        if root.name in self.fail:
            with open(log, "a") as f:
                f.write("dnirnn: error: unknown option --model.nope\n")
            return self.code
        run = root / "version_0"
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        for name in ("last.ckpt", "best.ckpt"):
            (run / "checkpoints" / name).write_text("x")
        (run / "summary.json").write_text(json.dumps({"metrics": {"test/bpc": 1.5}}))
        return 0


def two_cells(tmp_path, extra: str = ""):
    g = load_grid(grid_file(tmp_path, f"""
runs: runs
recipe: copy_dni
threads: 3
axes: {{variant: {{a: {{model.window: 2}}, b: {{model.window: 3}}}}}}
{extra}
"""))
    return g.cells


def test_runner_runs_records_and_skips_done_cells(tmp_path):
    cells = two_cells(tmp_path)
    fake = FakeDnirnn()
    assert Runner(jobs=2, launch=fake, say=lambda m: None).run(cells) == {"a": "done",
                                                                         "b": "done"}
    assert sorted(c[0] for c in fake.calls) == ["fit", "fit"]
    assert all(e["OMP_NUM_THREADS"] == "3" for e in fake.envs)
    done = json.loads((cells[0].root / "done.json").read_text())
    assert done["spec"] == cells[0].spec() and done["labels"] == {"variant": "a"}
    assert done["command"].startswith("OMP_NUM_THREADS=3 dnirnn fit --config copy_dni")
    assert state(cells[0]) == "done"
    Runner(launch=fake, say=lambda m: None).run(cells)
    assert len(fake.calls) == 2  # nothing ran again


def test_a_failed_cell_is_recorded_the_others_finish_and_it_is_retried(tmp_path):
    cells = two_cells(tmp_path)
    fake = FakeDnirnn(fail={"a"})
    said = []
    assert Runner(launch=fake, say=said.append).run(cells) == {"a": "failed", "b": "done"}
    failed = json.loads((cells[0].root / "failed.json").read_text())
    assert failed["stage"] == "fit" and failed["returncode"] == 2
    assert failed["reason"] == "dnirnn: error: unknown option --model.nope"
    assert any("FAILED a" in m and "--model.nope" in m for m in said)
    assert state(cells[0]) == "failed" and state(cells[1]) == "done"
    fake.fail = set()
    Runner(launch=fake, say=lambda m: None).run(cells)  # the next sweep tries it again
    assert [c[0] for c in fake.calls].count("fit") == 3 and state(cells[0]) == "done"
    assert not (cells[0].root / "failed.json").exists()
    assert "--ckpt_path" not in fake.calls[-1][-1]  # it had no checkpoint: a clean start
    # a cell that failed after a checkpoint (a full disk, a killed process) resumes from it
    (cells[1].root / "done.json").unlink()
    write_json(cells[1].root / "failed.json", {"stage": "fit"})
    assert state(cells[1]) == "failed"
    Runner(launch=fake, say=lambda m: None).run(cells[1:])
    ckpt = cells[1].root / "version_0" / "checkpoints" / "last.ckpt"
    assert fake.calls[-1][-1] == f"--ckpt_path={ckpt}"


def test_a_failed_cells_reason_is_the_error_not_a_later_warning():
    warning = ("/x/lightning/pytorch/utilities/data.py:123: Your `IterableDataset` has "
               "`__len__` defined.")
    assert failure_reason(["some output", "dnirnn: error: the loss is not finite at step 7;",
                           "  lower --model.lr", warning]) == \
        "dnirnn: error: the loss is not finite at step 7;"
    assert failure_reason(["Traceback (most recent call last):", '  File "x.py", line 1',
                           "torch.OutOfMemoryError: CUDA out of memory.", warning]) == \
        "torch.OutOfMemoryError: CUDA out of memory."
    assert failure_reason(["dnirnn: warning: options with no effect on this run: ...",
                           "Traceback (most recent call last):", "ValueError: x"]) == \
        "ValueError: x"  # (dnirnn's warning of item 8 is no reason)
    assert failure_reason(["Killed", "UserWarning: something"]) == "Killed"
    assert failure_reason([]) == ""


@pytest.mark.parametrize("code", [130, 143])
def test_interrupted_cell_is_no_failure(tmp_path, code):
    """dnirnn exits 130 on Ctrl-C and 143 on SIGTERM, after its checkpoint."""
    (cell,) = two_cells(tmp_path)[:1]
    (cell.root / "version_0" / "checkpoints").mkdir(parents=True)
    write_json(cell.root / "cell.json", {"spec": cell.spec(), "attempts": []})
    (cell.root / "version_0" / "checkpoints" / "last.ckpt").write_text("x")
    fake = FakeDnirnn(fail={"a"}, code=code)
    said = []
    assert Runner(launch=fake, say=said.append).run([cell]) == {"a": "partial"}, said
    assert not (cell.root / "failed.json").exists()


def test_interrupted_cell_resumes_from_its_checkpoint(tmp_path):
    (cell,) = two_cells(tmp_path)[:1]
    fake = FakeDnirnn(fail={"a"}, code=130)  # Ctrl-C: exit 130, after a checkpoint
    (cell.root / "version_0" / "checkpoints").mkdir(parents=True)
    write_json(cell.root / "cell.json", {"spec": cell.spec(), "attempts": [
        {"seconds": 5.0, "returncode": 130}]})
    (cell.root / "version_0" / "checkpoints" / "last.ckpt").write_text("x")
    assert state(cell) == "partial"
    assert Runner(launch=fake, say=lambda m: None).run([cell]) == {"a": "partial"}
    assert not (cell.root / "failed.json").exists()  # an interruption is no failure
    fake.fail = set()
    Runner(launch=fake, say=lambda m: None).run([cell])
    ckpt = cell.root / "version_0" / "checkpoints" / "last.ckpt"
    assert fake.calls[-1][-1] == f"--ckpt_path={ckpt}"
    done = json.loads((cell.root / "done.json").read_text())
    assert [a["returncode"] for a in done["attempts"]] == [130, 130, 0]
    assert done["seconds"] >= 5.0  # every attempt's wall time


def test_restarts_clean_without_checkpoint_with_another_spec_or_fresh(tmp_path):
    cell, other = two_cells(tmp_path)
    fake = FakeDnirnn()
    # no checkpoint: started clean (the old files go, the run lands in version_0)
    (cell.root / "version_3").mkdir(parents=True)
    write_json(cell.root / "cell.json", {"spec": cell.spec(), "attempts": []})
    Runner(launch=fake, say=lambda m: None).run([cell])
    assert not (cell.root / "version_3").exists() and "--ckpt_path" not in fake.calls[-1][-1]
    # a checkpoint of another spec (the grid changed): started clean too
    (other.root / "version_0" / "checkpoints").mkdir(parents=True)
    write_json(other.root / "cell.json", {"spec": {"other": 1}, "attempts": []})
    (other.root / "version_0" / "checkpoints" / "last.ckpt").write_text("x")
    assert state(other) == "new"
    Runner(launch=fake, say=lambda m: None).run([other])
    assert "--ckpt_path" not in fake.calls[-1][-1]
    # --fresh: a resumable cell restarts
    (cell.root / "done.json").unlink()
    assert state(cell) == "partial"
    Runner(fresh=True, launch=fake, say=lambda m: None).run([cell])
    assert "--ckpt_path" not in fake.calls[-1][-1]


def test_stale_and_foreign_folders_are_left_alone(tmp_path):
    cell, other = two_cells(tmp_path)
    cell.root.mkdir(parents=True)
    write_json(cell.root / "done.json", {"spec": {"model.window": "9"}})
    other.root.mkdir(parents=True)
    (other.root / "precious.txt").write_text("mine")
    fake = FakeDnirnn()
    said = []
    result = Runner(launch=fake, say=said.append).run([cell, other])
    assert result == {"a": "stale", "b": "failed"} and fake.calls == []
    assert (other.root / "precious.txt").read_text() == "mine"
    assert any("not a sweep cell" in m for m in said)


def test_test_stage_scores_the_best_checkpoint(tmp_path):
    cells = two_cells(tmp_path, "test: best")
    fake = FakeDnirnn()
    Runner(launch=fake, say=lambda m: None).run(cells[:1])
    fit, test = fake.calls
    assert fit[0] == "fit" and test[0] == "test"
    assert test[-1] == f"--ckpt_path={cells[0].root / 'version_0' / 'checkpoints' / 'best.ckpt'}"
    assert "then" not in json.loads((cells[0].root / "done.json").read_text())["command"]
    assert json.loads((cells[0].root / "done.json").read_text())["test_command"].startswith(
        "OMP_NUM_THREADS=3 dnirnn test")


# ---- the report, from fake run folders ------------------------------------------------------

def fake_cell(cell, rows: list[dict], summary: dict | None = None, diag: list[dict] = (),
              test: dict | None = None, seconds: float = 10.0) -> None:
    run = cell.root / "version_0"
    run.mkdir(parents=True)
    keys = sorted({k for r in rows for k in r})
    with open(run / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)
    (run / "summary.json").write_text(json.dumps(summary or {}))
    (run / "diagnostics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in diag))
    if test is not None:
        (cell.root / "test" / "version_0").mkdir(parents=True)
        (cell.root / "test" / "version_0" / "summary.json").write_text(
            json.dumps({"metrics": test}))
    write_json(cell.root / "done.json", {"spec": cell.spec(), "seconds": seconds,
                                         "command": f"dnirnn fit {cell.name}"})


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
