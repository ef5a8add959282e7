"""The one window update (docs/design.md §1), which every method runs.

A method (the single core of ``dnirnn.dni``, the hierarchy's fast and slow windows, a layer
group of the decoupled stack) supplies its forward from the truncated state and says where it
injects gradients. Everything else is done here, the same way for all::

    start = truncate(s_k)                        1. the truncation
    ... the method's forward from start ...      2. (and 3: g_{k+1} through SyntheticGradient)
    norm  = update(opts, objective, pairs)       4. ONE backward; 6. clip and step theta
                                                    (= zero_grad, ``backward``, ``step``)
    fit(sg, opts, ready)                         5. fit M to each (state, target) pair ready

``pairs`` are the (tensor, incoming gradient) injections: ``<g_{k+1}, s_{k+1}>`` at the
window's end, the hierarchy's and the stack's interface gradients. The synthesizer is reached
only through its face, ``SyntheticGradient``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dnirnn.model import State, detach_state, flatten_state
from dnirnn.optim import Optimizers

if TYPE_CHECKING:  # (the synthesizer's face imports the lean optimizer calls below)
    from dnirnn.synthesizers.interface import Prediction, SyntheticGradient

Pairs = Sequence[tuple[Tensor, Tensor]]
"""``(tensor in the window's graph, its incoming gradient)``: the injections of a surrogate."""


@dataclass
class Ready:
    """A boundary whose target is ready: fit the synthesizer to ``(state, target)``."""

    state: Tensor
    target: Tensor
    context: Tensor | None = None
    position: int = 0


def truncate(state: State) -> State:
    """Step 1: ``s_k`` as fresh leaves; after the backward their ``.grad`` is ``delta_k``."""
    return detach_state(state, requires_grad=True)


def scaled(g: Tensor, scale: float) -> Tensor:
    """``scale * g``, detached (``x * 1.0 == x`` bit for bit: skipped at 1)."""
    return g.detach() if scale == 1.0 else g.detach() * scale


def state_pairs(end: State, g: Sequence[Tensor] | None, scale: float = 1.0) -> list:
    """The injection ``scale * <g, end>`` for a state and its gradient (none if ``g`` is None
    or ``scale`` is 0: TBPTT)."""
    if g is None or scale == 0.0:
        return []
    return [(e, scaled(gi, scale)) for e, gi in zip(end, g)]


def backward(objective: Tensor, pairs: Pairs = (), retain_graph: bool = False) -> None:
    """Step 4: ONE backward pass of ``objective + sum_i <g_i, t_i>`` over ``pairs`` (the
    ``g_i`` are injected as the incoming gradients of the ``t_i``). A window with neither a
    loss of its own nor an injection has nothing to backpropagate."""
    if not pairs:
        if objective.requires_grad:
            objective.backward(retain_graph=retain_graph)
        return
    outputs = [t for t, _ in pairs]
    incoming: list[Tensor | None] = [g for _, g in pairs]
    if objective.requires_grad:
        outputs, incoming = [objective, *outputs], [None, *incoming]
    torch.autograd.backward(outputs, incoming, retain_graph=retain_graph)


# ---- the optimizers' lean calls (the same floats as torch's, less Python) ------------

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


def step(opts: Optimizers) -> Tensor:
    """Step 6 for theta: clip and step the core's optimizer (the lean calls above). Returns
    theta's gradient norm before clipping."""
    norm = grad_norm(opts._core_params, opts.core_clip)
    adam_step(opts.core)
    return norm.detach()


def update(opts: Optimizers, objective: Tensor, pairs: Pairs = (), *,
           retain_graph: bool = False) -> Tensor:
    """Steps 4 and 6 for theta: ONE backward from zeroed gradients, then ``step``."""
    zero_grad(opts._core_params)
    backward(objective, pairs, retain_graph)
    return step(opts)


def bootstrap_target(start: State) -> Tensor:
    """``delta_k = dl_k/ds_k + beta (ds_{k+1}/ds_k)^T g_{k+1}``, read off the leaves' ``.grad``.

    Returns ``(B, S)``; zeros if no gradient reached the start state.
    """
    return flatten_state(tuple(torch.zeros_like(s) if s.grad is None else s.grad
                               for s in start))


def fit(sg: SyntheticGradient, opts: Optimizers, ready: Sequence[Ready], *,
        device: torch.device, prediction: Prediction | None = None
        ) -> tuple[Tensor, Tensor, int]:
    """Step 5 for each ready boundary, oldest first: ``(mean L_SG, mean cosine, count)``
    (zeros on ``device`` if none; a non-finite target makes L_SG non-finite).
    ``prediction``: M(s) of a single ready pair, made with the current phi (batched with
    ``g_{k+1}``)."""
    if not ready:
        zero = torch.zeros((), device=device)
        return zero, zero, 0
    losses, coses = [], []
    for r in ready:
        loss, cos = sg.observe(opts, r.state, r.target, r.context, r.position,
                               prediction=prediction if len(ready) == 1 else None)
        losses.append(loss)
        coses.append(cos)
    if len(ready) == 1:
        return losses[0], coses[0], 1
    return torch.stack(losses).mean(), torch.stack(coses).mean(), len(ready)

