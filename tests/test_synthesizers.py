"""Properties of the synthesizer side (dnirnn.synthesizers), in float64 on tiny models (the
least-squares fit: tests/test_least_squares.py): λ-return targets equal today's target at
λ = 0, the true future gradient at λ = 1 and their recursion in between,
the guard caps, per-position maps stay apart, and the synthesizer learns (DESIGN §2.5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dnirnn.dni import DNIRNN, window_update
from dnirnn.engine.truth import future_gradients
from dnirnn.model import (
    CoreConfig,
    LSTMCore,
    Window,
    detach_state,
    flatten_state,
    split_windows,
    unflatten_state,
)
from dnirnn.optim import Optimizers, adam
from dnirnn.options import TargetOptions
from dnirnn.synthesizers import (
    LeastSquaresSynthesizer,
    NormGuard,
    Synthesizer,
)
from dnirnn.tasks import TASKS, CopyTask

from .conftest import mse_steps

B, IN, OUT, H = 3, 4, 2, 5


def net_with(synth, layers: int = 1, beta: float = 1.0, guard=None, **kw) -> DNIRNN:
    torch.manual_seed(0)
    core = LSTMCore(CoreConfig(input_size=IN, output_size=OUT, hidden_size=H, num_layers=layers))
    return DNIRNN(core, mse_steps, loss_norm=B, boundary="dni" if synth else "tbptt",
                  synthesizer=synth, targets=TargetOptions(scale=beta, **kw), guard=guard)


def episode(n_steps: int, window: int, seed: int = 2) -> list[Window]:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n_steps, B, IN, generator=g), torch.randn(n_steps, B, OUT, generator=g)
    windows = split_windows(x, y, window)
    for k, w in enumerate(windows):
        w.position = k
    return windows


def random_synthesizer(state_size: int, positions: int = 4, seed: int = 1) -> Synthesizer:
    synth = Synthesizer(state_size, kind="mlp", hidden_size=6, positions=positions)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in synth.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return synth


# ---- λ-return targets ----------------------------------------------------------------------

def independent_target(net: DNIRNN, w: Window, start: torch.Tensor, g: torch.Tensor | None,
                       beta: float) -> torch.Tensor:
    """dl_k/ds_k + beta J_k^T g by torch.autograd.grad, from the flat state ``start``."""
    layers = net.core.cfg.num_layers
    s = tuple(t.detach().requires_grad_(True) for t in unflatten_state(start, layers))
    logits, _, end = net.core(w.x, s)
    loss = net.task_loss(logits, w)[0]
    outputs, incoming = [loss], [None]
    if g is not None:
        outputs += list(end)
        incoming += [beta * t for t in unflatten_state(g, layers)]
    return flatten_state(torch.autograd.grad(outputs, s, incoming))


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("lam", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("episode_end", [True, False])
def test_future_gradients_follow_their_recursion(lam, episode_end):
    """G_k = dl_k/ds_k + beta J_k^T [(1-λ) M(s_{k+1}) + λ G_{k+1}], G_K = 0 or M(s_K)."""
    beta = 0.7
    net = net_with(None, layers=2, beta=beta)
    synth = random_synthesizer(net.core.state_size)

    def predict(flat, k):
        return synth(flat, None, k)

    windows = episode(7, 2)
    span = future_gradients(net, windows, net.core.zero_state(B), lam=lam, beta=beta,
                          predict=predict, episode_end=episode_end)
    K = len(windows)
    with torch.no_grad():
        ends = span.states[1:] + [flatten_state(net.core(windows[-1].x, unflatten_state(
            span.states[-1], 2))[2])]
    G_next = None if episode_end else predict(ends[-1], K)
    for k in reversed(range(K)):
        g = G_next
        G = independent_target(net, windows[k], span.states[k], g, beta)
        torch.testing.assert_close(span.targets[k], G, rtol=1e-9, atol=1e-12)
        if k > 0:
            G_next = (1 - lam) * predict(span.states[k], k) + lam * G
    assert all(p.grad is None for p in net.core.parameters())  # parameters untouched


@pytest.mark.usefixtures("float64")
def test_lambda_one_is_the_true_future_gradient():
    net = net_with(None, layers=2)
    windows = episode(9, 2)
    span = future_gradients(net, windows, net.core.zero_state(B), lam=1.0, beta=1.0,
                          predict=lambda flat, k: torch.ones_like(flat), episode_end=True)
    for k in range(1, len(windows)):
        state = unflatten_state(span.states[k], 2)
        true = net.oracle_gradient(state, windows[k:])  # full BPTT over the rest
        torch.testing.assert_close(span.targets[k], true, rtol=1e-9, atol=1e-12)


@pytest.mark.usefixtures("float64")
def test_lambda_zero_is_the_online_bootstrapped_target():
    """With frozen parameters, λ = 0 over the span == each window's own delta_k."""
    synth = random_synthesizer(2 * H, positions=4)
    net = net_with(synth)
    windows = episode(7, 2)
    span = future_gradients(net, windows, net.core.zero_state(B), lam=0.0, beta=1.0,
                          predict=lambda f, k: net.synthetic_gradient(f, None, k),
                          episode_end=True)
    state = net.core.zero_state(B)
    for k, w in enumerate(windows):
        net.core.zero_grad()
        wg = net.window_gradients(w, state, episode_end=k == len(windows) - 1)
        torch.testing.assert_close(span.targets[k], wg.target, rtol=1e-9, atol=1e-12)
        state = wg.state


