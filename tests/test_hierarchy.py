"""Property tests of the two-timescale hierarchy (docs/design.md §1), float64, tiny.

The reference throughout is ``reference_forward``: the whole two-level system as ONE graph,
stepped one fast step at a time with the documented schedule written out independently
(the slow core ticks after fast steps k, 2k, ...; segment j reads m_j).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dnirnn.hierarchy import (
    HierarchyConfig,
    HierarchyOptimizers,
    HierarchyOracle,
    HierarchyState,
    SlowWindow,
    TwoTimescaleRNN,
    fast_window_gradients,
    hierarchy_update,
    slow_window_gradients,
)
from dnirnn.model import Window, detach_state, flatten_state, split_windows
from dnirnn.optim import Optimizers, adam
from dnirnn.options import SynthesizerOptions

from .conftest import mse_steps

B, IN, OUT = 3, 4, 2


def adam_optimizers(
    net: TwoTimescaleRNN,
    lr: float = 1e-3,
    synthesizer_lr: float | None = None,
    clip: float | None = None,
    synthesizer_clip: float | None = None,
) -> HierarchyOptimizers:
    """Adam for every part (``synthesizer_lr`` defaults to ``lr``); none for a synthesizer
    fitted by least squares."""
    slr = lr if synthesizer_lr is None else synthesizer_lr

    def opt(module: nn.Module | None, rate: float) -> torch.optim.Optimizer | None:
        return None if module is None or module.fit != "adam" else adam(module.parameters(), rate)

    return HierarchyOptimizers(
        fast=Optimizers(adam(net.fast_parameters(), lr),
                        opt(net.fast_synthesizer, slr), clip, synthesizer_clip),
        slow=Optimizers(adam(net.slow_parameters(), lr),
                        opt(net.slow_synthesizer, slr), clip, synthesizer_clip),
        interface=opt(net.interface_synthesizer, slr),
        interface_clip=synthesizer_clip,
    )



pytestmark = pytest.mark.usefixtures("float64")  # exactness is checked in float64


def synth(kind: str = "mlp", **kw) -> SynthesizerOptions:
    """A synthesizer's options as the tests build them (mlp width 6)."""
    return SynthesizerOptions(kind=kind, hidden=6, **kw)


def make_net(seed: int = 0, **kw) -> TwoTimescaleRNN:
    cfg = dict(input_size=IN, output_size=OUT, k=2, fast_hidden=5, fast_layers=2, slow_hidden=4,
               slow_layers=2, fast_window=4, slow_window=4, fast_synthesizer=synth(),
               slow_synthesizer=synth(), interface_synthesizer=synth())
    cfg.update(kw)
    torch.manual_seed(seed)
    return TwoTimescaleRNN(HierarchyConfig(**cfg), mse_steps, loss_norm=B)


def randomise(module: nn.Module | None, seed: int = 1) -> None:
    """Makes a (zero-initialised) synthesizer non-trivial."""
    assert module is not None
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


def data(n_steps: int, seed: int = 2) -> Window:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n_steps, B, IN, generator=g), torch.randn(n_steps, B, OUT, generator=g)
    return Window(x, y, (torch.rand(n_steps, B, generator=g) > 0.3).double())


def random_state(net: TwoTimescaleRNN, seed: int = 3) -> HierarchyState:
    g = torch.Generator().manual_seed(seed)
    z = net.zero_state(B)
    rnd = [tuple(torch.randn(t.shape, generator=g) for t in s) for s in (z.fast, z.slow)]
    return HierarchyState(*rnd)


class RecordGrads(torch.optim.Optimizer):
    """A 'step' records the gradients and leaves the parameters frozen."""

    def __init__(self, params):
        super().__init__(params, {})
        self.history: list[list[torch.Tensor]] = []

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        self.history.append(
            [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params])

    def total(self) -> list[torch.Tensor]:
        return [torch.stack(gs).sum(0) for gs in zip(*self.history)]


def recorders(net: TwoTimescaleRNN) -> HierarchyOptimizers:
    def rec(m):
        return None if m is None or m.fit != "adam" else RecordGrads(m.parameters())

    return HierarchyOptimizers(
        Optimizers(RecordGrads(net.fast_parameters()), rec(net.fast_synthesizer)),
        Optimizers(RecordGrads(net.slow_parameters()), rec(net.slow_synthesizer)),
        rec(net.interface_synthesizer),
    )


