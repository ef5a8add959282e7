"""Recurrent state helpers.

An LSTM state is the pair ``s = (h, c)``, each ``(layers, batch, hidden)``. The synthesizer
sees and predicts the flat concatenation ``(batch, 2 * layers * hidden)``; ``flatten_state``
and ``unflatten_state`` convert between the two, and are exact inverses.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

State = tuple[Tensor, Tensor]  # (h, c), each (L, B, H)


def zero_state(
    layers: int,
    batch: int,
    hidden: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> State:
    """Zeros for ``(h, c)``, each ``(layers, batch, hidden)``."""
    h = torch.zeros(layers, batch, hidden, device=device, dtype=dtype)
    return h, torch.zeros_like(h)


def detach_state(state: State, *, requires_grad: bool = False) -> State:
    """Cuts the graph at ``state`` (the truncation point of TBPTT).

    With ``requires_grad=True`` the returned tensors are fresh leaves, so that after a
    backward pass their ``.grad`` holds the gradient of the window objective with respect
    to the state the window started in: the bootstrapped target of DNI.
    """
    return tuple(s.detach().requires_grad_(requires_grad) for s in state)  # type: ignore[return-value]


def flatten_state(state: State) -> Tensor:
    """``(h, c)`` each ``(L, B, H)``  ->  ``(B, 2*L*H)``, ordered ``[h_1..h_L, c_1..c_L]``.

    One copy (``cat`` of per-sample views; for one layer ``h[0]`` is already ``(B, H)``).
    """
    batch = state[0].shape[1]
    return torch.cat([s.transpose(0, 1).reshape(batch, -1) for s in state], dim=-1)


def unflatten_state(flat: Tensor, layers: int) -> State:
    """``(B, 2*L*H)``  ->  ``(h, c)`` each ``(L, B, H)``; the inverse of ``flatten_state``."""
    both = rearrange(flat, "b (two l h) -> two l b h", two=2, l=layers)
    return both[0], both[1]
