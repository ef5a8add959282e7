r"""A guard on the synthetic gradient's size (``sg_guard``).

A synthesizer extrapolating off its data (a new curriculum level, a core that moved) can
predict a gradient many times larger than any target it was fitted to, and the core then
follows a large wrong direction. The guard keeps, per boundary position ``p``, a running
mean of the targets' squared per-sample norm (an exponential average over training steps,
bias-corrected) and caps each sample's synthetic gradient to ``factor`` times its root::

    rms_p = sqrt(EMA_m ||delta_b||^2),      g_b <- g_b * min(1, factor * rms_p / ||g_b||)

``observe`` collects a step's targets; ``end_step`` folds them into the average (summed over
data-parallel ranks first, so every rank caps alike). For an episode this is the same as
folding them in at once: map k's target arrives after its last use in the step.

Before any target was seen at ``p``, ``rms_p = 0``: no synthetic gradient is injected there
(a fresh synthesizer predicts 0 anyway). Everything stays on the device (no host sync);
the statistics are buffers, so they are checkpointed and resume is exact.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class NormGuard(nn.Module):
    """Args:
        positions: P, as the synthesizer's (position ``k`` uses slot ``min(k, P - 1)``).
        factor: the cap, in multiples of the running target RMS norm (> 0).
        momentum: m of the exponential average, per training step.
    """

    def __init__(self, positions: int = 1, factor: float = 2.0, momentum: float = 0.9) -> None:
        super().__init__()
        if not factor > 0:
            raise ValueError(f"sg_guard must be > 0 (or null for no guard), got {factor}")
        if not 0 <= momentum < 1:
            raise ValueError(f"guard momentum must be in [0, 1), got {momentum}")
        self.positions, self.factor, self.momentum = positions, float(factor), float(momentum)
        self.register_buffer("mean_sq", torch.zeros(positions))  # EMA of ||delta_b||^2
        self.register_buffer("weight", torch.zeros(positions))  # EMA of 1 (bias correction)
        self.register_buffer("pending", torch.zeros(2, positions), persistent=False)  # sum, n

    def _slot(self, position: int) -> int:
        return min(position, self.positions - 1)

    @torch.no_grad()
    def observe(self, target: Tensor, position: int = 0) -> None:
        """Collects the targets ``(B, S)`` seen at ``position`` in this step."""
        p = self._slot(position)
        self.pending[0, p] += target.detach().to(self.pending.dtype).pow(2).sum()
        self.pending[1, p] += target.shape[0]

    @torch.no_grad()
    def end_step(self, all_reduce=None) -> None:
        """Folds the step's targets into the running averages of the positions seen."""
        if all_reduce is not None:
            all_reduce(self.pending)
        total, count = self.pending
        seen, m = count > 0, self.momentum
        mean = total / count.clamp_min(1)
        self.mean_sq.copy_(torch.where(seen, m * self.mean_sq + (1 - m) * mean, self.mean_sq))
        self.weight.copy_(torch.where(seen, m * self.weight + (1 - m), self.weight))
        self.pending.zero_()

    def limit(self, position: int = 0) -> Tensor:
        """``factor * rms_p`` (0 before any target was seen)."""
        p = self._slot(position)
        return self.factor * (self.mean_sq[p] / self.weight[p].clamp_min(1e-30)).sqrt()

    @torch.no_grad()
    def cap(self, g: Tensor, position: int = 0) -> tuple[Tensor, Tensor]:
        """``(capped g (B, S), fraction of samples capped)``."""
        norms = torch.linalg.vector_norm(g, dim=-1, keepdim=True)  # (B, 1)
        limit = self.limit(position).to(g.dtype)
        scale = (limit / norms.clamp_min(1e-30)).clamp(max=1.0)
        return g * scale, (norms > limit).to(g.dtype).mean()