def reference_forward(net: TwoTimescaleRNN, x: torch.Tensor, state: HierarchyState):
    """The whole system as one graph, ONE fast step per nn.LSTM call.

    Returns the logits and the interface nodes: ``m`` (the top-down input of each segment),
    ``u`` (each tick's message, a node read only by the slow core), ``fast_in`` (the state
    each fast window after the first starts from, a clone read only by that window) and
    ``slow_end`` (the slow state at the end of each span).
    """
    cfg = net.cfg
    emb = net.encoder(x)
    s, z, outs = state.fast, state.slow, []
    nodes = {"m": [], "u": [], "fast_in": [], "slow_end": []}
    for t in range(x.shape[0]):  # t = 0..N-1 is fast step t+1
        if t > 0 and t % cfg.fast_window == 0:
            s = (s[0].clone(), s[1].clone())
            nodes["fast_in"].append(s)
        if t % cfg.k == 0:  # a segment starts: it reads the top h of the slow state
            nodes["m"].append(z[0][-1])
        out, s = net.fast(torch.cat([emb[t : t + 1], nodes["m"][-1][None]], -1), s)
        outs.append(out)
        if (t + 1) % cfg.k == 0:  # tick after fast steps k, 2k, ...
            u = s[0][-1]
            _, z = net.slow(u[None], z)
            nodes["u"].append(u)
            if (t + 1) % cfg.span == 0:
                nodes["slow_end"].append(z)
    return net.readout(torch.cat(outs)), nodes


def total_loss(net: TwoTimescaleRNN, logits: torch.Tensor, d: Window) -> torch.Tensor:
    return net.task_loss(logits, d)[0]


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
    m = recurrent and synth(recurrent)
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


# ---- 4. shapes and the tick schedule --------------------------------------------------------


