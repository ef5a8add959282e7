"""The deeper backward (``depth`` K > 1, docs/design.md §1), in float64 with frozen parameters:
TBPTT(T, K·T) from kept graphs equals its definition by recomputation, and the hybrid with
the true residual in place of the synthesizer sums, over an episode, to full BPTT."""

from __future__ import annotations

import pytest
import torch

from dnirnn.dni import DNIRNN, window_update
from dnirnn.engine.kept import KeptWindows
from dnirnn.model import CoreConfig, LSTMCore, Window, split_windows
from dnirnn.optim import Optimizers
from dnirnn.synthesizers import Synthesizer

from .conftest import mse_steps
from .engine_common import IN, OUT, B, H, data, random_state

pytestmark = pytest.mark.usefixtures("float64")


class Recorder(torch.optim.Optimizer):
    """Steps nothing (frozen parameters); sums every update's gradients."""

    def __init__(self, params) -> None:
        super().__init__(list(params), {})
        self.total = [torch.zeros_like(p) for g in self.param_groups for p in g["params"]]

    def step(self, closure=None) -> None:
        params = [p for g in self.param_groups for p in g["params"]]
        for p, t in zip(params, self.total):
            if p.grad is not None:
                t += p.grad


def make(boundary: str, depth: int, **kw) -> DNIRNN:
    torch.manual_seed(0)
    core = LSTMCore(CoreConfig(input_size=IN, output_size=OUT, hidden_size=H, num_layers=2))
    synth = Synthesizer(core.state_size, kind="linear") if boundary == "dni" else None
    return DNIRNN(core, mse_steps, loss_norm=B, boundary=boundary, synthesizer=synth,
                  targets=kw, depth=depth)


def episode(net: DNIRNN, windows, state, **kw) -> list[torch.Tensor]:
    """One episode of window updates with frozen parameters: the summed core gradients."""
    rec = Recorder(net.core_parameters())
    opts = Optimizers(rec, torch.optim.SGD(net.synthesizer.parameters(), lr=0.0)
                      if net.synthesizer is not None else None)
    n = len(windows)
    for k, w in enumerate(windows):
        state = window_update(net, opts, w, state, episode_start=k == 0,
                              episode_end=k == n - 1, future=windows[k + 1:], **kw).state
    return rec.total


@pytest.mark.parametrize("depth, window", [(2, 2), (3, 2), (4, 1), (3, 4)])
def test_kept_graphs_give_tbptt_k1_k2(depth, window):
    """Each update: the window's loss backpropagated through it and the K - 1 windows
    before it (fewer at the episode's start), as a recomputation from K windows back."""
    x, y = data(12)
    windows = split_windows(x, y, window)
    net, s0 = make("tbptt", depth), None
    s0 = random_state(net)
    got = episode(net, windows, s0)
    want = tbptt_by_recomputation(net, windows, s0, depth)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def tbptt_by_recomputation(net: DNIRNN, windows, s0, depth: int) -> list[torch.Tensor]:
    """TBPTT(T, K·T)'s summed gradients by its definition: each window's loss through a
    forward recomputed from K - 1 windows back."""
    params, want = net.core_parameters(), [torch.zeros_like(p) for p in net.core_parameters()]
    states = [s0]
    for w in windows:  # the detached state at each window's start
        states.append(tuple(t.detach() for t in net.core(w.x, states[-1])[2]))
    for t, w in enumerate(windows):
        first = max(0, t - depth + 1)
        s = states[first]
        for u in windows[first:t]:
            s = net.core(u.x, s)[2]
        loss = net.task_loss(net.core(w.x, s)[0], w)[0]
        for acc, g in zip(want, torch.autograd.grad(loss, params, allow_unused=True)):
            if g is not None:
                acc += g
    return want


@pytest.mark.parametrize("depth, window", [(2, 2), (3, 2), (4, 1), (6, 2)])
def test_hybrid_with_the_true_residual_sums_to_full_bptt(depth, window):
    """The oracle as the synthetic gradient (the true gradient of the rest of the episode at
    each boundary): the loss of the K windows credits them, the residual credits only the
    oldest, and the episode's updates add up to full BPTT's gradient."""
    x, y = data(12)
    windows = split_windows(x, y, window)
    net = make("oracle", depth, oracle_windows=len(windows))
    s0 = random_state(net)
    got = episode(net, windows, s0)
    full = torch.autograd.grad(net.task_loss(net.core(x, s0)[0], Window(x, y))[0],
                               net.core_parameters(), allow_unused=True)
    for a, b in zip(got, full):
        torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b,
                                   rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("boundary, kw", [("tbptt", {}), ("oracle", {"oracle_windows": 2}),
                                         ("dni", {"lam": 1.0, "horizon": 2})])
def test_at_most_depth_windows_are_held(boundary, kw):
    """However long the episode, the deeper backward holds K windows' graphs (max(K, H))."""
    x, y = data(24)
    net = make(boundary, 3, **kw)
    episode(net, split_windows(x, y, 2), random_state(net))
    assert net.targets.max_held == 3 and len(net.targets) == 0


