"""End-to-end training through the CLI: every recipe shrunk to seconds, the curriculum, W&B
offline, and exact resume from a mid-run checkpoint."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
import torch
import yaml

from dnirnn.datamodules import PTBDataModule
from dnirnn.main import main
from dnirnn.tasks import CopyTask

from . import ptb_files
from .wandb_records import read_run

ROOT = Path(__file__).resolve().parents[1]
# The hierarchy's and the recall task's recipes run shrunk in tests/test_hierarchy_training.py.
RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml")
                 if "hier" not in p.stem and not p.stem.startswith("recall"))
PTB = ptb_files.PTB  # (DNIRNN_DATA, the per-user cache, ../shared/data/ptb)
needs_ptb = pytest.mark.skipif(
    ptb_files.PTB_ROOT is None, reason=ptb_files.WHERE
)
TINY = ["--model.hidden_size=8", "--model.synthesizer.hidden=8", "--model.core.embed_size=8"]
# (small widths for the hierarchy's other two synthesizers too)
HIER_TINY = [*TINY, "--model.slow_synthesizer.hidden=8", "--model.interface.hidden=8"]


def tiny(recipe: str) -> list[str]:
    return HIER_TINY if "hier" in recipe else TINY


@pytest.fixture(autouse=True)
def _sandbox(cli_sandbox):
    """Every test here runs in the CLI sandbox (tests/conftest.py)."""


def fit(recipe: str, root: Path, *extra: str, wandb: bool = False) -> Path:
    """Runs ``dnirnn fit`` in-process; returns the run's version folder."""
    args = ["fit", "--config", str(ROOT / "recipes" / f"{recipe}.yaml"),
            f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", f"--wandb={str(wandb).lower()}"]
    if recipe.startswith("ptb"):
        args += [f"--data.init_args.root={PTB}"]
    main(args + list(extra))
    return sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))[-1]


def fits_no_synthesizer(recipe: str) -> bool:
    """A DNIModule recipe with TBPTT boundaries (the decoupled model's interface synthesizers
    are fitted whatever its temporal boundary)."""
    model = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())["model"]
    return model.get("boundary") == "tbptt" and "class_path" not in model


def rows(version: Path) -> list[dict[str, str]]:
    with open(version / "metrics.csv") as f:
        return list(csv.DictReader(f))


def train_losses(version: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["train/loss"]) for r in rows(version) if r.get("train/loss")}


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_runs_end_to_end(recipe, tmp_path):
    if recipe.startswith("ptb") and not (Path(PTB) / "ptb.train.txt").exists():
        pytest.skip(ptb_files.WHERE)
    extra = ["--trainer.max_steps=3", "--trainer.log_every_n_steps=1",
             *tiny(recipe)]
    if recipe.startswith("ptb"):
        extra += ["--trainer.limit_val_batches=2", "--trainer.val_check_interval=3",
                  "--model.eval_chunk=64", "--model.windows_per_step=2"]
    else:
        extra += ["--data.init_args.steps_per_epoch=3", "--data.init_args.start_length=2"]
    version = fit(recipe, tmp_path / "run", *extra)
    losses = train_losses(version)
    assert sorted(losses) == [0, 1, 2]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    names = set(rows(version)[0].keys())
    assert "train/target_norm" in names
    sg = {"train/sg_loss", "train/sg_cos"}  # means over the boundaries fitted: none in TBPTT
    assert not sg & names if fits_no_synthesizer(recipe) else sg <= names, sorted(names)
    val = [r for r in rows(version) if r.get("val/loss")]
    assert val, "validation ran and was logged"
    key = "val/bpc" if "char" in recipe else "val/ppl" if "word" in recipe else "val/bits_per_step"
    assert val[-1][key]
    assert (version / "checkpoints" / "last.ckpt").exists()
    assert (version / "summary.json").exists() and (version / "config.yaml").exists()


def test_curriculum_raises_the_level(tmp_path):
    """A threshold every batch beats raises the level at each check: copy 1 -> 2 -> 3 -> 4."""
    version = fit("copy_dni", tmp_path / "run", "--trainer.max_steps=6",
                  "--trainer.log_every_n_steps=1", "--data.init_args.steps_per_epoch=6",
                  "--trainer.callbacks.init_args.threshold=1000",
                  "--trainer.callbacks.init_args.check_every=2",
                  *TINY)
    levels = [float(r["curriculum/level"]) for r in rows(version) if r.get("curriculum/level")]
    solved = [float(r["curriculum/max_level_solved"]) for r in rows(version)
              if r.get("curriculum/max_level_solved")]
    assert levels[0] == 1 and levels[-1] == 3 and solved[-1] == 2
    assert levels == sorted(levels)


def test_repeat_copy_curriculum_order():
    t = CopyTask(repeat=True)
    seen = []
    for _ in range(6):
        seen.append((t.length, t.repeats))
        t.advance()
    assert seen == [(1, 1), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3)]
    assert t.max_level_solved == 9


def test_curriculum_leaves_hard_levels_alone(tmp_path):
    """The production threshold (0.15 bits) is not met by an untrained model in 4 steps."""
    version = fit("copy_tbptt", tmp_path / "run", "--trainer.max_steps=4",
                  "--trainer.log_every_n_steps=1", "--data.init_args.steps_per_epoch=4",
                  "--data.init_args.start_length=3", *TINY)
    levels = {float(r["curriculum/level"]) for r in rows(version) if r.get("curriculum/level")}
    assert levels == {3.0}


