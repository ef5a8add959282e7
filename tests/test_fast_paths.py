"""The fast paths equal the plain ones (scripts/bench.py measures them): the synthesizer's
manual backward against autograd, the lean Adam step and clip against torch's, and the window
update against a reference written out with autograd; float64, tiny models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dnirnn.dni import DNIRNN, window_update
from dnirnn.model import CoreConfig, LSTMCore, flatten_state, split_windows, zero_state
from dnirnn.optim import Optimizers
from dnirnn.synthesizers import Synthesizer
from dnirnn.synthesizers.interface import synthesizer_regression

from .conftest import mse_steps
from .engine_common import IN, OUT, H, randomise

pytestmark = pytest.mark.usefixtures("float64")  # exactness is checked in float64


# ---- the fast paths equal the plain ones (scripts/bench.py) --------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind,layers,context", [("mlp", 1, 0), ("mlp", 2, 3), ("linear", 1, 0)])
def test_manual_synthesizer_backward_equals_autograd(dtype, kind, layers, context):
    """fit_boundary's gradient of L_SG (no graph) is autograd's, bit for bit."""
    from dnirnn.synthesizers.interface import _manual_backward, predict

    torch.manual_seed(0)
    synth = Synthesizer(10, kind, 9, layers, context).to(dtype)
    randomise(synth)
    s, d = torch.randn(6, 10, dtype=dtype), torch.randn(6, 10, dtype=dtype)
    ctx = torch.randn(6, context, dtype=dtype) if context else None
    synthesizer_regression(synth, s, d, ctx)[0].backward()
    for p, g in zip(synth.parameters(), _manual_backward(predict(synth, s, ctx), d)):
        assert torch.equal(p.grad, g)


def test_lean_adam_step_and_clip_equal_torch():
    """engine.update.adam_step / grad_norm make the same floats as Adam.step /
    clip_grad_norm_."""
    from dnirnn.engine.update import adam_step, grad_norm
    from dnirnn.optim import adam

    torch.manual_seed(0)
    a = nn.Linear(7, 5).float()
    b = copy.deepcopy(a)
    oa, ob = adam(a.parameters(), 1e-2), adam(b.parameters(), 1e-2)
    for _ in range(4):
        x = torch.randn(3, 7, dtype=torch.float32)
        for m in (a, b):
            m.zero_grad(set_to_none=True)
            (m(x) ** 2).sum().mul(10.0).backward()
        na = torch.nn.utils.clip_grad_norm_(list(a.parameters()), 0.5, foreach=True)
        nb = grad_norm(list(b.parameters()), 0.5)
        assert torch.equal(na, nb)
        oa.step()
        adam_step(ob)  # (the first call creates the state through opt.step())
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)
    assert oa.state_dict()["state"][0]["step"] == ob.state_dict()["state"][0]["step"] == 4


def _reference_window_update(net, opts, window, state, episode_start=False):
    """window_update as it was before the fast paths: autograd regression at s_k AFTER the
    core step, torch's clip and Adam.step, the synthesizer called twice."""
    opts.core.zero_grad(set_to_none=True)
    wg = net.window_gradients(window, state)
    torch.nn.utils.clip_grad_norm_(opts._core_params, opts.core_clip, foreach=True)
    opts.core.step()
    target = wg.target
    if not episode_start:
        loss, _ = synthesizer_regression(net.synthesizer, flatten_state(wg.start), target)
        opts.synthesizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(opts._synth_params, opts.synthesizer_clip, foreach=True)
        opts.synthesizer.step()
    return wg.state


@pytest.mark.parametrize("batch", [3, 8])
def test_window_update_equals_reference(batch):
    """Several DNI window updates (Adam, clips) equal the plain reference: the batched
    synthesizer call, manual backward and lean optimizer step change no maths (float64)."""
    from dnirnn.optim import adam

    torch.manual_seed(0)
    core = LSTMCore(CoreConfig(input_size=IN, output_size=OUT, hidden_size=H, num_layers=2))
    synth = Synthesizer(core.state_size, kind="mlp", hidden_size=7)
    nets = [DNIRNN(core, mse_steps, loss_norm=batch, synthesizer=synth)]
    nets.append(copy.deepcopy(nets[0]))
    randomise(nets[0].synthesizer)
    nets[1].synthesizer.load_state_dict(nets[0].synthesizer.state_dict())
    opts = [Optimizers(adam(n.core_parameters(), 1e-2), adam(n.synthesizer.parameters(), 1e-2),
                       0.5, 0.05) for n in nets]
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(12, batch, IN, generator=g), torch.randn(12, batch, OUT, generator=g)
    states = [zero_state(2, batch, H), zero_state(2, batch, H)]
    for k, w in enumerate(split_windows(x, y, 3)):
        states[0] = window_update(nets[0], opts[0], w, states[0], episode_start=k == 0).state
        states[1] = _reference_window_update(nets[1], opts[1], w, states[1], k == 0)
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
