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

import torch
from torch import Tensor

from dnirnn.optim import Optimizers, adam_step, grad_norm, zero_grad
from dnirnn.state import State, detach_state, flatten_state
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


def step(opts: Optimizers) -> Tensor:
    """Step 6 for theta: clip and step the core's optimizer (the engine's lean calls,
    ``dnirnn.optim``). Returns theta's gradient norm before clipping."""
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