@needs_ptb
@pytest.mark.parametrize("level,vocab,train_tokens", [("char", 50, 5_017_482),
                                                      ("word", 10_000, 929_589)])
def test_ptb_datamodule_statistics(level, vocab, train_tokens):
    dm = PTBDataModule(level=level, root=PTB, batch_size=20, eval_batch_size=10)
    dm.setup("fit")
    assert dm.input_size == len(dm.vocab) == vocab
    train = dm.task.streams["train"]
    assert train.shape == (train_tokens // 20, 20)
    assert torch.equal(train[:, 1], dm.task.corpus.train[train.shape[0] : 2 * train.shape[0]])
    valid = {"char": 393_042, "word": 73_760}[level]
    assert dm.task.streams["valid"].shape == (valid // 10, 10)


def test_wandb_offline_run_is_written_and_readable(tmp_path):
    version = fit("copy_dni", tmp_path / "run", "--trainer.max_steps=4",
                  "--trainer.log_every_n_steps=1", "--data.init_args.steps_per_epoch=4",
                  *TINY, wandb=True)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    deadline = time.monotonic() + 30  # wandb-core may still be flushing the file
    while True:
        run = read_run(runs[0])
        steps = [h for h in run["history"] if "train/loss" in h]
        if len(steps) == 4 and "config" in run["config"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [h["trainer/global_step"] for h in steps] == [0, 1, 2, 3]
    csv_losses = train_losses(version)
    for h in steps:  # W&B and the local CSV record agree
        assert h["train/loss"] == pytest.approx(csv_losses[h["trainer/global_step"]], rel=1e-6)
    assert {"train/sg_cos", "train/sg_loss", "curriculum/level"} <= set(steps[-1])
    config = run["config"]["config"]  # the FULL config: trainer, data and model
    assert config["model"]["boundary"] == "dni" and config["data"]["init_args"]["batch_size"]
    assert config["trainer"]["max_steps"] == 4


def _resume_matches(recipe: str, tmp_path: Path, total: int, at: int, *extra: str) -> None:
    common = [f"--trainer.max_steps={total}", "--trainer.log_every_n_steps=1", *tiny(recipe),
              *extra]
    full = fit(recipe, tmp_path / "full", f"--checkpoint_every={at}", *common)
    ckpt = full / "checkpoints" / f"{_ckpt_name(full, at)}"
    resumed = fit(recipe, tmp_path / "resumed", f"--ckpt_path={ckpt}", *common)
    a, b = train_losses(full), train_losses(resumed)
    assert sorted(b) == list(range(at, total))
    for step in range(at, total):
        assert a[step] == b[step], f"step {step}: {a[step]} != {b[step]}"


def _ckpt_name(version: Path, step: int) -> str:
    names = [p.name for p in (version / "checkpoints").glob(f"*step={step}.ckpt")]
    assert len(names) == 1, names
    return names[0]


def test_resume_copy_continues_exactly(tmp_path):
    """Curriculum level, callback accumulator, data position and optimizers all restored."""
    _resume_matches("copy_dni", tmp_path, 10, 5, "--data.init_args.steps_per_epoch=4",
                    "--trainer.callbacks.init_args.threshold=1000",
                    "--trainer.callbacks.init_args.check_every=3")


def test_resume_with_one_update_every_few_windows_continues_exactly(tmp_path):
    """``update_every``: every training step ends with an update, so nothing waits in the
    gradients at a checkpoint (the hybrid recipe, 2 windows an update)."""
    _resume_matches("copy_dni", tmp_path, 8, 4, "--data.init_args.steps_per_epoch=4",
                    "--model.update_every=2")


@needs_ptb
def test_resume_ptb_mid_epoch_continues_exactly(tmp_path):
    """Carried state and stream position restored mid-epoch, across an epoch boundary too
    (an epoch here is 3 steps: 20,000 columns of 250 characters, 64 per step)."""
    _resume_matches("ptb_char_dni", tmp_path, 8, 4, "--data.init_args.batch_size=20000",
                    "--model.windows_per_step=8", "--trainer.limit_val_batches=2",
                    "--model.eval_chunk=64", "--model.core.dropout=0.1",
                    "--trainer.max_epochs=5")


def test_default_synthesizer_is_sized_to_the_state():
    """``synthesizer.hidden: null`` (the default) = the state size 2 * layers * hidden."""
    from dnirnn.lit import DNIModule

    module = DNIModule(task="lm", input_size=5, output_size=5, hidden_size=6, num_layers=2)
    first = module.engine.synthesizer.maps[0][0]
    assert first.in_features == first.out_features == 2 * 2 * 6
    wide = DNIModule(task="lm", input_size=5, output_size=5, hidden_size=6,
                     synthesizer={"hidden": 40})
    assert wide.engine.synthesizer.maps[0][0].out_features == 40
    with pytest.raises(ValueError, match="model.synthesizer.hidden"):
        DNIModule(task="lm", input_size=5, output_size=5, synthesizer={"hidden": 0})