def test_hybrid_fits_dnis_targets():
    """With a synthesizer, the hybrid's targets are DNI's: the window's own bootstrapped
    ``delta_k = dl_k/ds_k + beta J_k^T g_{k+1}`` (H = 1), whatever the depth."""
    x, y = data(8)
    windows = split_windows(x, y, 2)
    shallow, deep = make("dni", 1, scale=0.7), make("dni", 3, scale=0.7)
    for net in (shallow, deep):
        with torch.no_grad():
            torch.manual_seed(5)
            for p in net.synthesizer.parameters():
                p.copy_(0.3 * torch.randn_like(p))
    seen = {}
    for name, net in (("shallow", shallow), ("deep", deep)):
        targets = []
        real = type(net).fit_ready

        def record(self, opts, ready, prediction=None, targets=targets, real=real):
            targets += [r.target.clone() for r in ready]
            return real(self, opts, ready, prediction)

        type(net).fit_ready = record
        try:
            episode(net, windows, random_state(net))
        finally:
            type(net).fit_ready = real
        seen[name] = targets
    assert len(seen["deep"]) == len(windows) - 1
    for a, b in zip(seen["deep"], seen["shallow"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("depth, window, steps", [(2, 2, 12), (4, 1, 9), (4, 2, 14), (3, 3, 12)])
def test_the_hybrids_targets_come_from_its_deeper_backward(depth, window, steps, monkeypatch):
    """With K = H, λ = 1 and β = 1 the hybrid walks each kept window once: the H-window
    targets are sums of what its deeper backward carries back (no chain of state-only
    products), equal in float64 to the chain's, while the core steps after every window."""
    x, y = data(steps)
    windows = split_windows(x, y, window)
    seen = {}
    for name in ("chain", "shared"):
        net = make("dni", depth, lam=1.0, horizon=depth)
        with torch.no_grad():
            torch.manual_seed(5)
            for p in net.synthesizer.parameters():
                p.copy_(0.3 * torch.randn_like(p))
        assert net.targets.shared
        targets, real = [], KeptWindows._chain
        if name == "chain":
            net.targets.shared = False
        else:
            monkeypatch.setattr(KeptWindows, "_chain", lambda *a, **k: pytest.fail("a chain"))
        monkeypatch.setattr(type(net), "fit_ready",
                            lambda self, opts, ready, prediction=None, out=targets:
                            out.extend(r.target.clone() for r in ready) or
                            (torch.zeros(()), torch.zeros(()), len(ready)))
        opts = Optimizers(torch.optim.SGD(net.core_parameters(), lr=0.05), None)
        state, n = random_state(net), len(windows)
        for k, w in enumerate(windows):
            state = window_update(net, opts, w, state, episode_start=k == 0,
                                  episode_end=k == n - 1).state
        monkeypatch.setattr(KeptWindows, "_chain", real)
        seen[name] = targets
    assert len(seen["shared"]) == len(windows) - 1  # every boundary but the episode's start
    for a, b in zip(seen["shared"], seen["chain"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_depth_is_validated():
    with pytest.raises(ValueError, match="depth"):
        make("tbptt", 0)
    with pytest.raises(ValueError, match="dni_aux"):
        make("dni_aux", 2)


@pytest.mark.parametrize("recipe", ["copy_tbptt", "copy_dni"])
def test_depth_through_the_cli(recipe, tmp_path, cli_sandbox):
    """``--model.depth`` reaches the engine: a few steps train, and the loss is finite."""
    import csv

    from dnirnn.main import main

    torch.set_default_dtype(torch.float32)
    root = tmp_path / "run"
    main(["fit", "--config", recipe, "--model.depth=3", "--model.hidden_size=8",
          "--trainer.max_steps=4", "--trainer.log_every_n_steps=1", "--wandb=false",
          "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
          f"--trainer.default_root_dir={root}"])
    (metrics,) = root.glob("version_*/metrics.csv")
    losses = [float(r["train/loss"]) for r in csv.DictReader(open(metrics)) if r["train/loss"]]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("extra, word", [
    (["--model.boundary=dni_aux"], "dni_aux"),
    (["--model.depth=0"], "model.depth"),
])
def test_depth_errors_name_the_option(extra, word, tmp_path, cli_sandbox, capsys):
    from dnirnn.main import main

    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", "copy_tbptt", "--model.depth=2", *extra,
              f"--trainer.default_root_dir={tmp_path / 'run'}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert word in err and "model.depth" in err
    assert not (tmp_path / "run").exists()


def test_the_hybrid_recipe_without_a_bounded_horizon_names_both_ways_out(tmp_path, cli_sandbox,
                                                                          capsys):
    """The copy recipes run the hybrid (depth 4): an unbounded horizon on them is refused
    with the two fixes, before anything is written."""
    from dnirnn.main import main

    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", "copy_dni", "--model.targets.horizon=null",
              f"--trainer.default_root_dir={tmp_path / 'run'}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "bounded horizon" in err and "--model.targets.horizon" in err
    assert "--model.depth=1" in err and not (tmp_path / "run").exists()


def test_a_deeper_backward_is_refused_under_data_parallel():
    """Its parameter gradients come from VJPs the data-parallel all-reduce does not see: a
    world of 2 is refused with the two fixes (checked before any process starts)."""
    from dnirnn.lit import DNIModule
    from dnirnn.tasks import CopyTask

    task = CopyTask(batch_size=4)
    module = DNIModule(task="copy", input_size=task.input_size, output_size=task.output_size,
                       hidden_size=8, boundary="tbptt", window=2, depth=2)
    module.check_task(task, world=1)
    with pytest.raises(ValueError, match="--trainer.devices=1, or --model.depth=1"):
        module.check_task(task, world=2)
