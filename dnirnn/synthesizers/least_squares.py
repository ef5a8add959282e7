r"""Exact ridge least squares with exponential forgetting (``synthesizer_fit: rls``).

A linear synthesizer per boundary position ``p`` (``positions = 1``: one shared map)::

    M_p(s) = x W_p,   x = [s; c; 1]   (B, n),  n = S + C + 1   (state, cDNI context, bias)

refitted EXACTLY once per training step to every regression pair ``(x_i, delta_i)`` seen so
far (each boundary sample of each window), with the old ones forgotten geometrically::

    W_p = argmin_W  sum_i f^{a_i} ||x_i W - delta_i||^2  +  r_p ||W||_F^2
        = (A_p + r_p I)^{-1} b_p,
    A_p = sum_i f^{a_i} x_i^T x_i,   b_p = sum_i f^{a_i} x_i^T delta_i,
    r_p = ridge * mean(diag A_p)

where ``a_i`` counts the training steps since pair ``i`` was seen (``forget = f`` per step).
Why: the map s -> future gradient drifts with a half-life of about 5 training steps, while an
Adam-fitted synthesizer needs 100+ updates to follow it (DESIGN.md §1, "Keeping up"); the
exact fit follows the core at once and forgets at a chosen rate. The ridge is relative to the
data's scale, so ``W`` does not change when ``A`` and ``b`` are scaled together (which is why
forgetting every position every step, seen or not, leaves the unseen maps as they were).

``observe`` accumulates a step's pairs into pending sums; ``end_step`` folds them in
(``A <- f A + pending``), sums them across data-parallel ranks first (so every rank holds the
same ``A, b, W``), and solves by Cholesky. ``A`` and ``b`` are float64 buffers (kept float64
whatever the module's dtype) and, with ``W``, live in the state dict: resume is exact.

Cost: ``observe`` two GEMMs, ``O(B n (n + S))`` per window; ``end_step`` per position seen in
the step, a Cholesky factorisation ``n^3 / 3`` and two triangular solves ``2 n^2 S``
(n = 257 for 128 LSTM units: ~9 MFLOP per position per step). Memory ``P n (n + S)`` float64.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dnirnn.synthesizers.network import features

AllReduce = Callable[[Tensor], None]  # in-place sum over data-parallel ranks


class LeastSquaresSynthesizer(nn.Module):
    """Args:
        state_size: S, the flat state's width.
        context_size: C, width of the cDNI context (0: none).
        positions: P, one map per boundary index within an episode (1: one shared map).
        forget: f in (0, 1], the weight of a pair one training step older.
        ridge: r / mean(diag A) > 0, the relative ridge.
    """

    fit = "rls"
    kind = "linear"

    def __init__(
        self,
        state_size: int,
        context_size: int = 0,
        positions: int = 1,
        forget: float = 0.8,
        ridge: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0 < forget <= 1:
            raise ValueError(f"rls forget must be in (0, 1], got {forget}")
        if not ridge > 0:
            raise ValueError(f"rls ridge must be > 0, got {ridge}")
        if positions < 1:
            raise ValueError(f"synthesizer positions must be >= 1, got {positions}")
        self.state_size, self.context_size, self.positions = state_size, context_size, positions
        self.forget, self.ridge = float(forget), float(ridge)
        n = state_size + context_size + 1
        f64 = torch.float64
        self.register_buffer("A", torch.zeros(positions, n, n, dtype=f64))
        self.register_buffer("b", torch.zeros(positions, n, state_size, dtype=f64))
        self.register_buffer("W", torch.zeros(positions, n, state_size))
        self.register_buffer("pending_A", torch.zeros(positions, n, n, dtype=f64), persistent=False)
        self.register_buffer("pending_b", torch.zeros(positions, n, state_size, dtype=f64),
                             persistent=False)
        self._seen: set[int] = set()  # positions observed since the last end_step (host ints)

    def _apply(self, fn, recurse=True):  # keep the statistics float64 through .to(dtype)
        super()._apply(fn, recurse)
        for name in ("A", "b", "pending_A", "pending_b"):
            self._buffers[name] = self._buffers[name].to(torch.float64)
        return self

    def _slot(self, position: int) -> int:
        return min(position, self.positions - 1)

    def _x(self, state_flat: Tensor, context: Tensor | None) -> Tensor:
        x = features(self, state_flat, context)
        return torch.cat([x, torch.ones_like(x[:, :1])], dim=-1)  # (B, n)

    def forward(
        self, state_flat: Tensor, context: Tensor | None = None, position: int = 0
    ) -> Tensor:
        """``M_p(s) = [s; c; 1] W_p``: ``(B, S)``."""
        x = self._x(state_flat, context)
        return x @ self.W[self._slot(position)].to(x.dtype)

    @torch.no_grad()
    def observe(self, state_flat: Tensor, target: Tensor, context: Tensor | None = None,
                position: int = 0) -> None:
        """Adds the pairs ``(x_b, delta_b)`` of one boundary to the pending sums."""
        p = self._slot(position)
        x = self._x(state_flat.detach(), context).to(torch.float64)  # (B, n)
        self.pending_A[p].addmm_(x.T, x)
        self.pending_b[p].addmm_(x.T, target.detach().to(torch.float64))
        self._seen.add(p)

    @torch.no_grad()
    def end_step(self, all_reduce: AllReduce | None = None) -> Tensor:
        """Forgets, folds in the step's pairs and re-solves the maps seen in this step.

        Returns a 0-dim bool tensor: the new maps are finite and the factorisation succeeded.
        """
        ok = torch.ones((), dtype=torch.bool, device=self.W.device)
        if not self._seen:
            return ok
        lo, hi = min(self._seen), max(self._seen) + 1  # contiguous in practice: one slice
        self._seen.clear()
        new_A, new_b = self.pending_A[lo:hi], self.pending_b[lo:hi]
        if all_reduce is not None:  # every rank's pairs, so the ranks stay identical
            all_reduce(new_A)
            all_reduce(new_b)
        self.A.mul_(self.forget)
        self.b.mul_(self.forget)
        self.A[lo:hi] += new_A
        self.b[lo:hi] += new_b
        self.pending_A[lo:hi].zero_()
        self.pending_b[lo:hi].zero_()
        A = self.A[lo:hi]  # (p, n, n)
        r = self.ridge * A.diagonal(dim1=-2, dim2=-1).mean(-1) + 1e-300  # (p,)
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        chol, info = torch.linalg.cholesky_ex(A + r[:, None, None] * eye)
        W = torch.cholesky_solve(self.b[lo:hi], chol)
        self.W[lo:hi] = W.to(self.W.dtype)
        return ok & (info == 0).all() & torch.isfinite(W).all()
