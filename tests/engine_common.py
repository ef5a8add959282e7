"""The engine tests' shared pieces: a tiny net of each boundary, its data and state
(tests/test_engine.py, tests/test_fast_paths.py)."""

from __future__ import annotations

import torch
from torch import nn

from dnirnn.dni import DNIRNN
from dnirnn.model import CoreConfig, LSTMCore
from dnirnn.options import TargetOptions
from dnirnn.synthesizers import Synthesizer

from .conftest import mse_steps

B, IN, OUT, H = 3, 4, 2, 5


def make_net(boundary: str, layers: int = 2, seed: int = 0, **kw) -> DNIRNN:
    torch.manual_seed(seed)
    core = LSTMCore(CoreConfig(input_size=IN, output_size=OUT, hidden_size=H, num_layers=layers))
    synth = Synthesizer(core.state_size, kind="mlp", hidden_size=7) if boundary != "tbptt" else None
    return DNIRNN(core, mse_steps, loss_norm=B, boundary=boundary, synthesizer=synth,
                  targets=TargetOptions(**kw))


def randomise(module: nn.Module, seed: int = 1) -> None:
    """Makes a (zero-initialised) synthesizer non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


def data(n_steps: int, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_steps, B, IN, generator=g), torch.randn(n_steps, B, OUT, generator=g)


def random_state(net: DNIRNN, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    h, c = net.core.zero_state(B)
    return torch.randn(h.shape, generator=g), torch.randn(c.shape, generator=g)


def core_grads(net: DNIRNN) -> list[torch.Tensor]:
    return [p.grad.clone() for p in net.core_parameters()]
