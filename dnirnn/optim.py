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
    either. ``synthesizer`` is None for a synthesizer fitted in closed form (``rls``);
    ``core`` is None where a synthesizer has no core of its own (the hierarchy's ``M_if``)."""

    core: torch.optim.Optimizer | None
    synthesizer: torch.optim.Optimizer | None = None
    core_clip: float | None = None
    synthesizer_clip: float | None = None
    _core_params: list[Tensor] = field(default_factory=list, repr=False)
    _synth_params: list[Tensor] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._core_params = [] if self.core is None else [
            p for g in self.core.param_groups for p in g["params"]]
        if self.synthesizer is not None:
            self._synth_params = [p for g in self.synthesizer.param_groups for p in g["params"]]
            shared = {id(p) for p in self._core_params} & {id(p) for p in self._synth_params}
            if shared:
                raise ValueError("the core and synthesizer optimizers must not share parameters")


def grad_norm(params: list[Tensor], clip: float | None) -> Tensor:
    """The gradient norm of ``params``, clipped to ``clip`` in place if given (no host sync).

    The clip is ``torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)`` op for op
    (same kernels, same order: the same floats) without its per-call Python bookkeeping
    (device grouping, decorators), which cost about as much as the kernels on a small
    synthesizer. Parameters on several devices or dtypes take torch's own function.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device if params else None)
    if clip is None:
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if len({(g.device, g.dtype) for g in grads}) > 1:
        return torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
    with torch.no_grad():
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
        coef = torch.clamp(clip / (total + 1e-6), max=1.0)
        torch._foreach_mul_(grads, coef)
    return total


def zero_grad(params: list[Tensor]) -> None:
    """``optimizer.zero_grad(set_to_none=True)`` for the optimizer's parameter list, without
    its per-call profiling and bookkeeping (the same effect: every ``.grad`` is None)."""
    for p in params:
        p.grad = None


def adam_step(opt: torch.optim.Optimizer) -> None:
    """``opt.step()`` for a fused ``torch.optim.Adam``, without ``Optimizer.step``'s Python
    overhead (hooks, profiling, state look-ups per parameter: ~0.1 ms a call on CPU, as much
    as the fused kernel itself for a small synthesizer).

    It makes exactly the calls torch's fused path makes (``_foreach_add_`` on the step
    counts, then ``torch._fused_adam_`` with the group's hyper-parameters), so the update is
    the same to the bit. Anything else (not fused, amsgrad, state not yet created, tensor
    hyper-parameters, several devices, step hooks) takes ``opt.step()``.
    """
    if not isinstance(opt, torch.optim.Adam) or opt._optimizer_step_pre_hooks \
            or opt._optimizer_step_post_hooks:
        opt.step()
        return
    calls = []
    for group in opt.param_groups:
        if not group["fused"] or group["amsgrad"] or group.get("decoupled_weight_decay") \
                or group["capturable"] or group["differentiable"] \
                or isinstance(group["lr"], Tensor):
            opt.step()
            return
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        states = [opt.state.get(p) for p in params]
        if any(not st for st in states) or len({(p.device, p.dtype) for p in params}) > 1 \
                or any(p.grad.is_sparse for p in params):
            opt.step()
            return
        calls.append((group, params, states))
    with torch.no_grad():
        for group, params, states in calls:
            steps = [st["step"] for st in states]
            torch._foreach_add_(steps, 1)
            beta1, beta2 = group["betas"]
            torch._fused_adam_(
                params, [p.grad for p in params], [st["exp_avg"] for st in states],
                [st["exp_avg_sq"] for st in states], [], steps,
                amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2,
                weight_decay=group["weight_decay"], eps=group["eps"],
                maximize=group["maximize"], grad_scale=None, found_inf=None,
            )
