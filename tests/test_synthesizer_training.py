"""The new synthesizer options through the CLI: exact resume with least-squares and guard
state, per-position diagnostics on disk, the non-finite stop, and config errors."""

from __future__ import annotations

import json

import pytest
import torch

from dnirnn.main import main

from .test_training import ROOT, _resume_matches, fit

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
NEW = ["--model.synthesizer.kind=linear", "--model.synthesizer.fit=rls",
       "--model.synthesizer.positions=8", "--model.targets.lam=0.5",
       "--model.synthesizer.guard=2.0",
       "--model.synthesizer.context=phase"]
COPY = ["--data.init_args.steps_per_epoch=4", "--data.init_args.batch_size=4",
        "--data.init_args.start_length=3"]


@pytest.fixture(autouse=True)
def _sandbox(cli_sandbox):
    """Every test here runs in the CLI sandbox (tests/conftest.py)."""


def test_resume_with_least_squares_guard_and_lambda_state_continues_exactly(tmp_path):
    """A, b, W of every position and the guard's statistics are restored: the losses after
    the resume are bit-identical (the synthetic gradient reaches the loss from step 1 on)."""
    _resume_matches("repeat_copy_dni", tmp_path, 10, 5, *NEW, *COPY,
                    "--trainer.callbacks.init_args.threshold=1000")


def test_diagnostics_record_every_boundary_with_its_phase(tmp_path):
    version = fit("repeat_copy_dni", tmp_path, *NEW, *COPY, "--trainer.max_steps=4",
                  "--trainer.callbacks+=dnirnn.diagnostics.SyntheticGradientDiagnostics",
                  "--trainer.callbacks.every_n_steps=2")
    rows = [json.loads(line) for line in (version / "diagnostics.jsonl").open()]
    # repeat copy at L = 3, R = 1: 9 steps, 5 windows of T = 2 -> boundaries 1..4
    assert sorted({(r["step"], r["k"]) for r in rows}) == [(s, k) for s in (0, 2)
                                                           for k in (1, 2, 3, 4)]
    phases = {r["k"]: r["phase"] for r in rows}
    assert phases == {1: "input", 2: "input", 3: "answer", 4: "answer"}  # answer from step 5
    assert all({"cos", "ratio", "true_norm", "sg_norm", "level"} <= set(r) for r in rows)
    header = (version / "metrics.csv").read_text().splitlines()[0]
    assert "diag/sg_true_cos_input" in header and "diag/sg_true_cos_answer" in header


def test_huge_learning_rate_stops_with_a_clear_error(capsys, tmp_path):
    """Before: `--model.lr=1e30` logged train/sg_loss=inf, exited 0 and kept checkpointing."""
    root = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(ROOT / "recipes" / "copy_dni.yaml"),
              f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
              "--wandb=false", "--model.lr=1e30", "--trainer.max_steps=40", *COPY])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "non-finite" in err and "synthetic-gradient target" in err
    assert not list(root.rglob("*step=40*.ckpt"))


@pytest.mark.parametrize("override,field", [
    (["--model.synthesizer.kind=mlp"], "model.synthesizer.fit"),  # mlp + the recipe's rls
    (["--model.synthesizer.fit=lbfgs"], "model.synthesizer.fit"),
    (["--model.targets.lam=1.5"], "model.targets.lam"),
    (["--model.boundary=dni_aux", "--model.targets.lam=1"], "model.targets.lam"),
    (["--model.synthesizer.guard=0"], "model.synthesizer.guard"),
    (["--model.synthesizer.positions=0"], "model.synthesizer.positions"),
    (["--model.synthesizer.rls_forget=1.5"], "model.synthesizer.rls_forget"),
    (["--model.synthesizer.context=labels"], "model.synthesizer.context"),
])
def test_bad_synthesizer_settings_are_refused(capsys, tmp_path, override, field):
    root = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(ROOT / "recipes" / "copy_dni.yaml"),
              f"--trainer.default_root_dir={root}", "--wandb=false", "--trainer.max_steps=1",
              *override])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "dnirnn: error:" in err and field in err and "Traceback" not in err
    assert not root.exists()


@pytest.mark.parametrize("boundary", ["tbptt", "oracle"])
def test_other_boundaries_run_from_the_dni_recipe(tmp_path, boundary):
    """The recipe's synthesizer settings (λ, guard, least squares) do not apply to
    boundaries without a synthesizer: overriding the boundary alone works."""
    version = fit("copy_dni", tmp_path, *COPY, "--trainer.max_steps=2",
                  f"--model.boundary={boundary}")
    assert (version / "metrics.csv").exists()


def test_phase_context_needs_a_copy_task(capsys, tmp_path):
    root = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(ROOT / "recipes" / "recall_dni.yaml"),
              f"--trainer.default_root_dir={root}", "--wandb=false", "--trainer.max_steps=1",
              "--model.synthesizer.context=phase"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "model.synthesizer.context" in err and "copy" in err
    assert not root.exists()


def test_copy_checkpoint_holds_what_resume_needs_and_little_more(tmp_path):
    """The shipped copy_dni at its real size: the checkpoint is within 1.5x of what exact
    resume must carry (parameters, Adam's two moments, the least-squares statistics: A's
    upper triangle and b, float64). W, which A and b determine, is not stored."""
    version = fit("copy_dni", tmp_path, "--trainer.max_steps=2")
    path = version / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=False)
    from dnirnn.lit import DNIModule

    model = DNIModule(**{k: v for k, v in ckpt["hyper_parameters"].items()
                         if not k.startswith("_")})
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    ls = model.engine.synthesizer
    P, n, S = ls.positions, ls.A.shape[-1], ls.state_size
    statistics = 8 * P * (n * (n + 1) // 2 + n * S)
    must_carry = 3 * params + statistics  # parameters + Adam's exp_avg and exp_avg_sq
    assert "engine.synthesizer.W" not in ckpt["state_dict"]
    assert path.stat().st_size <= 1.5 * must_carry, (path.stat().st_size, must_carry)
