"""The synthesizer side of DNI: what predicts the future gradient, and how it is fitted.

One module per concept (the window update itself is ``dnirnn.engine.update``; the targets
that need kept graphs or a second pass are ``dnirnn.engine.kept`` and ``dnirnn.engine.truth``):

- ``network``: ``Synthesizer``, a linear or mlp network fitted by an optimizer (Adam: the
  paper), optionally one map per boundary position;
- ``least_squares``: ``LeastSquaresSynthesizer``, linear maps refitted exactly each training
  step by ridge least squares with exponential forgetting (``fit: rls``);
- ``interface``: ``SyntheticGradient``, the synthesizer's narrow face to the window update
  (``pair``, ``observe``, ``end_step``): its prediction, its fit (step 5 for every method)
  and ``NormGuard``, which caps the synthetic gradient relative to its targets' running RMS.

``build_synthesizer`` makes the one a configuration names; ``DNIRNN.end_step`` closes a
training step (guard statistics, least-squares solve).
"""

from __future__ import annotations

from torch import nn

from dnirnn.options import SynthesizerOptions
from dnirnn.synthesizers.interface import NormGuard
from dnirnn.synthesizers.least_squares import LeastSquaresSynthesizer
from dnirnn.synthesizers.network import SYNTHESIZER_KINDS, Synthesizer

__all__ = ["SYNTHESIZER_KINDS", "LeastSquaresSynthesizer", "NormGuard", "Synthesizer",
           "build_synthesizer"]


def build_synthesizer(size: int, options: SynthesizerOptions = SynthesizerOptions(), *,
                      context_size: int = 0) -> nn.Module:
    """The synthesizer an options group names (``dnirnn.options.SynthesizerOptions``, which
    checks the fit against the kind), mapping a ``size``-wide input (and ``context_size``
    context features) to a ``size``-wide gradient: a ``LeastSquaresSynthesizer`` for
    ``fit: rls``, else a ``Synthesizer`` network of ``options.hidden`` units (None: ``size``),
    fitted by its own Adam."""
    o = options
    if o.fit == "rls":
        return LeastSquaresSynthesizer(size, context_size, o.positions, o.rls_forget,
                                       o.rls_ridge, o.rls_input, o.rls_share,
                                       o.rls_solve_every, o.rls_ridge_to)
    return Synthesizer(size, o.kind, size if o.hidden is None else o.hidden, o.layers,
                       context_size, o.positions)