# ---- positions, guard ---------------------------------------------------------------------

def test_per_position_maps_are_independent():
    synth = random_synthesizer(6, positions=3)
    s = torch.randn(2, 6)
    assert not torch.allclose(synth(s, None, 0), synth(s, None, 1))
    assert torch.equal(synth(s, None, 2), synth(s, None, 7))  # k >= P shares the last map
    loss = synth(s, None, 1).pow(2).sum()
    loss.backward()
    assert all(p.grad is None for p in synth.maps[0].parameters())


def test_fresh_per_position_synthesizer_outputs_zero():
    for synth in (Synthesizer(6, positions=3), LeastSquaresSynthesizer(6, positions=3)):
        assert synth(torch.randn(2, 6), None, 1).abs().sum() == 0


def test_guard_caps_relative_to_the_running_target_rms():
    guard = NormGuard(positions=2, factor=2.0, momentum=0.5)
    g = torch.tensor([[30.0, 40.0], [0.3, 0.4]])  # norms 50 and 0.5
    capped, frac = guard.cap(g, 0)
    assert capped.abs().sum() == 0 and frac == 1.0  # nothing seen yet: no synthetic gradient
    guard.observe(torch.tensor([[3.0, 4.0]]), 0)  # target norm 5 -> limit 10
    assert guard.cap(g, 0)[0].abs().sum() == 0  # folded in at the step's end
    guard.end_step()
    capped, frac = guard.cap(g, 0)
    torch.testing.assert_close(capped[0].norm(), torch.tensor(10.0))
    torch.testing.assert_close(capped[0] / capped[0].norm(), g[0] / g[0].norm())
    assert torch.equal(capped[1], g[1]) and frac == 0.5  # small ones are left alone
    assert guard.cap(g, 1)[0].abs().sum() == 0  # the other position has its own statistics
    guard.observe(torch.tensor([[6.0, 8.0]]), 0)  # bias-corrected EMA: (25*.25+100*.5)/.75
    guard.end_step()
    torch.testing.assert_close(guard.limit(0), 2.0 * torch.tensor(75.0).sqrt())


def test_engine_injects_the_capped_gradient():
    synth = random_synthesizer(2 * H, positions=1)
    guard = NormGuard(factor=1e-3)
    guard.observe(torch.ones(B, 2 * H))
    guard.end_step()
    net = net_with(synth, guard=guard)
    g = net.synthetic_gradient(net.core.zero_state(B))
    bound = float(guard.limit(0)) * (1 + 1e-6)
    assert (torch.linalg.vector_norm(g, dim=-1) <= bound).all()
    raw = synth(flatten_state(net.core.zero_state(B)))
    assert torch.linalg.vector_norm(raw, dim=-1).min() > bound  # (so the cap did act)


