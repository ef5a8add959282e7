r"""When each layer group runs which window, and how old every message is when it is used.

Time is counted in *ticks*. At tick ``τ`` group ``g`` runs window ``k = τ - g·lag`` (nothing
while ``k < 0``: the pipeline fills once, at the start of training, and never drains: it
runs on across training steps, epochs and resumes). A tick of a group has two phases:

    A. take F(g-1 -> g, k) (groups above the first); forward window k; send F(g -> g+1, k)
       (its output sequence o^g_k, right after the forward); inject, backward, step θ_g, fit
       M_g; send B(g -> g-1, k) (the gradient at its input, G^{g-1}_k)
    B. take B(g+1 -> g, k - delay) (groups below the last) and fit I_g to (o^g_{k-delay}, it)

A message about window ``k`` is sent at ``tick(sender, k)``. With the default ``lag = 1,
delay = 2`` (tick = window index + group index)::

    tick                 0      1      2      3      4
    group 0 (A)          w0     w1     w2     w3     w4     sends F(w), then B: none
    group 0 (B)          .      .      fit0   fit1   fit2   I_0 on (o^0_j, G^0_j), j = k - 2
    group 1 (A)          .      w0     w1     w2     w3     takes F(w) sent one tick before;
                                                            sends B(w) = G^0_w

How old each message is when it is used (``ages``):

- **activation F(g -> g+1, k)**: used ``lag`` ticks after it was sent. It is the output of
  θ_g as it was for group g's own update of window k (θ_g after k updates), and group g + 1
  uses it in its update of window k (θ_{g+1} after k updates): the forward pass of window k
  through the whole stack is that of ONE model, version k of every group. No parameter is
  stale in the forward direction; only the wall clock lags.
- **gradient B(g+1 -> g, k)**, ``G^g_k``: computed by θ_{g+1} after k updates (and group
  g + 1's synthesizers), used ``delay - lag`` ticks after it was sent, at the end of group
  g's tick for window ``k + delay``: I_g is fitted to a pair whose input o^g_k came from θ_g
  ``delay + 1`` updates earlier, and the synthetic gradient ``ĝ_j`` that group g injects in
  window j comes from an I_g fitted on targets up to window ``j - delay - 1``.
- No group waits for another's backward pass of the same tick when ``delay >= 2·lag``:
  phase A takes an activation sent in phase A of the previous tick (right after a forward),
  phase B a gradient sent in the previous tick. A group waits only when it runs ahead of a
  neighbour by more than that (back-pressure), never for the gradient its own update needs.
- ``lag = 0, delay = 0`` is the locked order (no delay): every group runs window k in the
  same tick, bottom up, and I_g is fitted to G^g_k before window k + 1. With ``lag = 0``
  group g + 1 waits for group g's forward in the same tick, so it is for one process.

At the end of a training step, messages sent during the step that are used in a later step
(``in_flight``: the last ``lag`` activations of every cut, the last ``delay - lag``
gradients, and ``delay`` outputs waiting for their targets) are received and held by their
receivers, and travel in the checkpoint (``dnirnn.decoupled.pipeline``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ACTIVATION", "GRADIENT", "Schedule"]

ACTIVATION, GRADIENT = "F", "B"


@dataclass(frozen=True)
class Schedule:
    """Args:
        groups: G, the layer groups.
        lag: ticks between group g's run of a window and group g + 1's (0: the locked order,
            1: a pipeline).
        delay: windows between group g's use of ``ĝ_k`` and I_g's fit on ``G^g_k``
            (>= lag: the gradient is sent at group g + 1's tick).
    """

    groups: int
    lag: int = 1
    delay: int = 2

    def __post_init__(self) -> None:
        if self.groups < 1:
            raise ValueError(f"a schedule needs >= 1 layer group, got {self.groups}")
        if self.lag not in (0, 1):
            raise ValueError(f"schedule lag must be 0 (locked order) or 1 (pipeline), got "
                             f"{self.lag}")
        if self.delay < self.lag:
            raise ValueError(f"model.interface.delay: the gradient of window k leaves group "
                             f"g + 1 {self.lag} tick(s) after group g ran window k, so it can "
                             f"be fitted {self.lag} window(s) later at the earliest; set "
                             f"model.interface.delay >= {self.lag} (got {self.delay})")

    def window(self, group: int, tick: int) -> int:
        """The window ``group`` runs in phase A of ``tick`` (negative: none yet)."""
        return tick - group * self.lag

    def tick(self, group: int, window: int) -> int:
        """The tick at which ``group`` runs ``window``, and sends its messages about it."""
        return window + group * self.lag

    def fitted_window(self, group: int, tick: int) -> int:
        """The window whose interface target ``group`` fits in phase B of ``tick``."""
        return self.window(group, tick) - self.delay

    def used_at(self, kind: str, receiver: int, window: int) -> int:
        """The tick at which ``receiver`` uses the message of ``kind`` about ``window``."""
        if kind == ACTIVATION:
            return self.tick(receiver, window)
        return self.tick(receiver, window + self.delay)

    def ages(self) -> dict[str, dict[str, int]]:
        """How old each message is when used (see the module docstring): ``ticks`` since it
        was sent; for the activation, the updates of its sender and receiver before the use
        (both ``k`` for window ``k``: ``offset`` 0); for the gradient, the updates of the
        receiver since the window it is about (``delay + 1``)."""
        return {
            ACTIVATION: {"ticks": self.lag, "sender_offset": 0, "receiver_offset": 0},
            GRADIENT: {"ticks": self.delay - self.lag, "receiver_updates": self.delay + 1},
        }

    def in_flight(self) -> dict[str, int]:
        """Per cut, what waits across a training-step boundary (held in the checkpoint):
        activations received and not yet used, gradients received and not yet used, and the
        lower group's outputs waiting for their gradient (``lag`` windows not yet run above,
        plus ``delay - lag`` gradients on their way)."""
        return {ACTIVATION: self.lag, GRADIENT: self.delay - self.lag, "outputs": self.delay}