@pytest.mark.parametrize("embed", [False, True])
def test_tick_schedule_and_shapes(embed):
    """The slow core ticks right after fast steps k, 2k, ..., reading the fast top h there;
    the top-down input is constant within a segment, is m_0 = top h of the initial slow state
    for the first segment and the last tick's top h after; the training forward, the eval
    forward and the one-step-at-a-time reference agree."""
    kw = dict(input_size=7, embed=True, embed_size=3) if embed else {}
    net = make_net(k=3, fast_window=6, slow_window=4, **kw)
    cfg = net.cfg
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 7, (cfg.span, B), generator=g) if embed else data(cfg.span).x
    d, state = Window(x, data(cfg.span).y), random_state(net)
    events = []
    net.fast.register_forward_hook(lambda mod, a, out: events.append(("fast", a[0], out[1])))
    net.slow.register_forward_hook(lambda mod, a, out: events.append(("slow", a[0], out[1])))

    opts = recorders(net)
    res = hierarchy_update(net, opts, d, state)
    steps, ticks, m_expected, h_top = 0, [], state.slow[0][-1], None
    for kind, inp, (h, _) in events:
        if kind == "fast":
            assert inp.shape[0] == cfg.k  # one nn.LSTM call per segment
            m_in = inp[..., -cfg.slow_hidden:]  # (k, B, H_s)
            assert torch.equal(m_in, m_expected.expand_as(m_in))
            steps, h_top = steps + inp.shape[0], h[-1]
        else:
            ticks.append(steps)
            assert torch.equal(inp[0], h_top)  # u_i = fast top h after step ik
            m_expected = h[-1]
    assert ticks == [cfg.k * i for i in range(1, cfg.slow_window + 1)]
    assert torch.equal(res.state.m, m_expected)

    ref_logits, _ = reference_forward(net, d.x, state)
    logits, end = net(d.x, state)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res.loss, total_loss(net, logits, d), rtol=1e-12, atol=1e-12)
    for a, b in zip((*res.state.fast, *res.state.slow), (*end.fast, *end.slow)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert res.state.fast[0].shape == res.state.fast[1].shape == (2, B, cfg.fast_hidden)
    assert res.state.slow[0].shape == res.state.slow[1].shape == (2, B, cfg.slow_hidden)
    assert not res.state.fast[0].requires_grad and not res.state.slow[0].requires_grad
    assert logits.shape == (cfg.span, B, OUT) and res.count == cfg.span * B
    for f in ("loss", "nats", "fast_sg_loss", "slow_sg_loss", "interface_sg_loss",
              "interface_sg_cos", "fast_grad_norm", "slow_grad_norm"):
        v = getattr(res, f)
        assert v.shape == () and torch.isfinite(v), f
    assert bool(res.finite)


def test_invalid_schedules_and_arguments():
    with pytest.raises(ValueError, match="model.window=4: .* multiple of k=3"):
        HierarchyConfig(input_size=1, output_size=1, k=3, fast_window=4)
    with pytest.raises(ValueError, match="model.slow_window=3: .*fast window boundary"):
        HierarchyConfig(input_size=1, output_size=1, k=2, fast_window=4, slow_window=3)
    with pytest.raises(ValueError, match="interface_synthesizer must be SynthesizerOptions"):
        HierarchyConfig(input_size=1, output_size=1, interface_synthesizer="linear")
    with pytest.raises(ValueError, match="sg_scale"):
        HierarchyConfig(input_size=1, output_size=1, sg_scale=-1.0)
    net = make_net()
    d, state = data(net.cfg.span + net.cfg.k), random_state(net)
    with pytest.raises(ValueError, match="span"):
        hierarchy_update(net, adam_optimizers(net), d, state)
    with pytest.raises(ValueError, match="multiple of k"):
        net(d.x[:-1], state)
    with pytest.raises(ValueError, match="share"):
        HierarchyOptimizers(
            Optimizers(torch.optim.SGD(net.parameters(), lr=0.1)),
            Optimizers(torch.optim.SGD(net.slow_parameters(), lr=0.1)))


def test_episode_end_injects_no_gradient_at_the_end():
    """At an episode's end g_f = g_s = 0 and the final message gets no interface gradient:
    the last fast window and the slow window see only true (here: absent) futures."""
    # one fast window and one tick, both at the very end: every synthetic gradient is there
    nets = [make_net(k=8, fast_window=8, slow_window=1) for _ in range(2)]
    for i, synth in enumerate(
            (nets[1].fast_synthesizer, nets[1].slow_synthesizer, nets[1].interface_synthesizer)):
        randomise(synth, seed=30 + i)
    d, state = data(nets[0].cfg.span), random_state(nets[0])
    hist = []
    for net in nets:
        opts = recorders(net)
        res = hierarchy_update(net, opts, d, state, episode_end=True)
        hist.append(opts.fast.core.history[0] + opts.slow.core.history[0])
        assert res.interface_sg_loss == 0  # the final message is no regression sample
    for a, b in zip(*hist):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---- 5. smoke training ----------------------------------------------------------------------


def sine_stream(n_steps: int, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-step prediction of two sines with a random phase per sequence: (N, B, 2) x2."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n_steps + 1.0)[:, None, None]
    signal = torch.sin(torch.tensor([0.3, 0.11]) * t + 6.3 * torch.rand(1, batch, 2, generator=g))
    return signal[:-1], signal[1:]


def test_smoke_training_run():
    """30 span updates of the whole system (Adam everywhere, carried state): every loss and
    gradient norm finite, the task loss falls, and the interface synthesizer, which starts at
    exactly 0, ends up pointing along the slow core's true gradient (positive cosine).
    Synthesizer learning rates are small: the targets are gradients of a normalised loss,
    of order 1e-3, and Adam's step does not shrink with them."""
    torch.manual_seed(0)
    cfg = HierarchyConfig(input_size=2, output_size=2, k=2, fast_hidden=16, slow_hidden=8,
                          fast_window=4, slow_window=4,
                          fast_synthesizer=SynthesizerOptions(hidden=32),
                          slow_synthesizer=SynthesizerOptions(hidden=32),
                          interface_synthesizer=SynthesizerOptions(kind="linear", hidden=32))
    net = TwoTimescaleRNN(cfg, mse_steps, loss_norm=8)
    opts = adam_optimizers(net, lr=3e-3, synthesizer_lr=3e-4, clip=1.0)
    x, y = sine_stream(30 * cfg.span, 8)
    state, task, cos = net.zero_state(8), [], []
    for n, span in enumerate(split_windows(x, y, cfg.span)):
        res = hierarchy_update(net, opts, span, state, episode_start=n == 0)
        state = res.state
        assert bool(res.finite)
        for f in ("fast_sg_loss", "slow_sg_loss", "interface_sg_loss", "slow_grad_norm"):
            assert torch.isfinite(getattr(res, f)), f
        task.append((res.nats / res.count).item())
        cos.append(res.interface_sg_cos.item())
    assert cos[0] == 0.0
    assert sum(task[-5:]) < 0.5 * sum(task[:5]), task
    assert sum(cos[-10:]) / 10 > 0.2, cos


def test_interface_synthesizer_loss_goes_down():
    """Frozen cores, no recurrent synthesizers, beta_if = 0 (M_if trained but not injected)
    and the same span every update: M_if's targets are fixed, so its regression loss falls
    at every update from its initial value (the zero predictor's) and its cosine rises."""
    net = make_net(fast_synthesizer=None, slow_synthesizer=None, interface_sg_scale=0.0,
                   interface_synthesizer=synth("linear"))
    opts = recorders(net)
    # SGD: on this fixed quadratic it descends for any lr < 2 / lambda_max (|u| < 1), whatever
    # the (tiny) scale of the targets
    opts.interface = torch.optim.SGD(net.interface_synthesizer.parameters(), lr=0.2)
    d, state = data(net.cfg.span), random_state(net)
    losses, cos = [], []
    for _ in range(20):
        res = hierarchy_update(net, opts, d, state)
        losses.append(res.interface_sg_loss.item())
        cos.append(res.interface_sg_cos.item())
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.8 * losses[0] and cos[0] == 0.0 and cos[-1] > 0.3, (losses, cos)


# ---- least-squares synthesizers (fit: rls) ---------------------------------------------

def ridge_solution(inputs: torch.Tensor, target: torch.Tensor, ridge: float) -> torch.Tensor:
    """``argmin_W ||[x; 1] W - target||^2 + r ||W||^2``, ``r = ridge * mean(diag A)``."""
    x = torch.cat([inputs, torch.ones(len(inputs), 1)], -1)
    a = x.T @ x
    return torch.linalg.solve(a + ridge * a.diagonal().mean() * torch.eye(len(a)), x.T @ target)


def test_least_squares_synthesizers_solve_the_regressions_of_their_span():
    """With ``fit = rls`` the span's fits only collect pairs (every synthesizer is
    still the zero map after ``hierarchy_update``); ``end_step`` then leaves M_f, M_s and M_if
    at the closed-form ridge solutions of exactly the pairs the window functions give:
    (s_w, delta_w) for every fast window, (z_{i0}, delta_s), and (u_i, dL/du_i)."""
    rls = synth("linear", fit="rls", rls_ridge=0.05)
    net = make_net(fast_synthesizer=rls, slow_synthesizer=rls, interface_synthesizer=rls)
    d, state = data(net.cfg.span), random_state(net)

    twin, fast_in, fast_target = copy.deepcopy(net), [], []
    slow, s = SlowWindow.open(state.slow), state.fast
    for window in split_windows(d.x, d.y, net.cfg.fast_window, d.mask):
        fw = fast_window_gradients(twin, window, s, slow)
        fast_in.append(flatten_state(fw.start).detach())
        fast_target.append(fw.target)
        s = fw.state
    sw = slow_window_gradients(twin, slow)

    opts = recorders(net)  # frozen cores: the engine's windows see the twin's parameters
    assert opts.fast.synthesizer is None and opts.interface is None  # no optimizer to fit
    hierarchy_update(net, opts, d, state)
    assert all(m.W.abs().sum() == 0 for m in net.synthesizers())  # solved once per step
    assert bool(net.end_step())
    pairs = {
        "fast": (torch.cat(fast_in), torch.cat(fast_target)),
        "slow": (flatten_state(state.slow), sw.target),
        "interface": (sw.messages.flatten(0, 1), sw.message_grads.flatten(0, 1)),
    }
    for name, (inputs, target) in pairs.items():
        fitted = getattr(net, f"{name}_synthesizer")
        assert target.abs().sum() > 0, name
        torch.testing.assert_close(fitted.W[0], ridge_solution(inputs, target, 0.05),
                                   rtol=1e-10, atol=1e-12, msg=name)
