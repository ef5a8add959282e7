r"""The one true future gradient (docs/design.md §1, "The true future gradient").

``future_gradients`` evaluates the λ-return of design §1 "Targets" at every window start of a
span with frozen parameters, from ONE forward and ONE backward pass: at each internal
boundary a tensor hook reads the gradient arriving at ``s_k`` (that is ``G_k``) and passes
``beta [(1 - λ) M(s_k) + λ G_k]`` on into the window before. Parameter ``.grad`` is untouched.
With its defaults (λ = 1, beta = 1, no synthesizer, the episode ending with the span) ``G_k``
is the TRUE gradient of the rest of the span's loss: the ``oracle`` boundary, the diagnostics
and the probes use it so; its other settings are the reference the kept windows' chains are
tested against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dnirnn.model import State, detach_state, flatten_state, unflatten_state

if TYPE_CHECKING:
    from dnirnn.dni import DNIRNN

Predict = Callable[[Tensor, int], Tensor]
"""``predict(s_flat (B, S), k) -> M_k(s_k) (B, S)``, no graph: the synthesizer at boundary k."""


@dataclass
class SpanTargets:
    """The boundaries of a span and their targets, all detached ``(B, S)``.

    ``states[k]`` is ``s_k`` and ``targets[k]`` is ``G_k``, for k = 0..K-1 (the start of each
    window); ``predictions[k]`` is ``M_k(s_k)`` as used in the pass (zeros at k = 0).
    """

    states: list[Tensor]
    targets: list[Tensor]
    predictions: list[Tensor]


def future_gradients(
    net: DNIRNN,
    windows: Sequence,
    state: State,
    *,
    lam: float = 1.0,
    beta: float = 1.0,
    predict: Predict | None = None,
    episode_end: bool = True,
) -> SpanTargets:
    """``G_k`` for every window start k of ``windows`` (see the module docstring); with the
    defaults, the true gradient of the rest of the span's loss at each boundary.

    Args:
        net: the engine (its core and its objective); its parameters are not stepped and
            their ``.grad`` is not touched.
        windows: the span's windows, in order.
        state: ``s_0``.
        lam: λ in [0, 1].
        beta: the synthetic gradient's weight (``sg_scale``).
        predict: the synthesizer (None: zero).
        episode_end: the episode ends at ``s_K`` (``G_K = 0``); else ``G_K = M(s_K)``.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    layers = net.core.cfg.num_layers

    def m(s: State, k: int) -> Tensor:
        flat = flatten_state(s).detach()
        return torch.zeros_like(flat) if predict is None else predict(flat, k).detach()

    recorded: dict[int, list[Tensor | None]] = {}

    def mixer(k: int, part: int, m_part: Tensor):
        def hook(grad: Tensor) -> Tensor:
            recorded[k][part] = grad.detach()
            return beta * (lam * grad + (1.0 - lam) * m_part)
        return hook

    with torch.enable_grad():
        start = detach_state(state, requires_grad=True)
        s, total = start, None
        states = [flatten_state(start).detach()]
        preds = [torch.zeros_like(states[0])]
        for k, w in enumerate(windows):
            if k > 0:  # boundary k: s is window k-1's end state, in the graph
                pred = m(s, k)
                states.append(flatten_state(s).detach())
                preds.append(pred)
                recorded[k] = [None, None]
                for part, (t, mp) in enumerate(zip(s, unflatten_state(pred, layers))):
                    t.register_hook(mixer(k, part, mp))
            logits, _, s = net.core(w.x, s)
            loss = net.task_loss(logits, w)[0]
            total = loss if total is None else total + loss
        outputs, incoming = [total], [None]
        if not episode_end and beta != 0.0:  # bootstrap at the span's end
            g_end = unflatten_state(beta * m(s, len(windows)), layers)
            outputs, incoming = [total, *s], [None, *g_end]
        grads = torch.autograd.grad(outputs, start, incoming, allow_unused=True)
    targets = [_flat(grads, start)]
    for k in range(1, len(windows)):
        pair = recorded[k]
        targets.append(_flat(tuple(pair), tuple(unflatten_state(states[k], layers))))
    return SpanTargets(states, targets, preds)


def _flat(grads, like) -> Tensor:
    return flatten_state(tuple(torch.zeros_like(l) if g is None else g
                               for g, l in zip(grads, like)))
