"""Properties of the synthesizer side (dnirnn.synthesizers), in float64 on tiny models:
least squares with forgetting equals the closed-form ridge solution, λ-return targets equal
today's target at λ = 0, the true future gradient at λ = 1 and their recursion in between,
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
from dnirnn.options import SynthesizerOptions, TargetOptions
from dnirnn.synthesizers import (
    LeastSquaresSynthesizer,
    NormGuard,
    Synthesizer,
    build_synthesizer,
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


# ---- least squares with forgetting ---------------------------------------------------------

@pytest.mark.usefixtures("float64")
def test_rls_equals_the_closed_form_ridge_solution():
    S, C, forget, ridge = 4, 2, 0.7, 0.05
    rls = LeastSquaresSynthesizer(S, context_size=C, positions=3, forget=forget, ridge=ridge)
    g = torch.Generator().manual_seed(0)
    seen: dict[int, list[tuple[int, torch.Tensor, torch.Tensor]]] = {0: [], 1: []}
    steps = 6
    for t in range(steps):
        for p in (0, 1) if t % 2 == 0 else (0,):  # position 1 skips the odd steps
            for _ in range(2):  # two windows per step at each position
                s, c, d = (torch.randn(5, n, generator=g) for n in (S, C, S))
                rls.observe(s, d, c, position=p)
                seen[p].append((t, torch.cat([s, c, torch.ones(5, 1)], -1), d))
        assert bool(rls.end_step())
    for p, pairs in seen.items():
        w = torch.tensor([forget ** (steps - 1 - t) for t, _, _ in pairs])
        X = torch.cat([x * w[i].sqrt() for i, (_, x, _) in enumerate(pairs)])
        Y = torch.cat([y * w[i].sqrt() for i, (_, _, y) in enumerate(pairs)])
        A = X.T @ X
        expected = torch.linalg.solve(A + ridge * A.diagonal().mean() * torch.eye(len(A)), X.T @ Y)
        torch.testing.assert_close(rls.W[p], expected, rtol=1e-10, atol=1e-12)
        s = torch.randn(2, S, generator=g)
        c = torch.randn(2, C, generator=g)
        torch.testing.assert_close(rls(s, c, p), torch.cat([s, c, torch.ones(2, 1)], -1) @ expected)
    assert rls.W[2].abs().sum() == 0  # never observed: still the zero map (DNI == TBPTT)


@pytest.mark.usefixtures("float64")
def test_rls_hidden_inputs_and_shared_neighbours_equal_their_ridge_solutions():
    """``inputs="h"`` regresses on [h; 1] (the first half of the flat state); ``share = w``
    adds each boundary's pairs to positions p - 1 and p + 1 with weight w."""
    S, w, ridge = 6, 0.5, 0.05
    rls = LeastSquaresSynthesizer(S, positions=3, forget=1.0, ridge=ridge, inputs="h", share=w)
    g = torch.Generator().manual_seed(4)
    pairs = {p: [] for p in range(3)}
    for p in (0, 1):
        s, d = torch.randn(5, S, generator=g), torch.randn(5, S, generator=g)
        rls.observe(s, d, position=p)
        x = torch.cat([s[:, : S // 2], torch.ones(5, 1)], -1)
        for q in range(3):
            weight = 1.0 if q == p else (w if abs(q - p) == 1 else 0.0)
            pairs[q].append((x * weight**0.5, d * weight**0.5))
    assert bool(rls.end_step())
    for q, xs in pairs.items():
        X, Y = torch.cat([x for x, _ in xs]), torch.cat([y for _, y in xs])
        A = X.T @ X
        expected = torch.linalg.solve(A + ridge * A.diagonal().mean() * torch.eye(len(A)),
                                      X.T @ Y)
        torch.testing.assert_close(rls.W[q], expected, rtol=1e-10, atol=1e-12)
    assert rls.W.shape == (3, S // 2 + 1, S)
    with pytest.raises(ValueError, match="inputs"):
        LeastSquaresSynthesizer(S, inputs="c")
    with pytest.raises(ValueError, match="share"):
        LeastSquaresSynthesizer(S, share=1.5)


@pytest.mark.usefixtures("float64")
def test_rls_ridge_per_feature_is_its_closed_form_and_blind_to_a_feature_s_scale():
    """``ridge_to="feature"`` solves ``(A + r diag(A))^{-1} b``: scaling one input feature by
    s scales its row of W by 1 / s and leaves the predictions as they were; the mean-diagonal
    ridge's predictions move."""
    S, ridge, scale = 4, 0.3, 50.0
    g = torch.Generator().manual_seed(7)
    s_, d = torch.randn(40, S, generator=g), torch.randn(40, S, generator=g)
    scaled = s_.clone()
    scaled[:, 1] *= scale
    fits = {}
    for to in ("feature", "mean"):
        for name, x in (("plain", s_), ("scaled", scaled)):
            rls = LeastSquaresSynthesizer(S, forget=1.0, ridge=ridge, ridge_to=to)
            rls.observe(x, d)
            assert bool(rls.end_step())
            fits[to, name] = rls
    X = torch.cat([s_, torch.ones(40, 1)], -1)
    A = X.T @ X
    torch.testing.assert_close(fits["feature", "plain"].W[0],
                               torch.linalg.solve(A + ridge * torch.diag(A.diagonal()), X.T @ d),
                               rtol=1e-10, atol=1e-12)
    row = torch.ones(S + 1, 1)
    row[1] = 1 / scale
    torch.testing.assert_close(fits["feature", "scaled"].W[0], fits["feature", "plain"].W[0] * row,
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fits["feature", "scaled"](scaled), fits["feature", "plain"](s_),
                               rtol=1e-10, atol=1e-12)
    assert not torch.allclose(fits["mean", "scaled"](scaled), fits["mean", "plain"](s_),
                              rtol=1e-3, atol=1e-3)
    dead = LeastSquaresSynthesizer(S, ridge=ridge, ridge_to="feature")  # a feature never on
    dead.observe(s_ * torch.tensor([1.0, 0.0, 1.0, 1.0]), d)
    assert bool(dead.end_step()) and dead.W[0, 1].abs().max() == 0
    with pytest.raises(ValueError, match="ridge_to"):
        LeastSquaresSynthesizer(S, ridge_to="median")
    with pytest.raises(ValueError, match="rls_ridge_to"):
        SynthesizerOptions(fit="rls", kind="linear", rls_ridge_to="median")
    built = build_synthesizer(S, SynthesizerOptions(fit="rls", kind="linear",
                                                     rls_ridge_to="feature"))
    assert built.ridge_to == "feature"


def test_rls_statistics_stay_float64_and_live_in_the_state_dict():
    rls = LeastSquaresSynthesizer(4, positions=2).to(torch.float32)
    assert rls.A.dtype == rls.b.dtype == torch.float64 and rls.W.dtype == torch.float32
    rls.observe(torch.randn(3, 4), torch.randn(3, 4))
    rls.end_step()
    state = rls.state_dict()
    assert set(state) == {"A_upper", "b", "age"}  # W is re-solved from A, b on load
    assert state["A_upper"].shape == (2, 5 * 6 // 2)  # the upper triangle of A (n = 5)
    other = LeastSquaresSynthesizer(4, positions=2)
    other.load_state_dict(state)
    assert torch.equal(other.W, rls.W) and torch.equal(other.A, rls.A)
    assert torch.equal(other.b, rls.b)


def test_rls_state_dict_resumes_exactly_with_positions_of_every_age():
    """Positions solved in different steps (one skipped, one never seen): the re-solved W,
    and every later step, are bit-identical to the uninterrupted object's."""
    g = torch.Generator().manual_seed(3)
    a, b = (LeastSquaresSynthesizer(6, positions=4, forget=0.7) for _ in range(2))

    def step(ls, t, positions):
        for p in positions:
            s, d = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
            ls.observe(s, d, position=p)
        ls.end_step()

    for t, positions in enumerate([(0, 1), (0,), (0, 2)]):
        step(a, t, positions)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.W, b.W) and torch.equal(a.A, b.A)
    g_a, g_b = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    for ls, gen in ((a, g_a), (b, g_b)):
        for p in (1, 2, 3):
            ls.observe(torch.randn(5, 6, generator=gen), torch.randn(5, 6, generator=gen),
                       position=p)
        ls.end_step()
    assert torch.equal(a.W, b.W)


@pytest.mark.usefixtures("float64")
def test_rls_solved_every_k_steps_holds_its_maps_between_solves():
    """``solve_every = 3``: the maps stay those of the last solve for two steps (the zero map
    before the first), and each third step they are, bit for bit, the maps of a synthesizer
    solved every step from the same pairs (the statistics take every pair either way). A
    position seen only between two solves is solved at the next one."""
    g = torch.Generator().manual_seed(5)
    every, held = (LeastSquaresSynthesizer(4, positions=3, forget=0.7, solve_every=k)
                   for k in (1, 3))
    schedule = [(0,), (0, 1), (0,), (2,), (0,), (0,)]
    for t, positions in enumerate(schedule):
        before = held.W.clone()
        for p in positions:
            s, d = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
            every.observe(s, d, position=p)
            held.observe(s, d, position=p)
        assert bool(every.end_step()) and bool(held.end_step())
        assert torch.equal(held.A, every.A) and torch.equal(held.b, every.b)
        if (t + 1) % 3:
            assert torch.equal(held.W, before)  # held since the last solve
        else:
            assert torch.equal(held.W, every.W)  # every position seen since then re-solved
    assert held.W[2].abs().sum() > 0  # (position 2, seen at step 4 only, solved at step 6)
    with pytest.raises(ValueError, match="solve_every"):
        LeastSquaresSynthesizer(4, solve_every=0)
    with pytest.raises(ValueError, match="rls_solve_every"):
        SynthesizerOptions(fit="rls", kind="linear", rls_solve_every=0)
    built = build_synthesizer(4, SynthesizerOptions(fit="rls", kind="linear", rls_solve_every=5))
    assert built.solve_every == 5


def test_rls_solved_every_k_steps_resumes_exactly_between_solves():
    """A checkpoint taken between two solves holds the held maps and which positions are
    behind: the loaded synthesizer predicts with the held maps and solves at the same step,
    bit-identical to the uninterrupted one."""
    g = torch.Generator().manual_seed(8)
    a, b = (LeastSquaresSynthesizer(6, positions=3, forget=0.7, solve_every=4)
            for _ in range(2))
    for positions in [(0, 1), (0,), (0,), (1,), (2,), (0,)]:  # a solve after step 4
        for p in positions:
            a.observe(torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g),
                      position=p)
        a.end_step()
    state = a.state_dict()
    assert {"W_held", "solve"} <= set(state)
    b.load_state_dict(state)
    assert torch.equal(a.W, b.W) and torch.equal(a.A, b.A)
    held = a.W.clone()
    for _ in range(2):  # the 8th step solves positions 0 and 2 (seen since the 4th)
        s, d = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
        for ls in (a, b):
            ls.observe(s, d, position=0)
            ls.end_step()
        assert torch.equal(a.W, b.W)
    assert not torch.equal(a.W[2], held[2]) and torch.equal(a.W[1], held[1])


def test_rls_loads_a_checkpoint_of_the_earlier_layout():
    rls = LeastSquaresSynthesizer(3, positions=2)
    old = {"A": torch.eye(4, dtype=torch.float64).expand(2, 4, 4).clone(),
           "b": torch.ones(2, 4, 3, dtype=torch.float64), "W": torch.full((2, 4, 3), 0.5)}
    rls.load_state_dict(old)
    assert torch.equal(rls.W, old["W"]) and torch.equal(rls.A, old["A"])


def test_rls_end_step_sums_the_pairs_of_every_rank_before_solving():
    """Rank 0 keeps the forgotten old statistics, rank 1 starts the step from zero: the
    all-reduced sum is what one process holding the whole batch has."""
    g = torch.Generator().manual_seed(0)
    one, two, rest = (LeastSquaresSynthesizer(3, forget=0.6) for _ in range(3))
    rest.rank = 1
    for t in range(2):
        s, d = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
        one.observe(s, d)
        two.observe(s[:2], d[:2])  # rank 0 holds half the batch; all_reduce adds the rest
        rest.observe(s[2:], d[2:])
        other_rank = iter([rest.A[0].clone(), rest.b[0].clone()])  # end_step sums A, then b

        def all_reduce(t, other_rank=other_rank):
            t += next(other_rank)

        one.end_step()
        two.end_step(all_reduce)
        rest.end_step(lambda t: None)  # (its own sum is rank 0's: mirror it for the next step)
        rest.A.copy_(two.A)
        rest.b.copy_(two.b)
        torch.testing.assert_close(one.W, two.W, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(one.A, two.A, rtol=1e-12, atol=1e-12)


def test_rls_needs_a_linear_kind_and_valid_settings():
    with pytest.raises(ValueError, match="linear"):
        SynthesizerOptions(fit="rls", kind="mlp")
    with pytest.raises(ValueError, match="forget"):
        LeastSquaresSynthesizer(4, forget=0.0)
    with pytest.raises(ValueError, match="ridge"):
        LeastSquaresSynthesizer(4, ridge=0.0)
    with pytest.raises(ValueError, match="fit"):
        SynthesizerOptions(fit="sgd")
    assert isinstance(build_synthesizer(4, SynthesizerOptions(fit="rls", kind="linear")),
                      LeastSquaresSynthesizer)


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
