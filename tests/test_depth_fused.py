"""TBPTT(T, K·T) in float32 on the CPU, where its kept windows run oneDNN's fused LSTM (no
state-only VJPs to make: ``KeptWindows._kernels``): the kept graphs still give the definition,
each walked by several VJPs."""

from __future__ import annotations

import pytest
import torch

from dnirnn.model import split_windows

from .engine_common import data, random_state
from .test_depth import episode, make, tbptt_by_recomputation


@pytest.mark.parametrize("depth, window", [(2, 2), (4, 2)])
def test_fused_kept_graphs_give_tbptt_k1_k2(depth, window):
    assert torch.get_default_dtype() == torch.float32 and torch.backends.mkldnn.is_available()
    x, y = data(12)
    windows = split_windows(x, y, window)
    net = make("tbptt", depth)
    s0 = random_state(net)
    got = episode(net, windows, s0)
    want = tbptt_by_recomputation(net, windows, s0, depth)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
