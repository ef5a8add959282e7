"""Properties of the least-squares synthesizer (``dnirnn.synthesizers.least_squares``), in
float64: it equals the closed-form ridge solution with forgetting (hidden inputs, shared
neighbours, a ridge per feature), its statistics stay float64 and resume exactly from a
checkpoint (every age, every solve cadence, the earlier layout), data-parallel ranks sum their
pairs before the solve, and bad settings are refused."""

from __future__ import annotations

import pytest
import torch

from dnirnn.options import SynthesizerOptions
from dnirnn.synthesizers import LeastSquaresSynthesizer, build_synthesizer


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
