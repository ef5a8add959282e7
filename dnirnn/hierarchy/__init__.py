r"""Two-timescale hierarchy: a fast core and a slow core decoupled by synthetic gradients.

docs/design.md §1, "Two timescales". A FAST core (multi-layer LSTM) ticks every step; a
SLOW core (multi-layer LSTM) ticks every ``k`` steps. At a tick the slow core reads the fast core's
top-layer hidden state (bottom-up message ``u``); its new top-layer hidden state ``m`` is
fed back to the fast core, concatenated to its input, at every step until the next tick
(top-down). The bottom-up message is the fast top hidden state itself, ``u_i = h_f``: the
slow LSTM's input weights play the part of ``W_up`` and, being slow parameters, they get
TRUE gradients.

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

Updates. Fast window w runs from ``s_w`` to ``s_{w+1}`` over segments j; slow window (span)
n runs from ``z_{i0}`` to ``z_{i0+T_s}`` over segments i0..i0+T_s-1 and ticks i0+1..i0+T_s.
Both levels follow the DNI window update of ``dnirnn.dni`` (one forward, ONE backward)::

    fast window (leaves s_w and m̄_j = detach(m_j); M_f, M_if give g_f, ĝ_i, detached):
        surrogate_f = l_w + beta <g_f, s_{w+1}> + beta_if sum_{ticks i in w} <ĝ_i, u_i>
            g_f = M_f(s_{w+1}),  ĝ_i = M_if(u_i)              (beta = sg_scale,
                                                               beta_if = interface_sg_scale)
        theta_f.grad   = d surrogate_f / d theta_f     -> step theta_f NOW (update-unlocked)
        s_w.grad       = delta_w                        -> L_f  = ||M_f(s_w) - delta_w||^2
        m̄_j.grad      = G_j  (summed over the k steps that read m_j), kept for the slow level

    slow window (leaves z_{i0} and ū_i = detach(u_i); g_s = M_s(z_{i0+T_s}), detached):
        surrogate_s = sum_{j=i0}^{i0+T_s-1} <G_j, m_j> + beta <g_s, z_{i0+T_s}>
        theta_s.grad = d surrogate_s / d theta_s     -> step theta_s
        z_{i0}.grad  = delta_s                         -> L_s  = ||M_s(z_{i0}) - delta_s||^2
        ū_i.grad     = d surrogate_s / d u_i           -> L_if = mean_i ||M_if(u_i) - ū_i.grad||^2
                       (exact through the slow core: the slow level's TRUE gradient on u_i)

``m_{i0}`` is the top-layer h of the start leaf ``z_{i0}``, so ``G_{i0}`` reaches only the slow
bootstrapped target delta_s (the previous span saw it through ``g_s``), and ``m_{i0+T_s}`` is
part of ``z_{i0+T_s}``, whose future gradient ``g_s`` predicts. So no G crosses spans: the
state carried between spans is just ``(s_f, z)``. Since G_j is the gradient of the fast
*surrogate*, the slow level learns from the fast level's synthetic gradients too (bootstrap).

With every synthetic gradient replaced by the true one (``HierarchyOracle``, beta = beta_if = 1)
and parameters frozen, the summed window gradients equal full BPTT through the whole
two-level graph; with ``M_if = 0`` the fast core trains exactly as if ``m`` were a constant
input. Synthesizers each have their own optimizer and clip norm, never a core's, or are
fitted by least squares (``synthesizer_fit: rls``, ``dnirnn.synthesizers``): each fit is the
DNI engine's own ``fit_boundary``, and ``TwoTimescaleRNN.end_step`` closes a training step.

Nothing here syncs with the host: every diagnostic is returned as a tensor.

Modules: ``model`` (the configuration, the carried state and the network), ``windows`` (one
fast window's and one slow window's forward and backward), ``update`` (the optimizers and
``hierarchy_update``, a whole span). Everything is re-exported here.
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
    adam_optimizers,
    hierarchy_update,
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
    "adam_optimizers", "fast_window_gradients", "hierarchy_update", "init_forget_bias",
    "slow_window_gradients",
]
