"""The multiply-accumulate counts behind the FLOP ceilings of ``scripts/bench.py``
(``flop_bound``) and ``scripts/profile_window.py`` (``flop_ceiling``): one cost model, per
sequence (column), matrix products only.

A FLOP-bound device runs a method at best at ``TBPTT's count / the method's count`` of
TBPTT's speed: these are the terms of both counts.
"""

from __future__ import annotations


def lstm_macs(steps: int, hidden: int, inputs: int) -> int:
    """An LSTM layer's forward over ``steps`` steps: ``steps 4H(I + H)`` (its backward is
    twice that, its parameter VJP alone twice that, a state-only product ``steps 4H H``)."""
    return steps * 4 * hidden * (inputs + hidden)


def readout_macs(steps: int, hidden: int, outputs: int) -> int:
    """The linear readout's forward over ``steps`` steps: ``steps H V``."""
    return steps * hidden * outputs


def least_squares_macs(state: int, boundaries: float, solves: float) -> float:
    """The least-squares synthesizer on a flat state of ``state`` = S features (n = S + 1
    inputs with the bias): per fitted boundary two predictions ``2 n S`` and the statistics
    ``n^2 + n S``; per solve (one position's maps, shared by the batch: pass the solves per
    sequence) a Cholesky factorisation ``n^3 / 3`` and the solve ``2 n^2 S``. The statistics
    and the solve are float64, counted twice (a float64 multiply-accumulate takes the time of
    two float32 ones on a FLOP-bound CPU: half the vector width)."""
    S, n = state, state + 1
    return boundaries * (2 * n * S + 2 * (n * n + n * S)) + solves * 2 * (n**3 / 3 + 2 * n * n * S)


def mlp_synthesizer_macs(state: int, hidden: int) -> int:
    """The paper's synthesizer (an mlp of one hidden layer of ``hidden`` units, fitted by Adam)
    per boundary: two forwards, the weight gradients and the hidden layer's input gradient,
    ``7 S h``."""
    return 7 * state * hidden


def linear_synthesizer_macs(state: int) -> int:
    """A linear synthesizer fitted by Adam, per boundary: ``3 S^2``."""
    return 3 * state * state
