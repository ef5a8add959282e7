"""The hierarchy in training (issue 6): its recipes and the delayed-recall task through the
CLI, shrunk to seconds; exact resume with the carried fast and slow states; the recall
layout as documented; and config errors that name the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from dnirnn.data.recall import Recall
from dnirnn.lit_hierarchy import HierarchyModule
from dnirnn.main import main
from dnirnn.options import InterfaceOptions, SlowSynthesizerOptions, SynthesizerOptions
from dnirnn.synthesizers.least_squares import LeastSquaresSynthesizer
from dnirnn.tasks import RecallTask

from . import ptb_files
from .test_training import _resume_matches, fit, rows, train_losses

ROOT = Path(__file__).resolve().parents[1]
PTB = ptb_files.PTB  # (DNIRNN_DATA, the per-user cache, ../shared/data/ptb)
needs_ptb = pytest.mark.skipif(
    ptb_files.PTB_ROOT is None, reason=ptb_files.WHERE
)
RECIPES = ["recall_tbptt", "recall_dni", "recall_hier_dni", "ptb_char_hier_dni"]
HIER_TINY = ["--model.hidden_size=8", "--model.slow_hidden=8", "--model.core.embed_size=8",
             *(f"--model.{g}.hidden=8" for g in ("synthesizer", "slow_synthesizer", "interface"))]
# PTB: slow windows of 4 ticks = 16 steps, two fast windows per training step
PTB_TINY = ["--model.slow_window=4", "--model.windows_per_step=2", "--model.eval_chunk=64",
            "--trainer.limit_val_batches=2"]
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


@pytest.fixture(autouse=True)
def _sandbox(cli_sandbox):
    """Every test here runs in the CLI sandbox (tests/conftest.py)."""


def tiny(recipe: str) -> list[str]:
    if "hier" in recipe:
        return HIER_TINY + (PTB_TINY if recipe.startswith("ptb") else [])
    return ["--model.hidden_size=8", "--model.synthesizer.hidden=8",
            "--model.core.embed_size=8"]


# ---- every new recipe runs, shrunk ----------------------------------------------------------

@pytest.mark.parametrize("recipe", RECIPES)
def test_new_recipe_runs_end_to_end(recipe, tmp_path):
    if recipe.startswith("ptb") and not (Path(PTB) / "ptb.train.txt").exists():
        pytest.skip(ptb_files.WHERE)
    extra = ["--trainer.max_steps=3", "--trainer.log_every_n_steps=1", *tiny(recipe)]
    if recipe.startswith("ptb"):
        extra += ["--trainer.val_check_interval=3"]
    else:
        extra += ["--data.init_args.steps_per_epoch=3"]
    version = fit(recipe, tmp_path / "run", *extra)
    losses = train_losses(version)
    assert sorted(losses) == [0, 1, 2] and all(map(torch.isfinite, torch.tensor(
        list(losses.values()))))
    names = set(rows(version)[0])
    assert {"train/target_norm", "train/grad_norm"} <= names
    sg = {"train/sg_loss", "train/sg_cos"}  # means over the boundaries fitted: none in TBPTT
    assert not sg & names if recipe == "recall_tbptt" else sg <= names, sorted(names)
    if "hier" in recipe:
        assert {"train/interface_sg_loss", "train/interface_sg_cos", "train/slow_sg_loss",
                "train/slow_grad_norm"} <= names
    key = "val/bpc" if recipe.startswith("ptb") else "val/bits_per_step"
    assert [r[key] for r in rows(version) if r.get(key)], "validation ran and was logged"
    assert (version / "checkpoints" / "last.ckpt").exists()
    config = yaml.safe_load((version / "config.yaml").read_text())
    cls = "dnirnn.lit_hierarchy.HierarchyModule" if "hier" in recipe else "dnirnn.lit.DNIModule"
    assert config["model"]["class_path"] == cls


# ---- exact resume ----------------------------------------------------------------------------

def test_resume_hierarchy_recall_continues_exactly(tmp_path):
    _resume_matches("recall_hier_dni", tmp_path, 6, 3, "--data.init_args.steps_per_epoch=4",
                    "--model.slow_hidden=8")


RLS_HIER = tuple(f"--model.{g}.{k}" for g in ("synthesizer", "slow_synthesizer", "interface")
                 for k in ("kind=linear", "fit=rls"))


def test_resume_hierarchy_with_least_squares_synthesizers_continues_exactly(tmp_path):
    """The three synthesizers' least-squares statistics (A, b) travel in the checkpoint:
    the steps after the resume solve from the same statistics as the uninterrupted run."""
    _resume_matches("recall_hier_dni", tmp_path, 6, 3, "--data.init_args.steps_per_epoch=4",
                    "--model.slow_hidden=8", *RLS_HIER)


def test_least_squares_hierarchy_checkpoint(tmp_path):
    version = fit("recall_hier_dni", tmp_path / "run", "--trainer.max_steps=2",
                  "--data.init_args.steps_per_epoch=2", *HIER_TINY, "--model.slow_hidden=6",
                  *RLS_HIER)
    ckpt = torch.load(version / "checkpoints" / "last.ckpt", weights_only=False)
    assert len(ckpt["optimizer_states"]) == 2  # the two cores; least squares needs none
    # the statistics travel (A's upper triangle, b: float64); W is re-solved from them
    stats = {name: ckpt["state_dict"][f"engine.{name}_synthesizer.b"]
             for name in ("fast", "slow", "interface")}
    for name in stats:
        assert ckpt["state_dict"][f"engine.{name}_synthesizer.A_upper"].dtype == torch.float64
        assert stats[name].dtype == torch.float64
        assert f"engine.{name}_synthesizer.W" not in ckpt["state_dict"]
    assert stats["fast"].abs().sum() > 0 and stats["interface"].abs().sum() > 0  # fitted
    # an episode here is ONE span: M_s would predict at the episode's end (no future) and
    # be fitted at its start (a fresh state), so it is never fitted and stays the zero map
    assert stats["slow"].abs().sum() == 0


@needs_ptb
def test_resume_hierarchy_ptb_mid_epoch_continues_exactly(tmp_path):
    """Carried fast AND slow states, stream position and the five optimizers restored
    mid-epoch and across an epoch boundary (an epoch here is 3 steps: 20,000 columns of 250
    characters, 64 per step = one slow window)."""
    _resume_matches("ptb_char_hier_dni", tmp_path, 8, 4, f"--data.init_args.root={PTB}",
                    "--data.init_args.batch_size=20000", "--model.slow_window=16",
                    "--model.windows_per_step=8", "--model.slow_hidden=8",
                    "--model.eval_chunk=64", "--trainer.limit_val_batches=2",
                    "--trainer.max_epochs=5")


def test_checkpoint_holds_both_carried_states(tmp_path):
    version = fit("recall_hier_dni", tmp_path / "run", "--trainer.max_steps=2",
                  "--data.init_args.steps_per_epoch=2", *HIER_TINY, "--model.slow_hidden=6")
    ckpt = torch.load(version / "checkpoints" / "last.ckpt", weights_only=False)
    shapes = [tuple(s.shape) for s in ckpt["dnirnn"]["carried"]]
    assert shapes == [(1, 32, 8), (1, 32, 8), (1, 32, 6), (1, 32, 6)]  # (h, c) fast, slow
    assert len(ckpt["optimizer_states"]) == 5  # fast, slow, M_f, M_s, M_if
    # a checkpoint written before the groups (flat hparams) is refused, naming the new options
    from dnirnn.checkpointing import CheckpointError, check_checkpoint

    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    model = HierarchyModule(**hp)
    for group in ("core", "synthesizer", "slow_synthesizer", "interface", "targets", "optim"):
        del ckpt["hyper_parameters"][group]
    ckpt["hyper_parameters"].update(
        embed_size=8, synthesizer="mlp", slow_synthesizer="mlp", interface_synthesizer="mlp",
        synthesizer_hidden=8, synthesizer_fit="adam", interface_sg_scale=0.1, clip=10.0)
    torch.save(ckpt, tmp_path / "old.ckpt")
    with pytest.raises(CheckpointError) as info:
        check_checkpoint(tmp_path / "old.ckpt", model)
    msg = str(info.value)
    assert "written before the model's options were grouped" in msg and "\n" not in msg
    for flag in ("--model.interface.scale=0.1", "--model.synthesizer.hidden=8",
                 "--model.slow_synthesizer.hidden=8", "--model.interface.hidden=8",
                 "--model.slow_synthesizer.kind=mlp", "--model.interface.kind=mlp"):
        assert flag in msg, flag


# ---- the delayed-recall task is as documented -------------------------------------------------

def test_recall_layout():
    task = RecallTask(num_symbols=5, length=20, query_steps=3, num_distractors=4, batch_size=64)
    b = task.batch("train", 7)
    s, d, q = 5, 4, 3
    assert b.x.shape == b.y.shape == b.mask.shape == (20, 64)
    assert task.input_size == s + d + 1 and task.output_size == s
    key = b.x[0]
    assert ((key >= 0) & (key < s)).all()  # the key: its own tokens
    assert ((b.x[1:-q] >= s) & (b.x[1:-q] < s + d)).all()  # distractors
    assert (b.x[-q:] == s + d).all()  # query token
    assert torch.equal(b.y[-q:], key.expand(q, -1)) and (b.y[:-q] == 0).all()
    assert torch.equal(b.mask, torch.cat([torch.zeros(20 - q, 64), torch.ones(q, 64)]))
    assert b.reset and b.last
    assert len(key.unique()) == s and len(b.x[1:-q].unique()) == d  # uniform draws hit all
    assert Recall(5, 20, 3, 4).gap == 17 and Recall(8).chance_bits == 3.0


def test_recall_is_deterministic_per_position_and_split():
    a, b = RecallTask(seed=1), RecallTask(seed=1)
    assert torch.equal(a.batch("train", 3).x, b.batch("train", 3).x)
    assert not torch.equal(a.batch("train", 3).x, a.batch("train", 4).x)
    assert not torch.equal(a.batch("train", 3).x, a.batch("valid", 3).x)
    assert not torch.equal(a.batch("train", 3).x, RecallTask(seed=2).batch("train", 3).x)


def test_recall_rejects_impossible_layouts():
    with pytest.raises(ValueError, match="data.length"):
        Recall(length=5, query_steps=4)
    with pytest.raises(ValueError, match="data.num_symbols"):
        Recall(num_symbols=1)


# ---- evaluation is independent of the chunking -------------------------------------------------

def test_eval_forward_chunks_and_tail():
    torch.manual_seed(0)
    m = HierarchyModule(task="lm", input_size=7, output_size=7, hidden_size=6, slow_hidden=5,
                        core={"embed_size": 4}, window=4, windows_per_step=2, k=2, slow_window=4,
                        eval_chunk=4)
    x = torch.randint(0, 7, (11, 3))
    with torch.no_grad():
        whole, _ = m.eval_forward(x, m.zero_state(3))
        first, state = m.eval_forward(x[:4], m.zero_state(3))
        rest, _ = m.eval_forward(x[4:], state)
    assert whole.shape == (11, 3, 7)
    torch.testing.assert_close(torch.cat([first, rest]), whole, rtol=0, atol=1e-6)


# ---- config errors: clear, before anything is written ------------------------------------------

def fails(capsys, recipe: str, root: Path, *extra: str) -> str:
    args = ["fit", "--config", str(ROOT / "recipes" / f"{recipe}.yaml"),
            f"--trainer.default_root_dir={root}", "--wandb=false",
            "--trainer.enable_progress_bar=false"]
    with pytest.raises(SystemExit) as info:
        main(args + list(extra))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "dnirnn: error:" in err and "Traceback" not in err
    assert not root.exists(), f"a run folder was written: {list(root.rglob('*'))}"
    return err


@pytest.mark.parametrize("override,names", [
    ("--model.window=6", ["model.window", "multiple of k=4"]),
    ("--model.slow_window=3", ["model.slow_window", "multiple of the fast window"]),
    ("--model.eval_chunk=30", ["model.eval_chunk", "multiple of k=4"]),
    ("--model.k=0", ["model.k", "integer >= 1"]),
    ("--model.interface.kind=bogus", ["model.interface.kind", "must be one of"]),
    ("--model.interface=bogus", ["model.interface is a group", "--model.interface.kind=bogus"]),
    ("--model.boundary=oracle", ["model.boundary", "'dni'", "'tbptt'"]),
    ("--data.init_args.length=48", ["data.length", "multiple of 32"]),
    ("--model.synthesizer.fit=rls", ["model.synthesizer.fit", "kind=linear"]),
    ("--model.slow_synthesizer.rls_forget=0", ["model.slow_synthesizer.rls_forget", "(0, 1]"]),
    ("--model.core.dropout=0.1", ["model.core.dropout", "HierarchyModule does not use it"]),
    ("--model.interface.delay=3", ["model.interface.delay", "does not use it"]),
    # names of before the groups
    ("--model.synthesizer_fit=rls", ["renamed model.synthesizer.fit",
                                     "model.slow_synthesizer.fit and model.interface.fit"]),
    ("--model.init_args.interface_sg_scale=1.0", ["renamed model.interface.scale"]),
    ("--model.slow_synthesizer=linear", ["--model.slow_synthesizer.kind=linear"]),
])
def test_hierarchy_config_errors(capsys, tmp_path, override, names):
    err = fails(capsys, "recall_hier_dni", tmp_path / "run", override)
    for name in names:
        assert name in err


def test_each_synthesizer_is_built_from_its_own_group():
    """The engine takes the three synthesizers' groups as they are: widths and fits may
    differ between M_f, M_s and M_if."""
    m = HierarchyModule(task="lm", input_size=9, output_size=9, hidden_size=4, slow_hidden=4,
                        synthesizer=SynthesizerOptions(hidden=5),
                        slow_synthesizer=SlowSynthesizerOptions(kind="linear", fit="rls",
                                                                rls_ridge=0.5),
                        interface=InterfaceOptions(hidden=7))
    net = m.engine
    assert {p.shape for p in net.fast_synthesizer.parameters()} >= {torch.Size([5, 8])}
    assert {p.shape for p in net.interface_synthesizer.parameters()} >= {torch.Size([7, 4])}
    assert isinstance(net.slow_synthesizer, LeastSquaresSynthesizer)
    assert net.slow_synthesizer.ridge == 0.5


@needs_ptb
def test_training_step_must_be_whole_slow_windows(capsys, tmp_path):
    err = fails(capsys, "ptb_char_hier_dni", tmp_path / "run", f"--data.init_args.root={PTB}",
                "--model.windows_per_step=4")
    assert "model.windows_per_step" in err and "use a multiple of 8" in err


def test_hierarchy_on_copy_is_refused(capsys, tmp_path):
    err = fails(capsys, "recall_hier_dni", tmp_path / "run",
                "--data=dnirnn.datamodules.CopyDataModule")
    assert "model.task" in err and "token inputs" in err
    m = HierarchyModule(task="lm", input_size=9, output_size=9, hidden_size=4, slow_hidden=4)
    from dnirnn.tasks import CopyTask
    with pytest.raises(ValueError, match="copy episodes change length"):
        m.check_task(CopyTask(), 1)
    with pytest.raises(ValueError, match="trainer.devices=1"):
        m.check_task(RecallTask(), 2)


def test_single_level_rejects_hierarchy_fields(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(ROOT / "recipes" / "recall_dni.yaml"), "--model.k=4",
              f"--trainer.default_root_dir={tmp_path / 'run'}", "--wandb=false"])
    assert info.value.code == 2
    assert "k" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
