"""Property tests of the DNI engine (docs/design.md §2, properties 1-4), float64, tiny models."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dnirnn.dni import DNIRNN, window_update
from dnirnn.engine.update import backward
from dnirnn.model import (
    CoreConfig,
    LSTMCore,
    Window,
    detach_state,
    flatten_state,
    split_windows,
    unflatten_state,
    zero_state,
)
from dnirnn.optim import Optimizers
from dnirnn.synthesizers import Synthesizer
from dnirnn.synthesizers.interface import synthesizer_regression

from .conftest import mse_steps
from .engine_common import IN, OUT, B, H, core_grads, data, make_net, random_state, randomise

pytestmark = pytest.mark.usefixtures("float64")  # exactness is checked in float64


# ---- Property 1: zero synthesizer == TBPTT -------------------------------------------------


def test_zero_synthesizer_equals_tbptt():
    x, y = data(4)
    state = None
    tb = make_net("tbptt")
    dni = make_net("dni")
    dni.core.load_state_dict(tb.core.state_dict())
    state = random_state(tb)
    assert torch.equal(dni.synthetic_gradient(state), torch.zeros(B, tb.core.state_size))
    tb.window_gradients(Window(x, y), state)
    dni.window_gradients(Window(x, y), state)
    for a, b in zip(core_grads(tb), core_grads(dni)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_zero_synthesizer_update_equals_tbptt_update():
    """A full window update (with optimizer steps) from a fresh DNI == a TBPTT update."""
    x, y = data(6)
    nets = {b: make_net(b) for b in ("tbptt", "dni")}
    nets["dni"].core.load_state_dict(nets["tbptt"].core.state_dict())
    state0 = random_state(nets["tbptt"])
    results = {}
    for name, net in nets.items():
        opts = Optimizers(
            torch.optim.SGD(net.core_parameters(), lr=0.1),
            torch.optim.SGD(net.synthesizer.parameters(), lr=0.1) if net.synthesizer else None,
        )
        results[name] = window_update(net, opts, Window(x, y), state0)
    for a, b in zip(nets["tbptt"].core.parameters(), nets["dni"].core.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(results["tbptt"].loss, results["dni"].loss, rtol=0, atol=0)


def test_sg_scale_zero_equals_tbptt():
    x, y = data(4)
    tb, dni = make_net("tbptt"), make_net("dni", scale=0.0)
    dni.core.load_state_dict(tb.core.state_dict())
    randomise(dni.synthesizer)
    state = random_state(tb)
    assert dni.synthetic_gradient(state).abs().sum() > 0
    tb.window_gradients(Window(x, y), state)
    dni.window_gradients(Window(x, y), state)
    for a, b in zip(core_grads(tb), core_grads(dni)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_episode_end_injects_no_gradient():
    """At an episode's final boundary g = 0, whatever the synthesizer says."""
    x, y = data(4)
    tb, dni = make_net("tbptt"), make_net("dni")
    dni.core.load_state_dict(tb.core.state_dict())
    randomise(dni.synthesizer)
    state = random_state(tb)
    tb.window_gradients(Window(x, y), state)
    wg = dni.window_gradients(Window(x, y), state, episode_end=True)
    assert wg.g_next is None
    for a, b in zip(core_grads(tb), core_grads(dni)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # ... whereas without the episode end the synthetic gradient does change them
    dni.zero_grad(set_to_none=True)
    dni.window_gradients(Window(x, y), state)
    assert any(not torch.allclose(a, b) for a, b in zip(core_grads(tb), core_grads(dni)))


# ---- Property 2: oracle == full BPTT --------------------------------------------------------


@pytest.mark.parametrize("layers,window", [(1, 3), (2, 2), (2, 5)])
def test_oracle_equals_full_bptt(layers, window):
    """Frozen parameters + the TRUE future gradient at every boundary: the sum over windows of
    the window gradients equals the gradient of full BPTT over the whole sequence."""
    n_steps = 12
    x, y = data(n_steps)
    windows = split_windows(x, y, window)
    net = make_net("oracle", layers=layers, oracle_windows=len(windows))
    state0 = random_state(net)

    # full BPTT
    net.zero_grad(set_to_none=True)
    logits, _, _ = net.core(x, state0)
    full_loss = net.task_loss(logits, Window(x, y))[0]
    full = torch.autograd.grad(full_loss, net.core_parameters())

    # window by window, no step in between, gradients accumulated
    net.zero_grad(set_to_none=True)
    state, total = state0, 0.0
    for k, w in enumerate(windows):
        wg = net.window_gradients(
            w, state, future=windows[k + 1 :], episode_end=(k == len(windows) - 1)
        )
        state, total = wg.state, total + wg.loss
    torch.testing.assert_close(total, full_loss.detach(), rtol=1e-12, atol=1e-12)
    for a, b in zip(core_grads(net), full):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_oracle_gradient_is_true_gradient_and_leaves_params_alone():
    x, y = data(6)
    windows = split_windows(x, y, 2)
    net = make_net("oracle", oracle_windows=2)
    s = random_state(net)
    g = net.oracle_gradient(s, windows[:2])
    assert all(p.grad is None for p in net.parameters())
    leaves = detach_state(s, requires_grad=True)
    logits, _, _ = net.core(torch.cat([w.x for w in windows[:2]]), leaves)
    loss = net.task_loss(logits, Window(x[:4], y[:4]))[0]
    torch.testing.assert_close(g, flatten_state(torch.autograd.grad(loss, leaves)))
    assert torch.equal(net.oracle_gradient(s, []), torch.zeros_like(g))


def test_truncated_oracle_differs_from_full_bptt():
    """Sanity of the property above: dropping the future (TBPTT) gives another gradient."""
    x, y = data(8)
    windows = split_windows(x, y, 2)
    net = make_net("tbptt")
    state0 = random_state(net)
    logits, _, _ = net.core(x, state0)
    full = torch.autograd.grad(net.task_loss(logits, Window(x, y))[0], net.core_parameters())
    net.zero_grad(set_to_none=True)
    state = state0
    for w in windows:
        state = net.window_gradients(w, state).state
    assert any(not torch.allclose(a, b) for a, b in zip(core_grads(net), full))


# ---- Property 3: the bootstrapped target ---------------------------------------------------


@pytest.mark.parametrize("boundary,sg_scale", [("dni", 1.0), ("dni", 0.6), ("dni_aux", 0.8)])
def test_bootstrapped_target_equals_autograd(boundary, sg_scale):
    """s_k.grad == torch.autograd.grad of the window surrogate w.r.t. s_k, computed apart."""
    x, y = data(5)
    net = make_net(boundary, scale=sg_scale, aux_weight=0.5)
    randomise(net.synthesizer)
    state = random_state(net)
    wg = net.window_gradients(Window(x, y), state)

    leaves = detach_state(state, requires_grad=True)
    logits, outputs, end = net.core(x, leaves)
    objective = net.task_loss(logits, Window(x, y))[0]
    g = net.synthesizer(flatten_state(end).detach())
    if boundary == "dni_aux":
        objective = objective + 0.5 * (net.aux(outputs) - g).pow(2).sum(-1).mean()
    surrogate = objective + sg_scale * (g * flatten_state(end)).sum()
    expected = flatten_state(torch.autograd.grad(surrogate, leaves))
    torch.testing.assert_close(wg.target, expected, rtol=1e-12, atol=1e-14)
    assert wg.target.abs().sum() > 0


def test_synthesizer_is_trained_on_the_bootstrapped_target():
    """Step 5: one synthesizer step moves M(s_k) towards delta_k, with its own optimizer."""
    x, y = data(4)
    net = make_net("dni")
    state = random_state(net)
    opts = Optimizers(
        torch.optim.SGD(net.core_parameters(), lr=0.0),
        torch.optim.SGD(net.synthesizer.parameters(), lr=0.5),
        synthesizer_clip=10.0,
    )
    res = window_update(net, opts, Window(x, y), state)
    target = net.window_gradients(Window(x, y), state).target  # lr 0: core unchanged
    pred = net.synthetic_gradient(state)
    assert res.sg_loss > 0
    assert (pred - target).pow(2).sum(-1).mean() < res.sg_loss
    with pytest.raises(ValueError, match="share"):
        Optimizers(torch.optim.SGD(net.parameters(), lr=0.1),
                   torch.optim.SGD(net.synthesizer.parameters(), lr=0.1))


def test_episode_start_does_not_train_synthesizer():
    x, y = data(4)
    net = make_net("dni")
    before = copy.deepcopy(net.synthesizer.state_dict())
    opts = Optimizers(torch.optim.SGD(net.core_parameters(), lr=0.1),
                      torch.optim.SGD(net.synthesizer.parameters(), lr=0.1))
    res = window_update(net, opts, Window(x, y), net.core.zero_state(B), episode_start=True)
    assert res.sg_loss == 0
    for k, v in net.synthesizer.state_dict().items():
        assert torch.equal(v, before[k])


# ---- shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("boundary", ["tbptt", "dni", "dni_aux", "oracle"])
def test_multilayer_shapes(layers, boundary):
    x, y = data(7)
    net = make_net(boundary, layers=layers)
    s = random_state(net)
    assert s[0].shape == (layers, B, H)
    flat = flatten_state(s)
    assert flat.shape == (B, 2 * layers * H) == (B, net.core.state_size)
    for a, b in zip(unflatten_state(flat, layers), s):
        assert torch.equal(a, b)
    assert torch.equal(flat[:, : layers * H], s[0].permute(1, 0, 2).reshape(B, -1))
    opts = Optimizers(
        torch.optim.Adam(net.core_parameters(), lr=1e-3),
        torch.optim.Adam(net.synthesizer.parameters(), lr=1e-3) if net.synthesizer else None,
        core_clip=1.0, synthesizer_clip=1.0,
    )
    windows = split_windows(x, y, 3)
    assert [w.x.shape[0] for w in windows] == [3, 3, 1]
    for k, w in enumerate(windows):
        res = window_update(net, opts, w, s, future=windows[k + 1:], episode_start=(k == 0),
                            episode_end=(k == len(windows) - 1))
        s = res.state
        assert s[0].shape == s[1].shape == (layers, B, H)
        assert not s[0].requires_grad
        for f in ("loss", "sg_loss", "aux_loss", "sg_norm", "target_norm", "sg_cos", "grad_norm"):
            v = getattr(res, f)
            assert v.shape == () and torch.isfinite(v), f
        assert bool(res.finite)
        assert res.count == w.x.shape[0] * B


def test_token_model_shapes_and_zero_state():
    torch.manual_seed(0)
    core = LSTMCore(CoreConfig(input_size=11, output_size=11, hidden_size=6, num_layers=2,
                               embed=True, embed_size=4))
    x = torch.randint(0, 11, (5, B))
    logits, outputs, (h, c) = core(x, core.zero_state(B))
    assert logits.shape == (5, B, 11) and outputs.shape == (5, B, 6)
    assert h.shape == c.shape == (2, B, 6)
    z = zero_state(2, B, 6)
    assert torch.equal(z[0], torch.zeros(2, B, 6)) and core.state_size == 24


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_synthesizer_starts_at_zero_and_takes_context(kind):
    s = Synthesizer(10, kind=kind, hidden_size=8, context_size=3)
    out = s(torch.randn(4, 10), torch.randn(4, 3))
    assert out.shape == (4, 10) and torch.equal(out, torch.zeros(4, 10))
    with pytest.raises(ValueError, match="context"):
        s(torch.randn(4, 10))
    with pytest.raises(ValueError, match="kind"):
        Synthesizer(10, kind="transformer")


def test_invalid_engine_arguments():
    core = LSTMCore(CoreConfig(input_size=IN, output_size=OUT, hidden_size=H))
    with pytest.raises(ValueError, match="boundary"):
        DNIRNN(core, mse_steps, 1.0, boundary="bptt")
    with pytest.raises(ValueError, match="synthesizer"):
        DNIRNN(core, mse_steps, 1.0, boundary="dni")
    with pytest.raises(ValueError, match="scale"):
        DNIRNN(core, mse_steps, 1.0, boundary="tbptt", targets={"scale": -1})
    with pytest.raises(ValueError, match="hidden_size"):
        CoreConfig(input_size=1, output_size=1, hidden_size=0)


# ---- Property 4: linear-model convergence (Czarnecki et al. 2017, Thm 1 / Cor 1) ------------


def _least_squares_problem(n=64, d=4, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    Y = X @ torch.randn(d, k, generator=g) + 0.3 * torch.randn(n, k, generator=g)
    W_star = torch.linalg.lstsq(X, Y).solution
    optimum = 0.5 * (X @ W_star - Y).pow(2).sum(-1).mean()
    return X, Y, optimum


@pytest.mark.parametrize("depth", [1, 2])
def test_linear_model_with_linear_synthesizer_converges_to_least_squares(depth):
    """A (deep) linear regressor whose first layer learns only from a linear synthesizer
    M(h, y) = hA + yB + c (trained on the true gradient, with its own optimizer) reaches the
    closed-form least-squares optimum, like backprop (Czarnecki et al. 2017, Thm 1, Table 2).

    depth 1: h = X W is the output; the loss gradient at h is replaced by M(h, y).
    depth 2: h = X W1 feeds y_hat = h W2; W1 learns from M(h, y), W2 from the true loss.
    """
    X, Y, optimum = _least_squares_problem()
    d, k = X.shape[1], Y.shape[1]
    torch.manual_seed(0)
    width = k if depth == 1 else 5
    W1 = nn.Parameter(0.1 * torch.randn(d, width))
    W2 = nn.Parameter(0.1 * torch.randn(width, k)) if depth == 2 else None
    synth = Synthesizer(width, kind="linear", context_size=k)  # M(h, y) = [h, y] A' + c
    core_params = [W1] + ([W2] if W2 is not None else [])
    opts = Optimizers(torch.optim.SGD(core_params, lr=0.05),
                      torch.optim.SGD(synth.parameters(), lr=0.05))
    n = X.shape[0]

    def loss_of(h):
        y_hat = h if W2 is None else h @ W2
        return 0.5 * (y_hat - Y).pow(2).sum(-1).mean()

    for _ in range(6000):
        opts.core.zero_grad(set_to_none=True)
        h = X @ W1  # the interface, (n, width)
        g = synth(h.detach(), Y).detach()  # synthetic d(per-example loss)/dh, (n, width)
        h_leaf = h.detach().requires_grad_(True)
        upper = loss_of(h_leaf)  # the layers above the interface (W2 gets its true gradient)
        upper.backward()
        true_grad = h_leaf.grad * n  # true d(per-example loss)/dh
        backward(torch.zeros(()), [(h, g / n)])  # W1 learns from the synthetic gradient
        opts.core.step()
        sg_loss, _ = synthesizer_regression(synth, h.detach(), true_grad, Y)
        opts.synthesizer.zero_grad(set_to_none=True)
        sg_loss.backward()
        opts.synthesizer.step()

    with torch.no_grad():
        final = loss_of(X @ W1)
    gap = (final - optimum).item()
    assert 0 <= gap <= 1e-4, f"loss gap to the least-squares optimum: {gap:.3g}"
    assert sg_loss.item() < 1e-6
