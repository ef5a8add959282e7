"""Horizon targets (``targets.horizon``, ``dnirnn.engine.kept``): in float64 with frozen
parameters they equal the H-window truncated λ-return computed independently by autograd,
a horizon covering the episode equals the span pass, keeping graphs leaves the core's
update unchanged, the graphs held stay at H whatever the episode length (and are freed), and
a stream resumes exactly with chains in flight."""

from __future__ import annotations

import weakref

import pytest
import torch

from dnirnn.dni import DNIRNN, window_update
from dnirnn.engine.truth import future_gradients
from dnirnn.model import flatten_state, unflatten_state
from dnirnn.optim import Optimizers, adam

from .test_synthesizers import B, episode, net_with, random_synthesizer
from .test_training import PTB, _ckpt_name, _resume_matches, needs_ptb, rows

FIT_READY = DNIRNN.fit_ready


def frozen_opts(net: DNIRNN) -> Optimizers:
    """Adam at lr 0: every step leaves the parameters exactly as they were."""
    return Optimizers(adam(net.core_parameters(), 0.0), adam(net.synthesizer.parameters(), 0.0))


def run_episode(net: DNIRNN, opts: Optimizers, windows, monkeypatch) -> dict[int, torch.Tensor]:
    """Trains on one episode through ``window_update``; returns each fitted boundary's target."""
    got: dict[int, torch.Tensor] = {}

    def record(self, opts, ready, prediction=None):
        for r in ready:
            assert r.position not in got, f"boundary {r.position} fitted twice"
            got[r.position] = r.target.clone()
        return FIT_READY(self, opts, ready, prediction)

    monkeypatch.setattr(DNIRNN, "fit_ready", record)
    state = net.core.zero_state(B)
    for k, w in enumerate(windows):
        state = window_update(net, opts, w, state, episode_start=k == 0,
                              episode_end=k == len(windows) - 1,
                              next_context=None).state
        assert net.targets is None or len(net.targets) <= held_at_most(net, len(windows))
    net.end_step(opts)
    return got


def held_at_most(net: DNIRNN, n_windows: int) -> int:
    """The window graphs the kept windows may hold: H (the block chain: 2H - 1), or the
    episode (an unbounded horizon), or K for the deeper backward."""
    h = net.sg_horizon or n_windows
    return max(net.depth, 2 * h - 1 if net.targets.chain == "block" else h)


def boundary_states(net: DNIRNN, windows) -> list[torch.Tensor]:
    with torch.no_grad():
        s, states = net.core.zero_state(B), []
        for w in windows:
            states.append(s)
            s = net.core(w.x, s)[2]
    return states


def truncated_lambda_return(net, windows, states, k, horizon, lam, beta):
    """G_k over windows k .. k+H-1 (cut at the episode's end), by one autograd pass."""
    span = windows[k : k + horizon]
    ends = k + len(span) == len(windows)

    def predict(flat, j):
        return net.synthetic_gradient(flat, None, k + j)

    return future_gradients(net, span, states[k], lam=lam, beta=beta, predict=predict,
                          episode_end=ends).targets[0]


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("horizon", [2, 3])
@pytest.mark.parametrize("lam,beta", [(1.0, 1.0), (0.5, 1.0), (0.0, 1.0), (0.7, 0.5)])
def test_horizon_targets_equal_the_truncated_lambda_return(horizon, lam, beta, monkeypatch):
    windows = episode(14, 2)  # 7 windows: boundaries 1..6 are fitted
    net = net_with(random_synthesizer(2 * 5, positions=8), beta=beta, lam=lam,
                   horizon=horizon)
    got = run_episode(net, frozen_opts(net), windows, monkeypatch)
    assert sorted(got) == list(range(1, len(windows)))
    states = boundary_states(net, windows)
    for k, target in got.items():
        want = truncated_lambda_return(net, windows, states, k, horizon, lam, beta)
        torch.testing.assert_close(target, want, rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("horizon", [None, 7, 50])
def test_a_horizon_covering_the_episode_equals_the_span_pass(horizon, monkeypatch):
    windows = episode(14, 2)
    net = net_with(random_synthesizer(2 * 5, positions=8), lam=0.8, horizon=horizon)
    got = run_episode(net, frozen_opts(net), windows, monkeypatch)
    span = future_gradients(net, windows, net.core.zero_state(B), lam=0.8, beta=1.0,
                          predict=lambda f, k: net.synthetic_gradient(f, None, k),
                          episode_end=True)
    for k in range(1, len(windows)):
        torch.testing.assert_close(got[k], span.targets[k], rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("float64")
def test_horizon_one_is_the_windows_own_target(monkeypatch):
    """``horizon: 1`` with a λ is the paper's per-window target: nothing is kept."""
    windows = episode(10, 2)
    one = net_with(random_synthesizer(10), lam=1.0, horizon=1)
    paper = net_with(random_synthesizer(10))
    assert one.targets is None
    a = run_episode(one, frozen_opts(one), windows, monkeypatch)
    b = run_episode(paper, frozen_opts(paper), windows, monkeypatch)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k])


