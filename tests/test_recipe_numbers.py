"""A refactor keeps the numbers: the fast recipes' first 30 training steps equal those recorded
at f1aba47 (tests/data/recipe_numbers.json, written by scripts/recipe_numbers.py, which
checks every recipe; these are the ones quick enough for the suite). Each method's engine
path is covered: the shipped copy recipes (the hybrid: kept windows, the deeper backward,
least squares, guard), DNI + Aux, TBPTT and the two-timescale hierarchy. copy_dni and
repeat_copy_dni were re-recorded when those recipes became the hybrid (``model.depth: 4``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dnirnn.main import main

from .test_ptb import DATA_ROOT, needs_data

ROOT = Path(__file__).resolve().parents[1]
RECORDED = json.loads((ROOT / "tests/data/recipe_numbers.json").read_text())
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
RTOL = 1e-5  # at step 30, where a changed order of operations may round differently


@pytest.fixture(autouse=True)
def _sandbox(cli_sandbox):
    """Runs in the CLI sandbox (tests/conftest.py)."""


FAST = ["copy_dni", "copy_dni_aux", "copy_tbptt", "repeat_copy_dni", "repeat_copy_dni_aux",
        "repeat_copy_tbptt", "recall_dni", "recall_hier_dni", "recall_tbptt"]
# (the decoupled stack's two layer groups in one process, as recorded)
PTB = {"ptb_char_decoupled": ["--trainer.devices=1"], "ptb_char_dni": []}


@pytest.mark.parametrize("recipe", FAST)
def test_recipe_gives_its_recorded_numbers(recipe, tmp_path):
    check(recipe, tmp_path)


@needs_data
@pytest.mark.parametrize("recipe", PTB)
def test_ptb_recipe_gives_its_recorded_numbers(recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("DNIRNN_DATA", str(DATA_ROOT))
    check(recipe, tmp_path, *PTB[recipe])


def check(recipe: str, tmp_path: Path, *extra: str) -> None:
    root = tmp_path / recipe
    main(["fit", "--config", recipe, "--trainer.max_steps=30",
          "--trainer.log_every_n_steps=1", f"--trainer.default_root_dir={root}",
          "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
          "--wandb=false", *extra])
    (metrics,) = root.glob("version_*/metrics.csv")
    got: dict[str, dict[int, float]] = {}
    with open(metrics, newline="") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if k.startswith("train/") and "loss" in k and v:
                    got.setdefault(k, {})[int(row["step"])] = float(v)
    want = RECORDED[recipe]
    assert set(got) == set(want["columns"])
    for col, values in want["columns"].items():
        for step, value in zip(want["steps"], values):
            if value is None:
                assert step not in got[col], (col, step)
            else:
                assert got[col][step] == pytest.approx(value, rel=RTOL, abs=0), (col, step)
