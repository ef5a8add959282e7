"""The update cadence (``update_every``, docs/design.md §1): the gradients of U windows are
summed into one update of the core. In float64: with the oracle, one update an episode is
full BPTT's update (the window updates' gradients, with parameters frozen for the episode,
sum to its gradient; the clip applies to the sum), at depth 1 and through kept windows; U
windows make one update of their summed gradients, and the span's last window always updates."""

from __future__ import annotations

import copy

import pytest
import torch

from dnirnn.dni import DNIRNN, train_span
from dnirnn.model import CoreConfig, LSTMCore, Window, split_windows
from dnirnn.optim import Optimizers

from .conftest import mse_steps
from .engine_common import IN, OUT, B, H, data, random_state

pytestmark = pytest.mark.usefixtures("float64")

LR, CLIP = 0.3, 0.5


def make(boundary: str, depth: int = 1, update_every: int | str = 1, **targets) -> DNIRNN:
    torch.manual_seed(0)
    core = LSTMCore(CoreConfig(input_size=IN, output_size=OUT, hidden_size=H, num_layers=2))
    return DNIRNN(core, mse_steps, loss_norm=B, boundary=boundary, targets=targets,
                  depth=depth, update_every=update_every)


def sgd(net: DNIRNN, clip: float | None = CLIP) -> Optimizers:
    return Optimizers(torch.optim.SGD(net.core_parameters(), lr=LR), core_clip=clip)


def stepped(net: DNIRNN, grads, clip: float | None = CLIP) -> list[torch.Tensor]:
    """The parameters after one clipped SGD step on ``grads`` (the definition)."""
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = min(1.0, clip / (float(norm) + 1e-6)) if clip is not None else 1.0
    return [p.detach() - LR * coef * g for p, g in zip(net.core_parameters(), grads)]


def full_bptt_grads(net: DNIRNN, x, y, s0) -> list[torch.Tensor]:
    grads = torch.autograd.grad(net.task_loss(net.core(x, s0)[0], Window(x, y))[0],
                                net.core_parameters(), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g
            for p, g in zip(net.core_parameters(), grads)]


@pytest.mark.parametrize("depth, window", [(1, 2), (1, 3), (2, 2), (3, 2)])
def test_one_update_an_episode_with_the_oracle_is_full_bptt(depth, window):
    """``update_every: span`` with the true gradient of the rest of the episode at every
    boundary: the episode makes ONE update, and it is full BPTT's (clipped) update."""
    x, y = data(12)
    windows = split_windows(x, y, window)
    net = make("oracle", depth, "span", oracle_windows=len(windows))
    s0 = random_state(net)
    grads = full_bptt_grads(net, x, y, s0)
    want = stepped(net, grads)
    results, _ = train_span(net, sgd(net), windows, s0, reset=True, last=True)
    for p, w in zip(net.core_parameters(), want):
        torch.testing.assert_close(p.detach(), w, rtol=1e-9, atol=1e-11)
    assert all(bool(r.finite) for r in results)
    # the last window makes the one update, and reports its norm before clipping
    assert [r.updated for r in results] == [False] * (len(windows) - 1) + [True]
    assert all(float(r.grad_norm) == 0.0 for r in results[:-1])
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    torch.testing.assert_close(results[-1].grad_norm, norm, rtol=1e-9, atol=1e-11)


def test_an_update_every_window_is_not_full_bptt():
    """The same episode with an update after every window moves the parameters elsewhere
    (the property above is not met by any cadence)."""
    x, y = data(12)
    windows = split_windows(x, y, 2)
    net = make("oracle", 1, 1, oracle_windows=len(windows))
    s0 = random_state(net)
    want = stepped(net, full_bptt_grads(net, x, y, s0))
    train_span(net, sgd(net), windows, s0, reset=True, last=True)
    gap = max(float((p.detach() - w).abs().max()) for p, w in zip(net.core_parameters(), want))
    assert gap > 1e-4


@pytest.mark.parametrize("every, n_windows", [(2, 5), (3, 6), (4, 3)])
def test_u_windows_make_one_update_of_their_summed_gradients(every, n_windows):
    """TBPTT with ``update_every`` U: the windows are taken U at a time (the last group may
    be shorter: the span's last window always updates); each group's truncated gradients,
    with the parameters as the group found them, are summed and stepped once."""
    x, y = data(2 * n_windows)
    windows = split_windows(x, y, 2)
    net = make("tbptt", 1, every)
    ref = copy.deepcopy(net)
    s0 = random_state(net)
    train_span(net, sgd(net, clip=None), windows, s0, reset=True, last=True)
    state, params = s0, ref.core_parameters()
    for first in range(0, n_windows, every):
        sums = [torch.zeros_like(p) for p in params]
        for w in windows[first:first + every]:
            start = tuple(t.detach() for t in state)
            logits, _, end = ref.core(w.x, start)
            for acc, g in zip(sums, torch.autograd.grad(ref.task_loss(logits, w)[0], params,
                                                        allow_unused=True)):
                if g is not None:
                    acc += g
            state = end
        with torch.no_grad():
            for p, g in zip(params, sums):
                p -= LR * g
    for p, w in zip(net.core_parameters(), params):
        torch.testing.assert_close(p.detach(), w.detach(), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("bad", [0, -1, "episode", 1.5, True])
def test_update_every_is_validated(bad):
    with pytest.raises(ValueError, match="update_every"):
        make("tbptt", 1, bad)


def test_update_every_through_the_cli(tmp_path, cli_sandbox):
    """``--model.update_every=span`` on the copy recipe (the hybrid): a few steps train to a
    finite loss; a bad value is one error naming the option, before anything is written."""
    import csv

    from dnirnn.main import main

    torch.set_default_dtype(torch.float32)
    root = tmp_path / "run"
    args = ["fit", "--config", "copy_dni", "--model.hidden_size=8", "--trainer.max_steps=3",
            "--trainer.log_every_n_steps=1", "--wandb=false", "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={root}"]
    main([*args, "--model.update_every=span"])
    (metrics,) = root.glob("version_*/metrics.csv")
    rows = [r for r in csv.DictReader(open(metrics)) if r["train/loss"]]
    losses = [float(r["train/loss"]) for r in rows]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    # train/grad_norm is logged from the updating windows (their mean: recurrent.py)
    assert all(float(r["train/grad_norm"]) > 0 for r in rows)
    with pytest.raises(SystemExit) as e:
        main([*args[:-1], f"--trainer.default_root_dir={tmp_path / 'bad'}",
              "--model.update_every=0"])
    assert e.value.code == 2 and not (tmp_path / "bad").exists()


def test_update_every_is_refused_under_data_parallel():
    """Data parallel averages each backward's gradient: a sum over windows is refused in a
    world of 2, with the two fixes (checked before any process starts)."""
    from dnirnn.lit import DNIModule
    from dnirnn.tasks import CopyTask

    task = CopyTask(batch_size=4)
    module = DNIModule(task="copy", input_size=task.input_size, output_size=task.output_size,
                       hidden_size=8, boundary="tbptt", window=2, update_every="span")
    module.check_task(task, world=1)
    with pytest.raises(ValueError, match="--trainer.devices=1, or --model.update_every=1"):
        module.check_task(task, world=2)
