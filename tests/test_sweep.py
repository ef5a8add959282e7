"""dnirnn sweep without training: grid files -> cells and commands, the runner's resume /
restart / failure logic with a fake launcher, and the report's numbers from fake run folders.
The end-to-end run of real cells is tests/test_sweep_e2e.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dnirnn.sweep.grid import GridError, load_grid
from dnirnn.sweep.runner import Runner, failure_reason, state, write_json

from .sweep_common import GRID, FakeDnirnn, grid_file, two_cells


@pytest.fixture(autouse=True)
def in_tmp(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # runs/ and reports land in tmp


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
