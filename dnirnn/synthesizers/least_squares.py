r"""Exact ridge least squares with exponential forgetting (``fit: rls``).

A linear synthesizer per boundary position ``p`` (``positions = 1``: one shared map)::

    M_p(s) = x W_p,   x = [s; c; 1]   (B, n),  n = S + C + 1   (state, cDNI context, bias)

refitted EXACTLY once per training step to every regression pair ``(x_i, delta_i)`` seen so
far (each boundary sample of each window), with the old ones forgotten geometrically::

    W_p = argmin_W  sum_i f^{a_i} ||x_i W - delta_i||^2  +  r_p ||W||_F^2
        = (A_p + r_p I)^{-1} b_p,
    A_p = sum_i f^{a_i} x_i^T x_i,   b_p = sum_i f^{a_i} x_i^T delta_i,
    r_p = ridge * mean(diag A_p)          (ridge_to = "mean")

or, with ``ridge_to = "feature"``, a ridge per input feature relative to its own energy,
``(A_p + ridge * diag(A_p))^{-1} b_p``: the fit is then unchanged when one feature is scaled
(its row of ``W_p`` scales inversely), where the mean-diagonal ridge shrinks the weights of
the low-energy features most.

where ``a_i`` counts the training steps since pair ``i`` was seen (``forget = f`` per step).
Why an exact fit: docs/design.md §1, "The synthesizer"; it follows the core at once and
forgets at a chosen rate. The ridge is relative to the data's scale, so ``W`` does not change
when ``A`` and ``b`` are scaled together (which is why forgetting every position every step,
seen or not, leaves the unseen maps as they were).

``observe`` adds a step's pairs straight into ``A_p, b_p``; ``end_step`` sums them across
data-parallel ranks (so every rank holds the same ``A, b, W``) and re-solves by Cholesky the
maps seen in the step, one position at a time. ``A`` and ``b`` are float64 (kept float64
whatever the module's dtype).

Memory, ``P (n^2 + n S)`` float64 + ``P n S`` for ``W``, and nothing else that grows with P
(no pending copies, no batched temporaries):

- forgetting is lazy: position p's statistics are scaled by ``f^(age_p + 1)`` when it is first
  observed in a step (``age_p`` counts the steps since it was last folded in), so an unseen
  position costs nothing and its ``A_p, b_p`` stay exactly those its ``W_p`` was solved from;
- the solve runs position by position (temporaries of one ``n x n`` matrix);
- under data parallel, rank 0 keeps the scaled old statistics and the other ranks start the
  step from zero: the all-reduced sum is the old statistics plus every rank's pairs.

Options to make the fit's samples go further (``synthesizer_input``, ``rls_share``):

- ``inputs = "h"``: regress on the hidden half of the state only, ``x = [h; c; 1]`` with
  ``n = S / 2 + C + 1`` (a quarter of the normal matrix, half the unknowns per output);
- ``share = w``: each boundary's pairs also join its neighbours' statistics (positions
  ``p - 1`` and ``p + 1``) with weight ``w``: a map sees about ``1 + 2w`` times the samples,
  from boundaries two steps of the core apart.

Checkpoint (``state_dict``): the upper triangle of ``A`` (``A`` is kept exactly symmetric: its
upper triangle is mirrored at every solve), ``b`` and ``age``; ``W`` is not stored twice: it
is re-solved on load from the same ``A, b`` by the same code, bit for bit, so resume is exact.

Cost: ``observe`` two GEMMs, ``O(B n (n + S))`` per window; ``end_step`` per position seen in
the step, a Cholesky factorisation ``n^3 / 3`` and two triangular solves ``2 n^2 S``
(n = 257 for 128 LSTM units: ~40 MFLOP per position per step).

``solve_every = k`` re-solves the maps only every k training steps (the statistics still take
every step's pairs, and forget as before): a synthesizer k times slower than the core, held
fixed between its refreshes (a frozen synthesizer refreshed every k steps, as Marschall, Cho
& Savin 2020 freeze a target), and a solve's cost spread over k steps. The held maps are then
checkpointed beside the statistics they are not yet solved from.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dnirnn.synthesizers.interface import features

AllReduce = Callable[[Tensor], None]  # in-place sum over data-parallel ranks
INPUTS = ("state", "h")
RIDGE_TO = ("mean", "feature")


class LeastSquaresSynthesizer(nn.Module):
    """Args:
        state_size: S, the flat state's width.
        context_size: C, width of the cDNI context (0: none).
        positions: P, one map per boundary index within an episode (1: one shared map).
        forget: f in (0, 1], the weight of a pair one training step older.
        ridge: r / mean(diag A) > 0, the relative ridge.
        ridge_to: "mean" (r relative to the mean diagonal of A) or "feature" (each feature's
            ridge relative to its own diagonal entry of A).
        inputs: "state" (regress on the whole flat state) or "h" (its hidden half).
        share: w in [0, 1], the weight of a pair in its neighbouring positions' statistics.
        solve_every: k >= 1, the training steps between two solves of the maps.
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
        inputs: str = "state",
        share: float = 0.0,
        solve_every: int = 1,
        ridge_to: str = "mean",
    ) -> None:
        super().__init__()
        if inputs not in INPUTS:
            raise ValueError(f"least-squares inputs must be one of {INPUTS}, got {inputs!r}")
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"rls share must be in [0, 1], got {share}")
        if not 0 < forget <= 1:
            raise ValueError(f"rls forget must be in (0, 1], got {forget}")
        if not ridge > 0:
            raise ValueError(f"rls ridge must be > 0, got {ridge}")
        if ridge_to not in RIDGE_TO:
            raise ValueError(f"rls ridge_to must be one of {RIDGE_TO}, got {ridge_to!r}")
        if positions < 1:
            raise ValueError(f"synthesizer positions must be >= 1, got {positions}")
        if int(solve_every) != solve_every or solve_every < 1:
            raise ValueError(f"rls solve_every must be an integer >= 1, got {solve_every}")
        self.state_size, self.context_size, self.positions = state_size, context_size, positions
        self.forget, self.ridge, self.ridge_to = float(forget), float(ridge), ridge_to
        self.inputs, self.share = inputs, float(share)
        self.solve_every = int(solve_every)
        n = (state_size if inputs == "state" else state_size // 2) + context_size + 1
        f64 = torch.float64
        # (the state dict holds A's upper triangle, b and age: see _save_to_state_dict)
        self.register_buffer("A", torch.zeros(positions, n, n, dtype=f64), persistent=False)
        self.register_buffer("b", torch.zeros(positions, n, state_size, dtype=f64),
                             persistent=False)
        self.register_buffer("W", torch.zeros(positions, n, state_size), persistent=False)
        self._seen: set[int] = set()  # positions observed since the last end_step (host ints)
        self._age: list[int] = [0] * positions  # host copy of ``age`` (no sync per observe)
        self._stale: set[int] = set()  # positions observed since their map was last solved
        self._steps = 0  # end_step calls (solve_every > 1: a solve when it divides them)
        self.rank = 0  # data-parallel rank (set by the training module; see the docstring)

    def _apply(self, fn, recurse=True):  # keep the statistics float64 through .to(dtype)
        super()._apply(fn, recurse)
        for name in ("A", "b"):
            self._buffers[name] = self._buffers[name].to(torch.float64)
        return self

    def _slot(self, position: int) -> int:
        return min(position, self.positions - 1)

    def _x(self, state_flat: Tensor, context: Tensor | None) -> Tensor:
        if self.inputs == "h":  # [h_1..h_L, c_1..c_L]: the first half
            state_flat = state_flat[:, : self.state_size // 2]
        x = features(self, state_flat, context)
        return torch.cat([x, torch.ones_like(x[:, :1])], dim=-1)  # (B, n)

    def forward(
        self, state_flat: Tensor, context: Tensor | None = None, position: int = 0
    ) -> Tensor:
        """``M_p(s) = [s; c; 1] W_p`` (or ``[h; c; 1] W_p``): ``(B, S)``."""
        x = self._x(state_flat, context)
        return x @ self.W[self._slot(position)].to(x.dtype)

    @torch.no_grad()
    def observe(self, state_flat: Tensor, target: Tensor, context: Tensor | None = None,
                position: int = 0) -> None:
        """Adds the pairs ``(x_b, delta_b)`` of one boundary to ``A_p, b_p`` (and, with
        ``share``, to the neighbours'), forgetting the old ones first where a position is new
        in this step."""
        p = self._slot(position)
        x = self._x(state_flat.detach(), context).to(torch.float64)  # (B, n)
        xx, xd = x.T @ x, x.T @ target.detach().to(torch.float64)  # (n, n), (n, S)
        self._fold(p, xx, xd, 1.0)
        if self.share:
            for q in (p - 1, p + 1):
                if 0 <= q < self.positions and q != p:
                    self._fold(q, xx, xd, self.share)

    def _fold(self, p: int, xx: Tensor, xd: Tensor, weight: float) -> None:
        if p not in self._seen:
            self._seen.add(p)
            if self.rank == 0:
                scale = self.forget ** (self._age[p] + 1)
                self.A[p].mul_(scale)
                self.b[p].mul_(scale)
            else:  # the old statistics come back from rank 0 in end_step's sum
                self.A[p].zero_()
                self.b[p].zero_()
        self.A[p].add_(xx, alpha=weight)
        self.b[p].add_(xd, alpha=weight)

    @torch.no_grad()
    def end_step(self, all_reduce: AllReduce | None = None) -> Tensor:
        """Sums the step's statistics over ranks and re-solves the maps seen in this step.

        Returns a 0-dim bool tensor: the new maps are finite and the factorisations succeeded.
        """
        ok = torch.ones((), dtype=torch.bool, device=self.W.device)
        seen, self._seen = sorted(self._seen), set()
        self._age = [0 if p in seen else a + 1 for p, a in enumerate(self._age)]
        for p in seen:
            if all_reduce is not None:  # every rank's pairs, so the ranks stay identical
                all_reduce(self.A[p])
                all_reduce(self.b[p])
        self._stale.update(seen)
        self._steps += 1
        if self._steps % self.solve_every == 0:
            stale, self._stale = sorted(self._stale), set()
            for p in stale:
                ok = ok & self._solve(p)
        return ok

    def _solve(self, p: int) -> Tensor:
        """``W_p = (A_p + r_p I)^{-1} b_p`` after mirroring A_p's upper triangle (so A_p is
        exactly the symmetric matrix its stored triangle gives)."""
        A = self.A[p]
        upper = A.triu()
        A.copy_(upper + upper.triu(1).T)
        d = A.diagonal()  # (per feature: one never nonzero takes the mean's ridge, weight 0)
        scale = d.mean() if self.ridge_to == "mean" else torch.where(d > 0, d, d.mean())
        r = self.ridge * scale + 1e-300
        chol, info = torch.linalg.cholesky_ex(A + torch.diag_embed(r.expand_as(d)))
        W = torch.cholesky_solve(self.b[p], chol)
        self.W[p] = W.to(self.W.dtype)
        return (info == 0) & torch.isfinite(W).all()

    # ---- checkpoint: A's triangle, b and age; W re-solved on load (held: stored) --------

    def _triu(self) -> tuple[Tensor, Tensor]:
        n = self.A.shape[-1]
        return tuple(torch.triu_indices(n, n, device=self.A.device))  # type: ignore[return-value]

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        i, j = self._triu()
        destination[prefix + "A_upper"] = self.A[:, i, j]  # (P, n (n + 1) / 2)
        destination[prefix + "b"] = self.b if keep_vars else self.b.detach()
        destination[prefix + "age"] = torch.tensor(self._age)  # steps since last folded in
        if self.solve_every > 1:  # the held maps, and which positions they are behind on
            destination[prefix + "W_held"] = self.W if keep_vars else self.W.detach()
            destination[prefix + "solve"] = torch.tensor(
                [self._steps] + [int(p in self._stale) for p in range(self.positions)])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        keys = {k[len(prefix):]: k for k in state_dict if k.startswith(prefix)
                and "." not in k[len(prefix):]}
        mine = {prefix + k for k in ("A_upper", "b", "age", "A", "W", "W_held", "solve")}
        unexpected_keys[:] = [k for k in unexpected_keys if k not in mine]
        if "A" in keys and "W" in keys:  # a checkpoint of the earlier layout: A, b, W in full
            with torch.no_grad():
                self.A.copy_(state_dict[keys["A"]])
                self.b.copy_(state_dict[keys["b"]])
                self.W.copy_(state_dict[keys["W"]])
            self._age = [0] * self.positions
            return
        missing = [k for k in ("A_upper", "b", "age") if k not in keys]
        if missing:
            missing_keys.extend(prefix + k for k in missing)
            return
        upper = state_dict[keys["A_upper"]]
        if upper.shape != (self.positions, len(self._triu()[0])):
            error_msgs.append(f"size mismatch for {prefix}A_upper: {tuple(upper.shape)} in the "
                              f"checkpoint, {(self.positions, len(self._triu()[0]))} here")
            return
        i, j = self._triu()
        with torch.no_grad():
            self.A[:, i, j] = upper.to(self.A)
            self.A[:, j, i] = upper.to(self.A)
            self.b.copy_(state_dict[keys["b"]])
        self._age = [int(a) for a in state_dict[keys["age"]].tolist()]
        self._seen, self._stale, self._steps = set(), set(), 0
        for p in range(self.positions):
            self._solve(p)
        if self.solve_every > 1 and "W_held" in keys and "solve" in keys:
            solve = [int(v) for v in state_dict[keys["solve"]].tolist()]
            with torch.no_grad():
                self.W.copy_(state_dict[keys["W_held"]])
            self._steps = solve[0]
            self._stale = {p for p, s in enumerate(solve[1:]) if s}
