"""The synthetic-gradient diagnostics callback (dnirnn/diagnostics.py) on tiny models:
what it measures is the true future gradient, and it does not change training."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dnirnn.diagnostics import SyntheticGradientDiagnostics
from dnirnn.lit import DNIModule
from dnirnn.main import main
from dnirnn.model import split_windows
from dnirnn.tasks import CopyTask, LanguageModelTask

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model.hidden_size=8", "--model.synthesizer.hidden=8", "--model.core.embed_size=8"]
DIAG = "dnirnn.diagnostics.SyntheticGradientDiagnostics"


@pytest.fixture(autouse=True)
def _sandbox(cli_sandbox):
    """Every test here runs in the CLI sandbox (tests/conftest.py)."""


def lm_task(batch_size: int = 4, vocab: int = 11, n: int = 400) -> LanguageModelTask:
    g = torch.Generator().manual_seed(0)
    corpus = SimpleNamespace(
        train=torch.randint(0, vocab, (n,), generator=g),
        valid=torch.randint(0, vocab, (n // 4,), generator=g),
        test=torch.randint(0, vocab, (n // 4,), generator=g), vocab=list(range(vocab)),
        level="char")
    return LanguageModelTask(corpus, batch_size, 2)


def lm_module(task: LanguageModelTask, **kw) -> DNIModule:
    torch.manual_seed(0)
    args = dict(task="lm", input_size=task.input_size, output_size=task.output_size,
                hidden_size=6, core={"embed_size": 5}, window=3, windows_per_step=5,
                synthesizer={"hidden": 7})
    module = DNIModule(**(args | kw))
    module.task = task
    module.configure_task(1)  # (the engine, built whole for the task)
    return module


def independent_true_gradient(module: DNIModule, position: int, state, n_future: int):
    """d(loss of windows 1..n_future)/d s_1 by one plain autograd graph over the span."""
    batch = module.task.batch("train", position, module.chunk)
    ws = split_windows(batch.x, batch.y, module.hparams.window, batch.mask)
    core = module.engine.core
    _, _, s1 = core(ws[0].x, state)
    s1 = tuple(s.detach().requires_grad_(True) for s in s1)
    s, total = s1, 0.0
    for w in ws[1 : 1 + n_future]:
        logits, _, s = core(w.x, s)
        total = total + module.engine.task_loss(logits, w)[0]
    grads = torch.autograd.grad(total, s1)
    return torch.cat([g.permute(1, 0, 2).flatten(1) for g in grads], dim=1)  # (B, [h, c])


def test_same_position_gives_the_same_data():
    task = lm_task()
    a, b = task.batch("train", 3, 15), task.batch("train", 3, 15)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.reset == b.reset
    copy = CopyTask(repeat=True, batch_size=4, seed=3, start_length=3)
    a, b = copy.batch("train", 7), copy.batch("train", 7)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.x, copy.batch("train", 8).x)


def test_oracle_boundary_gives_cosine_one_and_the_independent_true_gradient():
    task = lm_task()
    module = lm_module(task, boundary="oracle", targets={"oracle_windows": 3})
    module.eval()
    module.carried = tuple(torch.randn(1, 4, 6) for _ in range(2))  # a carried, nonzero state
    diag = SyntheticGradientDiagnostics(every_n_steps=1, windows=3)
    m = diag.measure(module, 2)
    assert m["diag/future_windows"] == 3
    assert m["diag/sg_true_cos"] == pytest.approx(1.0, abs=1e-6)
    assert m["diag/sg_true_norm_ratio"] == pytest.approx(1.0, abs=1e-6)
    true = independent_true_gradient(module, 2, module.carried, 3)
    assert m["diag/true_grad_norm"] == pytest.approx(float(true.norm()), rel=1e-5)
    assert m["diag/true_grad_norm"] > 0
    # the carried state is used (not zeros): a different carried state, a different truth
    module.carried = tuple(torch.randn(1, 4, 6) for _ in range(2))
    assert diag.measure(module, 2)["diag/true_grad_norm"] != m["diag/true_grad_norm"]
    # a shorter oracle than the truth's horizon: no longer the true gradient
    short = lm_module(task, boundary="oracle", targets={"oracle_windows": 1})
    short.carried = module.carried
    m1 = SyntheticGradientDiagnostics(1, windows=3).measure(short, 2)
    assert m1["diag/sg_true_cos"] < 0.999 and m1["diag/sg_true_norm_ratio"] < 0.999


def test_copy_episode_truth_is_the_whole_rest_of_the_episode():
    task = CopyTask(repeat=False, batch_size=3, seed=1, start_length=3)
    torch.manual_seed(0)
    module = DNIModule(task="copy", input_size=task.input_size, output_size=task.output_size,
                       hidden_size=6, boundary="oracle", window=2,
                       targets={"oracle_windows": 100})
    module.task = task
    module.configure_task(1)
    module.carried = tuple(torch.randn(1, 3, 6) for _ in range(2))  # ignored: episode start
    m = SyntheticGradientDiagnostics(1, windows=1).measure(module, 0)
    n_windows = len(split_windows(task.batch("train", 0).x, task.batch("train", 0).y, 2))
    assert m["diag/future_windows"] == n_windows - 1 > 1
    assert m["diag/sg_true_cos"] == pytest.approx(1.0, abs=1e-6)
    zero = module.engine.core.zero_state(3)
    true = independent_true_gradient(module, 0, zero, n_windows - 1)
    assert m["diag/true_grad_norm"] == pytest.approx(float(true.norm()), rel=1e-5)


def test_zero_initialised_synthesizer_has_norm_ratio_zero_and_tbptt_logs_the_norm_only():
    task = lm_task()
    m = SyntheticGradientDiagnostics(1, 2).measure(lm_module(task, boundary="dni"), 0)
    assert m["diag/sg_true_norm_ratio"] == 0.0 and m["diag/sg_norm"] == 0.0
    assert m["diag/true_grad_norm"] > 0
    m = SyntheticGradientDiagnostics(1, 2).measure(lm_module(task, boundary="tbptt"), 0)
    assert set(m) == {"diag/true_grad_norm", "diag/future_windows"}


def test_measuring_leaves_parameters_grads_rng_and_state_alone():
    task = lm_task()
    module = lm_module(task, boundary="dni_aux", core={"dropout": 0.5})
    module.train()
    module.carried = tuple(torch.randn(1, 4, 6) for _ in range(2))
    for p in module.parameters():
        p.grad = torch.full_like(p, 0.25)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    carried = tuple(s.clone() for s in module.carried)
    rng = torch.get_rng_state()
    SyntheticGradientDiagnostics(1, 2).measure(module, 1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert module.training and module.engine.core.training
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in module.parameters())
    assert all(torch.equal(a, b) for a, b in zip(carried, module.carried))


def fit_losses(root: Path, *extra: str) -> tuple[dict[int, str], list[dict[str, str]]]:
    main(["fit", "--config", str(ROOT / "recipes" / "copy_dni_aux.yaml"),
          f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
          "--trainer.enable_model_summary=false", "--wandb=false", "--trainer.max_steps=25",
          "--trainer.log_every_n_steps=1", "--data.init_args.steps_per_epoch=25",
          "--data.init_args.start_length=2", "--model.core.dropout=0.3", *TINY, *extra])
    with open(next(root.glob("version_*")) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # losses as the CSV strings: bit-identical floats print identically
    return {int(r["step"]): r["train/loss"] for r in rows if r.get("train/loss")}, rows


def test_a_run_with_the_callback_trains_bit_identically(tmp_path):
    plain, _ = fit_losses(tmp_path / "plain")
    diag, rows = fit_losses(tmp_path / "diag", f"--trainer.callbacks+={DIAG}",
                            "--trainer.callbacks.every_n_steps=4",
                            "--trainer.callbacks.windows=2")
    assert len(plain) == 25 and plain == diag
    measured = [r for r in rows if r.get("diag/sg_true_cos")]
    assert [int(r["step"]) for r in measured] == [0, 4, 8, 12, 16, 20, 24]
    assert all(float(r["diag/true_grad_norm"]) > 0 for r in measured)
    assert float(measured[0]["diag/sg_true_norm_ratio"]) == 0.0  # zero-initialised synthesizer
    assert float(measured[-1]["diag/sg_true_norm_ratio"]) > 0.0  # ... that has learnt something
    logged = [r for r in rows if r.get("train/sg_loss")]
    assert len(logged) == 25 and all(r["train/target_norm"] for r in logged)
