"""Optimizer construction shared by every training path (engine, Lightning, hierarchy)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def adam(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam with the fastest implementation the parameters allow.

    The fused kernel (one kernel per parameter on CPU and CUDA) replaces the default
    per-parameter Python loop on CPU, which costs more than a small core's whole backward
    (``scripts/bench.py``). Same update rule; the float rounding differs slightly.
    """
    params = list(params)
    fused = bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.dtype in _FUSED_DTYPES for p in params
    ) and len({p.device for p in params}) == 1
    return torch.optim.Adam(params, lr=lr, fused=fused or None)
