r"""Two-timescale hierarchy: a fast core and a slow core decoupled by synthetic gradients.

The method, its two surrogates and what each synthesizer regresses are docs/design.md §6. A
FAST core (multi-layer LSTM) ticks every step; a SLOW core ticks every ``k`` steps, reading the
fast core's top-layer hidden state (the bottom-up message ``u``, whose gradient the interface
synthesizer ``M_if`` predicts) and feeding its own top-layer hidden state ``m`` back to the
fast core, concatenated to its input, until the next tick. Both levels run the engine's one
window update (``dnirnn.engine.update``) and reach their synthesizers only through
``SyntheticGradient``; ``TwoTimescaleRNN.end_step`` closes a training step.

Schedule (here k = 2, fast window T_f = 4 steps, slow window T_s = 4 ticks: one *span* of
k * T_s = 8 fast steps is the data of one ``hierarchy_update``; steps counted from 1)::

    fast step t    |  1    2 |  3    4 |  5    6 |  7    8 ||  9   10 | 11 ...
    segment j      |    0    |    1    |    2    |    3    ||    4    |   5
    top-down input | m_0  m_0| m_1  m_1| m_2  m_2| m_3  m_3|| m_4  m_4| m_5
    slow tick i    |       1^|       2^|       3^|       4^||       5^|
    fast windows   | fast window 0     | fast window 1     || fast window 2 ...
    slow window    | span 0: segments 0..3, ticks 1..4     || span 1: segments 4..7 ...

- Segment j covers fast steps jk+1 .. (j+1)k: ONE ``nn.LSTM`` call with input
  ``[E x_t ; m_j]``. ``m_0`` is the top-layer h of the initial slow state ``z_0``.
- Tick i happens right after fast step ik (after segment i-1): ``u_i`` = top-layer h of the
  fast core after step ik; ``z_i = LSTM_s(u_i, z_{i-1})``; ``m_i`` = top-layer h of ``z_i``.
  The last tick of a span produces the ``m`` of the next span's first segment.
- Constraints: ``T_f % k == 0`` (segments never straddle fast windows, so ``G_j`` is complete
  after ONE fast window) and ``(k T_s) % T_f == 0`` (a span is whole fast windows).

Nothing here syncs with the host: every diagnostic is returned as a tensor.

Modules: ``model`` (the configuration, the carried state and the network), ``windows`` (one
fast window's and one slow window's forward and backward), ``update`` (the optimizers,
``hierarchy_update``, a whole span, and ``train_span``, a training step of spans).
Everything is re-exported here.
"""

from dnirnn.hierarchy.model import (
    HierarchyConfig,
    HierarchyState,
    TwoTimescaleRNN,
    init_forget_bias,
)
from dnirnn.hierarchy.update import (
    HierarchyOptimizers,
    HierarchyResult,
    hierarchy_update,
    train_span,
)
from dnirnn.hierarchy.windows import (
    FastWindowGradients,
    HierarchyOracle,
    SlowWindow,
    SlowWindowGradients,
    fast_window_gradients,
    slow_window_gradients,
)

__all__ = [
    "FastWindowGradients", "HierarchyConfig", "HierarchyOptimizers", "HierarchyOracle",
    "HierarchyResult", "HierarchyState", "SlowWindow", "SlowWindowGradients", "TwoTimescaleRNN",
    "fast_window_gradients", "hierarchy_update", "init_forget_bias",
    "slow_window_gradients", "train_span",
]
