"""Property tests of the two-timescale hierarchy (docs/design.md §1), float64, tiny.

The reference throughout is ``reference_forward``: the whole two-level system as ONE graph,
stepped one fast step at a time with the documented schedule written out independently
(the slow core ticks after fast steps k, 2k, ...; segment j reads m_j).
"""

from __future__ import annotations

import copy

import pytest
import torch

from dnirnn.hierarchy import (
    HierarchyOracle,
    HierarchyState,
    SlowWindow,
    TwoTimescaleRNN,
    fast_window_gradients,
    hierarchy_update,
    slow_window_gradients,
)
from dnirnn.model import Window, detach_state, flatten_state, split_windows

from .hierarchy_common import (
    B,
    RecordGrads,
    data,
    make_net,
    random_state,
    randomise,
    recorders,
    reference_forward,
    synth_options,
    total_loss,
)

pytestmark = pytest.mark.usefixtures("float64")  # exactness is checked in float64


# ---- 1. the interface synthesizer's target is the slow core's TRUE gradient on u -----------


def test_interface_target_is_true_gradient_of_slow_objective():
    """ū_i.grad from the slow window's backward == torch.autograd.grad of the slow objective
    sum_j <G_j, m_j> + beta <g_s, z_end> w.r.t. the messages u_i, recomputed apart (and
    z_{i0}.grad == its gradient w.r.t. the start state); and hierarchy_update trains M_if on
    exactly these targets."""
    net = make_net(sg_scale=0.7, interface_sg_scale=0.5)
    for i, synth in enumerate(
            (net.fast_synthesizer, net.slow_synthesizer, net.interface_synthesizer)):
        randomise(synth, seed=10 + i)
    twin = copy.deepcopy(net)
    d, state = data(net.cfg.span), random_state(net)

    slow, s = SlowWindow.open(state.slow), state.fast
    for w in split_windows(d.x, d.y, net.cfg.fast_window, d.mask):
        s = fast_window_gradients(net, w, s, slow).state
    sw = slow_window_gradients(net, slow)

    # apart: the slow core from z_{i0} over fresh message leaves, with the engine's G_j
    u = [ui.clone().requires_grad_(True) for ui in sw.messages]
    z0 = detach_state(state.slow, requires_grad=True)
    z, m = z0, [z0[0][-1]]
    for ui in u:
        _, z = net.slow(ui[None], z)
        m.append(z[0][-1])
    g_s = net.slow_synthesizer(flatten_state(z)).detach()
    objective = sum((G * mj).sum() for G, mj in zip(slow.G, m)) + 0.7 * (
        g_s * flatten_state(z)).sum()
    *du, dh, dc = torch.autograd.grad(objective, [*u, *z0])
    expected = torch.stack(du)  # (T_s, B, H_f)
    assert sw.message_grads.shape == (net.cfg.slow_window, B, net.cfg.fast_hidden)
    assert sw.message_grads[-1].abs().sum() > 0  # the last message counts through g_s
    torch.testing.assert_close(sw.message_grads, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(sw.target, flatten_state((dh, dc)), rtol=1e-12, atol=1e-14)

    # the full update (frozen cores) regresses M_if and M_s onto the same targets
    opts = recorders(twin)
    hierarchy_update(twin, opts, d, state)
    assert_regressed(twin.interface_synthesizer, opts.interface,
                     sw.messages.flatten(0, 1), expected.flatten(0, 1))
    assert_regressed(twin.slow_synthesizer, opts.slow.synthesizer,
                     flatten_state(state.slow), flatten_state((dh, dc)))


def assert_regressed(synth, recorder: RecordGrads, inputs, target) -> None:
    """The first recorded step of ``synth`` is the gradient of ||M(inputs) - target||^2."""
    loss = (synth(inputs) - target).pow(2).sum(-1).mean()
    for a, b in zip(recorder.history[0], torch.autograd.grad(loss, list(synth.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fast_window_gradients_equal_autograd_of_surrogate():
    """theta_f.grad, delta_w = s_w.grad and G_j = m̄_j.grad of one fast window equal
    torch.autograd.grad of l + beta <M_f(s_end), s_end> + beta_if sum_i <M_if(u_i), u_i>,
    computed apart one step at a time; and hierarchy_update regresses M_f onto delta_w."""
    net = make_net(sg_scale=0.7, interface_sg_scale=0.5)
    for i, synth in enumerate(
            (net.fast_synthesizer, net.slow_synthesizer, net.interface_synthesizer)):
        randomise(synth, seed=40 + i)
    twin, cfg = copy.deepcopy(net), net.cfg
    d, state = data(cfg.span), random_state(net)
    window = split_windows(d.x, d.y, cfg.fast_window, d.mask)[0]
    slow = SlowWindow.open(state.slow)
    fw = fast_window_gradients(net, window, state.fast, slow)
    got = [p.grad.clone() for p in net.fast_parameters()]

    s0 = detach_state(state.fast, requires_grad=True)
    m = [mj.detach().requires_grad_(True) for mj in slow.m[: cfg.fast_window // cfg.k]]
    emb, s, outs, us = net.encoder(window.x), s0, [], []
    for t in range(cfg.fast_window):
        out, s = net.fast(torch.cat([emb[t : t + 1], m[t // cfg.k][None]], -1), s)
        outs.append(out)
        if (t + 1) % cfg.k == 0:
            us.append(s[0][-1])
    surrogate = net.task_loss(net.readout(torch.cat(outs)), window)[0]
    surrogate = surrogate + 0.7 * (net.fast_synthesizer(flatten_state(s)).detach()
                                   * flatten_state(s)).sum()
    for u in us:
        surrogate = surrogate + 0.5 * (net.interface_synthesizer(u).detach() * u).sum()
    grads = torch.autograd.grad(surrogate, [*net.fast_parameters(), *s0, *m])
    n = len(got)
    for a, b in zip(got, grads[:n]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    delta = flatten_state(grads[n : n + 2])
    torch.testing.assert_close(fw.target, delta, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.stack(slow.G), torch.stack(grads[n + 2 :]),
                               rtol=1e-12, atol=1e-14)
    assert all(G.abs().sum() > 0 for G in slow.G)

    opts = recorders(twin)
    hierarchy_update(twin, opts, d, state)
    assert_regressed(twin.fast_synthesizer, opts.fast.synthesizer, flatten_state(state.fast),
                     delta)


# ---- 2. zero interface synthesizer == the two levels trained apart -------------------------


def fast_alone(net: TwoTimescaleRNN, d: Window, state: HierarchyState, m: list[torch.Tensor]):
    """The fast core alone, TBPTT (+ its own synthesizer), with m a CONSTANT input: per fast
    window, (theta_f grads, G_j = gradient on each segment's m)."""
    cfg, s, out = net.cfg, state.fast, []
    per = cfg.fast_window // cfg.k
    for w, win in enumerate(split_windows(d.x, d.y, cfg.fast_window, d.mask)):
        start = detach_state(s, requires_grad=True)
        m_w = [mj.detach().requires_grad_(True) for mj in m[w * per : (w + 1) * per]]
        top_down = torch.stack(m_w).repeat_interleave(cfg.k, dim=0)  # (T_f, B, H_s)
        o, s = net.fast(torch.cat([net.encoder(win.x), top_down], -1), start)  # one call
        objective = net.task_loss(net.readout(o), win)[0]
        if net.fast_synthesizer is not None:
            g = net.fast_synthesizer(flatten_state(s)).detach()
            objective = objective + cfg.sg_scale * (g * flatten_state(s)).sum()
        grads = torch.autograd.grad(objective, [*net.fast_parameters(), *m_w])
        out.append((grads[: -per], grads[-per:]))
    return out


def slow_alone(net: TwoTimescaleRNN, z_start, u: list[torch.Tensor], G: list[torch.Tensor]):
    """theta_s's gradient of sum_j <G_j, m_j> (+ beta <g_s, z_end>) over constant messages."""
    z, m = z_start, [z_start[0][-1]]
    for ui in u:
        _, z = net.slow(ui.detach()[None], z)
        m.append(z[0][-1])
    objective = sum((Gj * mj).sum() for Gj, mj in zip(G, m))
    if net.slow_synthesizer is not None:
        g = net.slow_synthesizer(flatten_state(z)).detach()
        objective = objective + net.cfg.sg_scale * (g * flatten_state(z)).sum()
    return torch.autograd.grad(objective, net.slow_parameters())


@pytest.mark.parametrize("recurrent", [None, "linear"])
def test_zero_interface_synthesizer_equals_levels_trained_apart(recurrent):
    """With M_if = 0 (fresh), per fast window the fast core's gradients are those of the fast
    core trained alone on [x, m] with m constant, and per span the slow core's gradients are
    those of sum_j <G_j, m_j> (+ beta <g_s, z_end>) on the same G's. Two spans, frozen."""
    m = recurrent and synth_options(recurrent)
    net = make_net(fast_synthesizer=m, slow_synthesizer=m, sg_scale=0.8)
    if recurrent:
        randomise(net.fast_synthesizer, 11), randomise(net.slow_synthesizer, 12)
    cfg, n_spans = net.cfg, 2
    d, state = data(n_spans * cfg.span), random_state(net)
    _, nodes = reference_forward(net, d.x, state)
    fast_ref = fast_alone(net, d, state, nodes["m"])

    opts, st = recorders(net), state
    spans = split_windows(d.x, d.y, cfg.span, d.mask)
    for span in spans:
        st = hierarchy_update(net, opts, span, st).state
    assert len(opts.fast.core.history) == len(fast_ref)
    for got, (want, _) in zip(opts.fast.core.history, fast_ref):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    G = [g for _, gs in fast_ref for g in gs]  # one per segment
    for n in range(n_spans):
        z0 = state.slow if n == 0 else detach_state(nodes["slow_end"][n - 1])
        ticks = slice(n * cfg.slow_window, (n + 1) * cfg.slow_window)
        want = slow_alone(net, z0, nodes["u"][ticks], G[ticks])
        for a, b in zip(opts.slow.core.history[n], want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_nonzero_interface_synthesizer_changes_fast_gradients():
    """Sanity of the property above: a non-zero M_if does inject a gradient."""
    nets = [make_net(), make_net()]
    randomise(nets[1].interface_synthesizer)
    d, state = data(nets[0].cfg.span), random_state(nets[0])
    hist = []
    for net in nets:
        opts = recorders(net)
        hierarchy_update(net, opts, d, state)
        hist.append(opts.fast.core.history[0])
    assert any(not torch.allclose(a, b) for a, b in zip(*hist))


# ---- 3. true gradients at every interface == full BPTT through the two-level graph --------


def oracle_spans(net: TwoTimescaleRNN, d: Window, state: HierarchyState):
    """Full BPTT of the whole graph: theta grads, loss, and one HierarchyOracle per span.

    The true gradient at a fast window end is taken at the clone the NEXT window reads (so the
    path through that step's message u is not counted twice), at a span end on the slow state
    (both the next tick and the next segment's m read it), at a message on the node that only
    the slow core reads. At the very end nothing reads the state: zeros.
    """
    cfg = net.cfg
    logits, nodes = reference_forward(net, d.x, state)
    loss = total_loss(net, logits, d)
    fast_in = [t for s in nodes["fast_in"] for t in s]
    slow_end = [t for z in nodes["slow_end"] for t in z]
    params = net.fast_parameters() + net.slow_parameters()
    grads = torch.autograd.grad(loss, [*params, *fast_in, *nodes["u"], *slow_end],
                                allow_unused=True, materialize_grads=True)
    theta, rest = grads[: len(params)], grads[len(params):]
    g_fast = [flatten_state(rest[i : i + 2]) for i in range(0, len(fast_in), 2)]
    g_fast.append(torch.zeros_like(g_fast[0]))  # after the last window
    g_u = torch.stack(rest[len(fast_in) : len(fast_in) + len(nodes["u"])])
    rest = rest[len(fast_in) + len(nodes["u"]):]
    g_slow = [flatten_state(rest[i : i + 2]) for i in range(0, len(rest), 2)]
    per_span = cfg.span // cfg.fast_window
    oracles = [
        HierarchyOracle(fast=g_fast[n * per_span : (n + 1) * per_span], slow=g_slow[n],
                        interface=g_u[n * cfg.slow_window : (n + 1) * cfg.slow_window])
        for n in range(len(g_slow))
    ]
    return theta, loss, oracles


@pytest.mark.parametrize("k,fast_window,slow_window", [(2, 4, 4), (2, 2, 3), (3, 6, 2)])
def test_oracle_equals_full_bptt(k, fast_window, slow_window):
    """Frozen parameters, the TRUE gradient injected at every interface (fast window ends,
    span ends, every message u_i; beta = beta_if = 1): the summed window gradients of both
    cores equal full BPTT through the whole two-level system run as one graph. The
    synthesizers are non-zero, so a synthetic gradient that leaks through would show."""
    net = make_net(k=k, fast_window=fast_window, slow_window=slow_window)
    for i, synth in enumerate(
            (net.fast_synthesizer, net.slow_synthesizer, net.interface_synthesizer)):
        randomise(synth, seed=20 + i)
    n_spans = 3
    d, state = data(n_spans * net.cfg.span), random_state(net)
    theta, full_loss, oracles = oracle_spans(net, d, state)
    assert oracles[0].interface.abs().sum() > 0 and oracles[0].slow.abs().sum() > 0

    opts, st, total = recorders(net), state, 0.0
    for n, span in enumerate(split_windows(d.x, d.y, net.cfg.span, d.mask)):
        res = hierarchy_update(net, opts, span, st, oracle=oracles[n])
        st, total = res.state, total + res.loss
    torch.testing.assert_close(total, full_loss.detach(), rtol=1e-12, atol=1e-12)
    got = opts.fast.core.total() + opts.slow.core.total()
    for a, b in zip(got, theta):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_truncation_without_oracle_differs_from_full_bptt():
    """Sanity of the property above: with zero synthesizers (the levels trained apart, plain
    TBPTT) the gradients are not those of full BPTT."""
    net = make_net()
    d, state = data(2 * net.cfg.span), random_state(net)
    theta, _, _ = oracle_spans(net, d, state)
    opts, st = recorders(net), state
    for span in split_windows(d.x, d.y, net.cfg.span, d.mask):
        st = hierarchy_update(net, opts, span, st).state
    got = opts.fast.core.total() + opts.slow.core.total()
    assert any(not torch.allclose(a, b) for a, b in zip(got, theta))
