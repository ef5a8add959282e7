"""Optimizer construction shared by every training path (engine, Lightning, hierarchy)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

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


@dataclass
class Optimizers:
    """The core's and the synthesizer's optimizers and clip norms: theta and phi never share
    either. ``synthesizer`` is None for a synthesizer fitted in closed form (``rls``)."""

    core: torch.optim.Optimizer
    synthesizer: torch.optim.Optimizer | None = None
    core_clip: float | None = None
    synthesizer_clip: float | None = None
    _core_params: list[Tensor] = field(default_factory=list, repr=False)
    _synth_params: list[Tensor] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._core_params = [p for g in self.core.param_groups for p in g["params"]]
        if self.synthesizer is not None:
            self._synth_params = [p for g in self.synthesizer.param_groups for p in g["params"]]
            shared = {id(p) for p in self._core_params} & {id(p) for p in self._synth_params}
            if shared:
                raise ValueError("the core and synthesizer optimizers must not share parameters")


def grad_norm(params: list[Tensor], clip: float | None) -> Tensor:
    """The gradient norm of ``params``, clipped to ``clip`` in place if given (no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device if params else None)
    if clip is None:
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    return torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
