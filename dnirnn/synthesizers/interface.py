r"""The synthesizer as the window update sees it: three calls, one way through a window.

``SyntheticGradient`` joins the map ``M_phi`` (a ``Synthesizer`` or a
``LeastSquaresSynthesizer``) and its guard behind the calls a window update makes::

    pair(s_k, s_{k+1})      -> (M(s_k) for a fit at this window, g_{k+1})    one batched call
    observe(s_k, G_k)       -> fits M to the pair once the target G_k is ready: (L_SG, cos)
    end_step()              -> once per training step: guard statistics, least-squares solve

``g`` is always capped by the guard (the gradient the core receives); the guard sees every
target the synthesizer is fitted to. Whatever computes the targets (the window itself at
H = 1, ``dnirnn.engine.kept.KeptWindows`` for H > 1) calls ``observe`` when they are ready.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dnirnn.optim import Optimizers
from dnirnn.synthesizers.fitting import Prediction, fit_boundary, predict, predict_pair

AllReduce = Callable[[Tensor], None]


class SyntheticGradient:
    """Args:
        synthesizer: ``M_phi``.
        guard: a ``NormGuard`` or None.
    """

    __slots__ = ("synthesizer", "guard")

    def __init__(self, synthesizer: nn.Module, guard: nn.Module | None = None) -> None:
        self.synthesizer, self.guard = synthesizer, guard

    def cap(self, g: Tensor, position: int) -> Tensor:
        return g if self.guard is None else self.guard.cap(g, position)[0]

    @torch.no_grad()
    def __call__(self, state_flat: Tensor, context: Tensor | None = None,
                 position: int = 0) -> Tensor:
        """``g = M_phi(s)`` at boundary ``position``, capped: ``(B, S)``, no graph."""
        return self.cap(self.synthesizer(state_flat.detach(), context, position), position)

    def pair(
        self,
        start: Tensor | None, start_context: Tensor | None, start_position: int,
        end: Tensor | None, end_context: Tensor | None, end_position: int,
    ) -> tuple[Prediction | None, Tensor | None]:
        """``(prediction at s_k, g_{k+1})`` with the same phi, batched into one call where
        both are asked for (``start`` None: no fit at this window; ``end`` None: the episode
        ends at ``s_{k+1}``, ``g = 0``)."""
        if start is not None and end is not None:
            pred, g = predict_pair(self.synthesizer, start, start_context, start_position,
                                   end, end_context, end_position)
            return pred, self.cap(g, end_position)
        pred = None if start is None else predict(self.synthesizer, start, start_context,
                                                  start_position)
        g = None if end is None else self(end, end_context, end_position)
        return pred, g

    def observe(
        self, opts: Optimizers, state: Tensor, target: Tensor, context: Tensor | None = None,
        position: int = 0, prediction: Prediction | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Fits ``M_phi`` at ``position`` to ``(state, target)`` (``fit_boundary``: one
        optimizer step, or the pair joins the least-squares statistics); the guard sees the
        target. Returns ``(L_SG, cosine)`` of the prediction before the fit."""
        return fit_boundary(self.synthesizer, opts, state, target, context, position,
                            self.guard, prediction=prediction)

    def end_step(self, all_reduce: AllReduce | None = None) -> Tensor:
        """Once per training step: folds the step's targets into the guard and solves a
        least-squares synthesizer. Returns a 0-dim bool: the new synthesizer is finite."""
        if self.guard is not None:
            self.guard.end_step(all_reduce)
        return self.synthesizer.end_step(all_reduce)
