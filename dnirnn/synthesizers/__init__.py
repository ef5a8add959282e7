"""The synthesizer side of DNI: what predicts the future gradient, and how it is fitted.

One module per concept (the window update itself is ``dnirnn.engine.update``; the targets
that need kept graphs or a second pass are ``dnirnn.engine.kept`` and ``dnirnn.engine.truth``):

- ``network``: ``Synthesizer``, a linear or mlp network fitted by an optimizer (Adam: the
  paper), optionally one map per boundary position;
- ``least_squares``: ``LeastSquaresSynthesizer``, linear maps refitted exactly each training
  step by ridge least squares with exponential forgetting (``synthesizer_fit: rls``);
- ``interface``: ``SyntheticGradient``, the synthesizer's narrow face to the window update
  (``pair``, ``observe``, ``end_step``): its prediction, its fit (step 5 for every method)
  and ``NormGuard``, which caps the synthetic gradient relative to its targets' running RMS.

``build_synthesizer`` makes the one a configuration names; ``DNIRNN.end_step`` closes a
training step (guard statistics, least-squares solve).
"""

from __future__ import annotations

from torch import nn

from dnirnn.synthesizers.interface import NormGuard
from dnirnn.synthesizers.least_squares import LeastSquaresSynthesizer
from dnirnn.synthesizers.network import SYNTHESIZER_KINDS, Synthesizer

FITS = ("adam", "rls")

__all__ = ["FITS", "SYNTHESIZER_KINDS", "LeastSquaresSynthesizer", "NormGuard", "Synthesizer",
           "build_synthesizer"]


def build_synthesizer(
    state_size: int,
    *,
    fit: str = "adam",
    kind: str = "mlp",
    hidden_size: int = 512,
    hidden_layers: int = 1,
    context_size: int = 0,
    positions: int = 1,
    forget: float = 0.8,
    ridge: float = 0.1,
    inputs: str = "state",
    share: float = 0.0,
) -> nn.Module:
    """A synthesizer fitted by ``fit``: "adam" (a network, ``kind`` linear or mlp) or "rls"
    (linear maps by least squares; ``kind`` must be "linear")."""
    if fit not in FITS:
        raise ValueError(f"synthesizer fit must be one of {FITS}, got {fit!r}")
    if fit == "rls":
        if kind != "linear":
            raise ValueError("synthesizer_fit 'rls' fits linear maps: set synthesizer: linear")
        return LeastSquaresSynthesizer(state_size, context_size, positions, forget, ridge,
                                       inputs, share)
    return Synthesizer(state_size, kind, hidden_size, hidden_layers, context_size, positions)