@pytest.mark.usefixtures("float64")
def test_keeping_graphs_leaves_the_core_update_unchanged():
    """The parameter snapshot changes what autograd saves, not one float of the gradients.
    (float64: on the CPU a kept window runs the native LSTM kernels, which in float32 round
    differently from oneDNN's; in float64 both paths are the native ones.)"""
    windows = episode(6, 3)
    grads = []
    for keep in (False, True):
        net = net_with(random_synthesizer(10), lam=1.0, horizon=2)
        for p in net.core_parameters():
            p.grad = None
        net.window_gradients(windows[1], net.core.zero_state(B), keep_graph=keep)
        grads.append([p.grad.clone() for p in net.core_parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_kept_graphs_survive_the_core_steps_and_use_their_windows_parameters(monkeypatch):
    """With a moving core, G_k is the λ-return through each window's own parameters: the
    target of boundary 1 (H = 2) equals the one computed by hand from parameter copies taken
    when windows 0, 1 and 2 ran."""
    windows = episode(8, 2)
    net = net_with(random_synthesizer(10), lam=1.0, horizon=2)
    opts = Optimizers(adam(net.core_parameters(), 0.05), adam(net.synthesizer.parameters(), 0.0))
    copies = []
    window_backward = DNIRNN.window_backward

    def copy_then_run(self, *args, **kw):  # (between a window's forward and its step)
        copies.append([p.detach().clone() for p in self.core_parameters()])
        return window_backward(self, *args, **kw)

    monkeypatch.setattr(DNIRNN, "window_backward", copy_then_run)
    got = run_episode(net, opts, windows, monkeypatch)
    assert not torch.equal(copies[1][0], copies[2][0])  # the core moved in between

    def run(k, start):  # window k with the parameters it had: (loss, end)
        with torch.no_grad():
            for p, v in zip(net.core_parameters(), copies[k]):
                p.copy_(v)
        logits, _, end = net.core(windows[k].x, start)
        return net.task_loss(logits, windows[k])[0], end

    with torch.no_grad():
        s1 = run(0, net.core.zero_state(B))[1]
        s2 = run(1, s1)[1]
    s2 = tuple(t.detach().requires_grad_(True) for t in s2)
    l2, s3 = run(2, s2)
    g3 = net.synthetic_gradient(tuple(t.detach() for t in s3), None, 3)
    delta2 = torch.autograd.grad([l2, *s3], s2, [None, *unflatten_state(g3, 1)])
    s1 = tuple(t.detach().requires_grad_(True) for t in s1)
    l1, s2 = run(1, s1)
    g1 = torch.autograd.grad([l1, *s2], s1, [None, *delta2])
    torch.testing.assert_close(got[1], flatten_state(g1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("windows_per_episode", [6, 24])
def test_graphs_held_stay_at_the_horizon_and_are_freed(windows_per_episode, monkeypatch):
    """However long the episode, at most H window graphs are alive; each is freed (by
    reference counting alone, so no reference cycle keeps it) once its last chain ran."""
    windows = episode(2 * windows_per_episode, 2)
    net = net_with(random_synthesizer(10, positions=30), lam=1.0, horizon=3)
    opts = Optimizers(adam(net.core_parameters(), 1e-3), adam(net.synthesizer.parameters(), 1e-3))
    alive: list[weakref.ref] = []
    push = type(net.targets).push

    def watch(self, link, episode_end):
        alive.append(weakref.ref(link.end[0]))
        out = push(self, link, episode_end)
        held = sum(r() is not None for r in alive)
        assert held <= 3, f"{held} window graphs alive with H = 3"
        return out

    monkeypatch.setattr(type(net.targets), "push", watch)
    got = run_episode(net, opts, windows, monkeypatch)
    assert len(got) == windows_per_episode - 1
    assert net.targets.max_held == 3 and len(net.targets) == 0
    assert all(r() is None for r in alive)


@needs_ptb
@pytest.mark.parametrize("chain, waiting", [("window", 2), ("block", 4)])
def test_stream_resumes_exactly_with_targets_in_flight(chain, waiting, tmp_path):
    """H = 3 windows, 2 windows per step: the checkpoint after step 4 holds the waiting
    windows (2; the block chain: boundaries 4 .. 7, one window short of their chain) whose
    graphs are rebuilt on resume (data, parameters and dropout RNG as they were). The
    synthetic gradient is too small here to move the loss's floats, so the check is on the
    synthesizer's own record and final state, bit for bit."""
    extra = ["--model.synthesizer.kind=linear", "--model.synthesizer.fit=rls",
             "--model.targets.lam=0.9", "--model.targets.horizon=3",
             f"--model.targets.chain={chain}",
             "--model.synthesizer.guard=2.0",
             "--data.init_args.batch_size=20000", "--model.windows_per_step=2",
             "--trainer.limit_val_batches=2", "--model.eval_chunk=64", "--model.core.dropout=0.1",
             f"--data.init_args.root={PTB}", "--trainer.max_epochs=5"]
    _resume_matches("ptb_char_dni", tmp_path, 8, 4, *extra)
    full, resumed = (next((tmp_path / run).rglob("version_0")) for run in ("full", "resumed"))
    ckpt = torch.load(full / "checkpoints" / _ckpt_name(full, 4), weights_only=False)
    assert len(ckpt["dnirnn"]["horizon"]["links"]) == waiting
    for key in ("train/sg_cos", "train/sg_norm"):
        a, b = ({int(r["step"]): r[key] for r in rows(v) if r.get(key)} for v in (full, resumed))
        assert all(a[step] == b[step] for step in range(5, 8)), key
    a, b = (torch.load(v / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
            for v in (full, resumed))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
