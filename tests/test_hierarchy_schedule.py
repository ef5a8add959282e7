"""The two-timescale hierarchy's schedule, shapes and training (docs/design.md §1), float64,
tiny: the tick schedule, invalid schedules refused, no gradient injected at an episode's end,
smoke training, and the least-squares synthesizers solving their span's regressions. The
gradient equivalences are in tests/test_hierarchy.py."""


import copy

import pytest
import torch

from dnirnn.hierarchy import (
    HierarchyConfig,
    HierarchyOptimizers,
    SlowWindow,
    TwoTimescaleRNN,
    fast_window_gradients,
    hierarchy_update,
    slow_window_gradients,
)
from dnirnn.model import Window, flatten_state, split_windows
from dnirnn.optim import Optimizers
from dnirnn.options import SynthesizerOptions

from .conftest import mse_steps
from .hierarchy_common import (
    OUT,
    B,
    adam_optimizers,
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
                   interface_synthesizer=synth_options("linear"))
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
    rls = synth_options("linear", fit="rls", rls_ridge=0.05)
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