def test_non_finite_target_is_flagged():
    synth = Synthesizer(2 * H, kind="linear")
    net = net_with(synth)
    opts = Optimizers(adam(net.core_parameters(), 1e-3), adam(synth.parameters(), 1e-3))
    w = episode(2, 2)[0]
    state = tuple(torch.full_like(t, float("inf")) for t in net.core.zero_state(B))
    res = window_update(net, opts, w, state)
    assert not bool(res.finite)


# ---- DESIGN §2.5: the synthesizer learns ---------------------------------------------------

def test_synthesizer_learns_the_future_gradient_on_copy():
    """Copy at length 3, T = 2: a per-position least-squares synthesizer fitted to λ = 1
    targets while the core trains has cos(SG, true future gradient) well above 0 within a
    few CPU-seconds, at the input-phase boundaries (the long-range credit) and the answer
    phase alike (mean of the measurements at steps 50, 100, 150; zero before training)."""
    torch.manual_seed(0)
    task = CopyTask(repeat=False, batch_size=16, seed=0, start_length=3)
    core = LSTMCore(CoreConfig(task.input_size, task.output_size, 32, 1))
    synth = LeastSquaresSynthesizer(core.state_size, positions=16, forget=0.8, ridge=0.1)
    net = DNIRNN(core, TASKS["copy"], task.loss_norm(2), "dni", synth,
                 targets=TargetOptions(lam=1.0))
    opts = Optimizers(adam(net.core_parameters(), 3e-3), None, 10.0)

    def episode_windows(position: int) -> list[Window]:
        batch = task.batch("train", position)
        windows = split_windows(batch.x, batch.y, 2, batch.mask)
        for k, w in enumerate(windows):
            w.position = k
        return windows

    def measure() -> dict[str, list[float]]:
        cos: dict[str, list[float]] = {"input": [], "answer": []}
        for position in (10**6, 10**6 + 1):  # held-out episodes
            windows = episode_windows(position)
            truth = future_gradients(net, windows, core.zero_state(16), lam=1.0, beta=1.0,
                                   predict=None, episode_end=True)
            for k in range(1, len(windows)):
                g = net.synthetic_gradient(truth.states[k], None, k)
                phase = "answer" if task.answer_phase(2 * k) else "input"
                cos[phase].append(
                    float(F.cosine_similarity(g.flatten(), truth.targets[k].flatten(), 0)))
        return cos

    assert all(c == 0 for cs in measure().values() for c in cs)
    seen: dict[str, list[float]] = {"input": [], "answer": []}
    for step in range(1, 151):
        windows = episode_windows(step)
        state = core.zero_state(16)
        for k, w in enumerate(windows):
            state = window_update(net, opts, w, state, episode_start=k == 0,
                                  episode_end=k == len(windows) - 1).state
        assert bool(net.end_step(opts))
        if step % 50 == 0:
            for phase, cs in measure().items():
                seen[phase] += cs
    mean = {phase: sum(cs) / len(cs) for phase, cs in seen.items()}
    assert mean["input"] > 0.3 and mean["answer"] > 0.3, mean


def test_window_positions_pick_the_maps(monkeypatch):
    """window_update predicts g_{k+1} with map k+1 and fits map k."""
    synth = LeastSquaresSynthesizer(2 * H, positions=4)
    net = net_with(synth)
    opts = Optimizers(adam(net.core_parameters(), 1e-3), None)
    used = []
    real = synth.forward
    monkeypatch.setattr(synth, "forward", lambda s, c=None, p=0: (used.append(p), real(s, c, p))[1])
    w = episode(2, 2)[0]
    w.position = 2
    window_update(net, opts, w, detach_state(net.core.zero_state(B)))
    assert sorted(used) == [2, 3]  # g at the end with map k+1 = 3, the prediction at k = 2
    assert synth._seen == {2}
