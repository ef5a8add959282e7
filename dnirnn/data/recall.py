r"""Delayed recall: a key shown once, a long gap of distractors, then queries for the key.

A synthetic long-range task for the two-timescale hierarchy (``dnirnn.hierarchy``); no
download, every batch drawn from a generator seeded by its position, so resume is exact.

Layout of one episode of ``N = length`` steps (time-major, tokens; ``S = num_symbols``,
``D = num_distractors``, ``Q = query_steps``; here N = 16, Q = 4; ``a`` the key, ``d``
distractors, ``?`` the query token, ``.`` an unscored target)::

    step t     1   2   3   4   5   6   7   8   9  10  11  12 | 13  14  15  16
    input      a   d   d   d   d   d   d   d   d   d   d   d |  ?   ?   ?   ?
    target     .   .   .   .   .   .   .   .   .   .   .   . |  a   a   a   a
    mask       0   0   0   0   0   0   0   0   0   0   0   0 |  1   1   1   1
               \___ the key, then N - Q - 1 distractors ___/   \_ Q queries _/

- Input tokens: the key ``a`` is one of ``S`` key tokens ``[0, S)``, each distractor one of
  ``D`` distractor tokens ``[S, S + D)``, the query token is ``S + D``; all uniform. The key
  is marked by its token range, so storing it needs no counting, only the will to keep it.
- The loss (cross-entropy over the ``S`` symbols) counts only at the last ``Q`` steps, all
  of whose targets are ``a``. Chance is ``log2(S)`` bits per scored step; solved is ~0.
- The dependency spans ``N - Q`` steps (key at step 1, first query at step ``N - Q + 1``).

Why one fast core with TBPTT window ``T < N - Q`` cannot solve it: the loss sits in the last
window(s); its gradient stops at the window start, at least ``N - Q - T + 1`` steps after the
key. Nothing trains the core to write ``a`` at step 1 and to keep it through the
distractors; the key must cross ``ceil((N - Q) / T) - 1`` truncation boundaries carried by
the state alone, with no gradient asking for it, while every distractor overwrites the
state. The best such a core learns is the prior: ``log2(S)`` bits. (DNI can in principle
carry the credit across boundaries by bootstrapping its synthesizer, one window per hop; it
has to learn that chain of predictions first: see results/hierarchy.md.)

Why the hierarchy can: with tick period ``k`` and slow window ``T_s`` ticks, one slow window
covers ``k T_s`` fast steps. With ``k T_s >= N`` (episodes aligned with slow windows), the
slow core is trained by TRUE backprop through the whole episode: the query loss reaches the
top-down inputs ``m_j`` of the last fast window exactly (``G_j``), and from there through
every slow tick back to the first tick, which read the fast state ``u_1`` right after the key
segment. So the slow core learns to latch ``a`` at tick 1 and to hold it over ``N/k`` ticks
(``k`` times fewer steps than the fast core would need), and the fast core learns, inside its
own window, to read ``a`` off ``m`` at the query steps. The interface synthesizer lets the
fast core learn to write ``a`` into ``u_1`` without waiting for the slow backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Recall", "RecallEpisode"]


@dataclass
class RecallEpisode:
    """A batch of episodes, time-major.

    Attributes:
        x: ``(N, B)`` input tokens in ``[0, S + D]`` (key, distractors, query token).
        y: ``(N, B)`` target symbols in ``[0, S)``; the key at the query steps, else 0.
        mask: ``(N, B)`` float, 1 at the ``Q`` query steps.
        key: ``(B,)`` the key of each episode.
    """

    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    key: torch.Tensor


@dataclass(frozen=True)
class Recall:
    """The episode generator (see the module docstring for the layout).

    Attributes:
        num_symbols: ``S``, the keys (and the output classes).
        length: ``N``, steps per episode.
        query_steps: ``Q``, scored steps at the end.
        num_distractors: ``D``, the distractor tokens (inputs have ``S + D + 1`` tokens).
    """

    num_symbols: int = 8
    length: int = 64
    query_steps: int = 8
    num_distractors: int = 8

    def __post_init__(self) -> None:
        if self.num_symbols < 2:
            raise ValueError(f"data.num_symbols must be >= 2, got {self.num_symbols}")
        if self.num_distractors < 1:
            raise ValueError(f"data.num_distractors must be >= 1, got {self.num_distractors}")
        if self.query_steps < 1:
            raise ValueError(f"data.query_steps must be >= 1, got {self.query_steps}")
        if self.length < self.query_steps + 2:
            raise ValueError(f"data.length ({self.length}) must be >= query_steps + 2 "
                             f"(= {self.query_steps + 2}): a key, a distractor, the queries")

    @property
    def query_token(self) -> int:
        return self.num_symbols + self.num_distractors

    @property
    def input_size(self) -> int:
        """Input vocabulary: ``S`` keys, ``D`` distractors, the query token."""
        return self.num_symbols + self.num_distractors + 1

    @property
    def output_size(self) -> int:
        return self.num_symbols

    @property
    def gap(self) -> int:
        """Steps from the key to the first query: ``N - Q``."""
        return self.length - self.query_steps

    @property
    def chance_bits(self) -> float:
        """Bits per scored step of the best predictor that ignores the key: ``log2(S)``."""
        return math.log2(self.num_symbols)

    def sample(self, batch: int, generator: torch.Generator | None = None) -> RecallEpisode:
        """``batch`` episodes from ``generator`` (the same generator state, the same batch)."""
        n, q, s, d = self.length, self.query_steps, self.num_symbols, self.num_distractors
        key = torch.randint(0, s, (batch,), generator=generator)
        x = torch.randint(s, s + d, (n, batch), generator=generator)  # distractors
        x[0] = key
        x[n - q :] = self.query_token
        y = torch.zeros(n, batch, dtype=torch.long)
        y[n - q :] = key
        mask = torch.zeros(n, batch)
        mask[n - q :] = 1.0
        return RecallEpisode(x, y, mask, key)
