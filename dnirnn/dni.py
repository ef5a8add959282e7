r"""The single core: truncated BPTT with Decoupled Neural Interfaces (docs/design.md §1).

``DNIRNN`` holds the core, the synthesizer (reached only through ``SyntheticGradient``), the
optional Aux head and the objective; ``window_update`` runs the engine's one window update
(``dnirnn.engine.update``) with the single core's forward and its injection at the window's
end, ``beta <g_{k+1}, s_{k+1}>``. The boundary (``tbptt``, ``dni``, ``dni_aux``, ``oracle``)
decides ``g_{k+1}``; the synthesizer's targets are the window's own ``delta_k`` (H = 1) or the
H-window λ-return of the kept windows (``dnirnn.engine.kept``). Nothing here syncs with the
host: every diagnostic is returned as a tensor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dnirnn.engine.kept import KeptWindows, Link
from dnirnn.engine.truth import future_gradients
from dnirnn.engine.update import (
    Ready,
    backward,
    bootstrap_target,
    fit,
    state_pairs,
    step,
    truncate,
    zero_grad,
)
from dnirnn.model import (
    LSTMCore,
    State,
    StepLoss,
    Window,
    WindowResult,
    detach_state,
    flatten_state,
    masked_task_loss,
    unflatten_state,
)
from dnirnn.optim import Optimizers
from dnirnn.options import TargetOptions, check_targets
from dnirnn.synthesizers.interface import NormGuard, Prediction, SyntheticGradient

__all__ = ["BOUNDARIES", "DNIRNN", "WindowGradients", "train_span", "window_update"]

BOUNDARIES = ("tbptt", "dni", "dni_aux", "oracle")

@dataclass
class WindowGradients:
    """The result of the forward/backward of one window (steps 1-4), before any step."""

    start: State  # s_k as the leaves whose .grad holds delta_k
    state: State  # s_{k+1}, detached
    g_next: Tensor | None  # (B, S), the gradient injected at s_{k+1} (None: zero)
    loss: Tensor  # l_k (task), detached
    nats: Tensor
    count: Tensor
    aux_loss: Tensor
    start_flat: Tensor | None = None  # s_k flattened (B, S), detached
    prediction: Prediction | None = None  # M_phi(s_k) with the phi that made g_{k+1}
    link: Link | None = None  # the window's graph, kept for horizon targets

    @property
    def target(self) -> Tensor:
        """``delta_k`` flattened to ``(B, S)``: see :func:`bootstrap_target`."""
        return bootstrap_target(self.start)


class DNIRNN(nn.Module):
    """The pure-PyTorch engine: core, synthesizer, optional Aux head, and the objective.

    Args:
        core: the recurrent sequence model.
        step_loss: per-step loss ``(logits, y) -> (T, B)`` in nats (see ``StepLoss``).
        loss_norm: constant divisor of the summed loss (e.g. ``B * T`` for language models,
            ``B`` for copy tasks). Constant per run, so window objectives add up to the
            sequence objective.
        boundary: one of ``BOUNDARIES``.
        synthesizer: ``M_phi`` (see ``dnirnn.synthesizers``); required for ``dni`` and
            ``dni_aux``.
        targets: what the boundary injects and the synthesizer regresses (``TargetOptions``:
            beta, the Aux weight, the oracle's look-ahead, the λ-return and its chain).
        guard: caps each synthetic gradient relative to its targets' running RMS (or None).
        aux: the Aux head, already made (``dni_aux``; None: a new ``nn.Linear``).
        resumable: the kept windows record what rebuilds their graphs on resume (streams,
            whose horizons cross training steps).
        depth: K, the windows the core's backward runs through: 1 (the window's own), or
            K > 1: TBPTT(T, K·T), and with a synthesizer or the oracle the hybrid, whose
            ``g_{k+1}`` credits only the oldest of the K windows (docs/design.md §1).
        update_every: windows summed into one update of theta: 1 (the paper), U, or "span"
            (one a training step: an episode's on the copy tasks); a span's last updates.
    """

    def __init__(
        self,
        core: LSTMCore,
        step_loss: StepLoss,
        loss_norm: float,
        boundary: str = "dni",
        synthesizer: nn.Module | None = None,
        targets: TargetOptions = TargetOptions(),
        guard: NormGuard | None = None,
        aux: nn.Module | None = None,
        resumable: bool = False,
        depth: int = 1,
        update_every: int | str = 1,
    ) -> None:
        super().__init__()
        if boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
        if boundary in ("dni", "dni_aux") and synthesizer is None:
            raise ValueError(f"boundary={boundary!r} needs a synthesizer")
        if not loss_norm > 0:
            raise ValueError(f"loss_norm must be > 0, got {loss_norm}")
        targets = TargetOptions.of(targets)
        check_targets(boundary, targets, depth, update_every)
        self.core, self.synthesizer = core, synthesizer
        self.step_loss, self.loss_norm = step_loss, float(loss_norm)
        self.boundary, self.sg_scale = boundary, float(targets.scale)
        self.aux_weight, self.oracle_windows = float(targets.aux_weight), targets.oracle_windows
        # (tbptt / oracle have no synthesizer: the λ-return does not apply)
        self.guard = guard
        self.sg_lambda = targets.lam if boundary == "dni" else None
        self.sg_horizon = targets.horizon if self.sg_lambda is not None else 1
        self.aux = aux if aux is not None else (  # the Aux head A: o_t (H) -> g_{k+1} (S)
            nn.Linear(core.cfg.hidden_size, core.state_size) if boundary == "dni_aux" else None
        )
        self.depth, self.update_every = depth, update_every
        self.targets = (KeptWindows(core, self.core_parameters(), self.sg_horizon,
                                    1.0 if self.sg_lambda is None else self.sg_lambda,
                                    self.sg_scale, resumable, depth,
                                    targets.chain if self.sg_lambda is not None else "window")
                        if depth > 1 or (self.sg_lambda is not None and self.sg_horizon != 1)
                        else None)

    @property
    def trains_synthesizer(self) -> bool:
        return self.boundary in ("dni", "dni_aux")

    @property
    def fits_per_window(self) -> bool:
        """The target is the window's own delta_k (H = 1), fitted inside its update."""
        return self.trains_synthesizer and self.sg_horizon == 1

    @property
    def sg(self) -> SyntheticGradient:
        """The synthesizer's face (``pair``, ``observe``, ``end_step``)."""
        return SyntheticGradient(self.synthesizer, self.guard)

    def core_parameters(self) -> list[nn.Parameter]:
        """theta: everything the core optimizer steps (core, readout, Aux head)."""
        params = list(self.core.parameters())
        return params + (list(self.aux.parameters()) if self.aux is not None else [])

    # ---- the objective ------------------------------------------------------------------

    def task_loss(self, logits: Tensor, window: Window) -> tuple[Tensor, Tensor, Tensor]:
        """``(l_k, nats, count)``: the window's task objective and its metric sums."""
        return masked_task_loss(self.step_loss, self.loss_norm, logits, window)

    def synthetic_gradient(self, state: State | Tensor, context: Tensor | None = None,
                           position: int = 0) -> Tensor:
        """``M_phi(s)`` at boundary ``position`` for a detached state (or its flat ``(B, S)``):
        ``(B, S)``, no graph (capped by the guard, if any: the gradient the core receives)."""
        flat = state if isinstance(state, Tensor) else flatten_state(state)
        return self.sg(flat, context, position)

    def oracle_gradient(self, state: State, future: Sequence[Window]) -> Tensor:
        """The TRUE gradient of the next windows' task loss w.r.t. ``state``: ``(B, S)``
        (``dnirnn.engine.truth``, with frozen parameters: ``.grad`` is untouched). Zeros if
        ``future`` is empty (the episode ends at this boundary)."""
        if len(future) == 0:
            return torch.zeros_like(flatten_state(state))
        return future_gradients(self, list(future), state).targets[0]

    # ---- steps 1-4 ----------------------------------------------------------------------

    def window_gradients(self, window: Window, state: State, **kw) -> WindowGradients:
        """Steps 1-4: forward the window, inject g_{k+1}, ONE backward pass. Accumulates
        into the core parameters' ``.grad`` (zero them first) and leaves ``delta_k`` in the
        start leaves' ``.grad``; nothing is stepped. ``window_update`` runs the same steps,
        the forward written out; the keywords are ``window_backward``'s."""
        start = truncate(state)  # 1.
        with self.keeping(window, kw.get("keep_graph", False)) as record:
            logits, outputs, end = self.core(window.x, start)  # 2.
        return self.window_backward(window, start, logits, outputs, end, record, **kw)

    def keeping(self, window: Window, keep_graph: bool):
        """Around a window's forward: keeps its graph for later VJPs (``link``) under a
        parameter snapshot (``dnirnn.engine.kept``), or nothing; yields the resume record."""
        return self.targets.keeping(window) if keep_graph else contextlib.nullcontext({})

    def window_backward(
        self,
        window: Window,
        start: State,
        logits: Tensor,
        outputs: Tensor,
        end: State,
        record: dict,
        *,
        episode_end: bool = False,
        future: Sequence[Window] = (),
        next_context: Tensor | None = None,
        predict_start: bool = False,
        keep_graph: bool = False,
        inject: bool = True,
    ) -> WindowGradients:
        """Steps 2 (the loss) to 4 after the core's forward from the truncated ``start``
        (``(T, B, O)`` logits, ``(T, B, H)`` outputs, ``s_{k+1}``, under ``keeping``).

        Args:
            window: the window's data.
            episode_end: the episode ends at ``s_{k+1}``: ``g_{k+1} = 0``.
            future: for ``oracle``: the windows after this one (the first ``W`` are used).
            next_context: cDNI context for ``M_phi(s_{k+1})`` (at position
                ``window.position + 1``).
            predict_start: also evaluate ``M_phi(s_k)`` for step 5 (``prediction``), with
                the same phi as g_{k+1}, batched with it into one call of the synthesizer.
            keep_graph: the forward ran under ``keeping``: keep the graph (``link``) for
                horizon targets and the deeper backward.
            inject: inject ``g_{k+1}`` in the backward (False: the deeper backward's
                ``KeptWindows.deepen_window`` carries it instead).
        """
        loss, nats, count = self.task_loss(logits, window)
        start_flat = flatten_state(start).detach() if predict_start or keep_graph else None
        fit_start = start_flat if predict_start and self.trains_synthesizer else None
        if self.trains_synthesizer:  # 3. (and M_phi(s_k) in the same call)
            end_flat = None if episode_end else flatten_state(end).detach()
            prediction, g_next = self.sg.pair(fit_start, window.context, window.position,
                                              end_flat, next_context, window.position + 1)
        else:
            prediction = None
            g_next = None if episode_end else self._boundary_gradient(end, future)
        objective, aux_loss = loss, torch.zeros((), device=loss.device, dtype=loss.dtype)
        if self.aux is not None:
            target = torch.zeros_like(flatten_state(end)) if g_next is None else g_next
            pred = self.aux(outputs)  # (T, B, S)
            aux_loss = self.aux_weight * (pred - target).pow(2).sum(-1).mean()
            objective = objective + aux_loss
        g_end = None if g_next is None else unflatten_state(g_next, self.core.cfg.num_layers)
        pairs = state_pairs(end, g_end, self.sg_scale) if inject else ()
        backward(objective, pairs, keep_graph)  # 4.
        link = None
        if keep_graph:
            link = Link(start, end, g_next, start_flat, window.context, window.position, record)
        return WindowGradients(
            start=start, state=detach_state(end), g_next=g_next,
            loss=loss.detach(), nats=nats.detach(), count=count, aux_loss=aux_loss.detach(),
            start_flat=start_flat, prediction=prediction, link=link,
        )

    def _boundary_gradient(self, end: State, future: Sequence[Window]) -> Tensor | None:
        if self.boundary == "oracle":
            return self.oracle_gradient(detach_state(end), list(future)[: self.oracle_windows])
        return None  # tbptt

    # ---- horizon targets: exact resume with chains in flight ----------------------------

    def rebuild_targets(self) -> None:
        """After a resume with horizon targets in flight: rebuilds the waiting windows'
        graphs (``KeptWindows.rebuild``)."""
        if self.targets is not None and self.targets.needs_rebuild:
            self.targets.rebuild()

    # ---- step 5 and the training step's end ---------------------------------------------

    def fit_ready(self, opts: Optimizers, ready: Sequence[Ready],
                  prediction: Prediction | None = None) -> tuple[Tensor, Tensor, int]:
        """Step 5 (``dnirnn.engine.update.fit``) for each ready boundary, oldest first."""
        return fit(self.sg, opts, ready, device=self.core.readout.weight.device,
                   prediction=prediction)

    def end_step(self, opts: Optimizers | None = None, all_reduce=None) -> Tensor:
        """Once per training step, after its windows: an unbounded horizon on a stream ends
        here (its waiting boundaries are fitted), then the guard and a least-squares
        synthesizer fold in the step (``SyntheticGradient.end_step``). ``all_reduce`` sums a
        tensor over data-parallel ranks in place (or None). Returns a 0-dim bool tensor:
        everything fitted and the new synthesizer are finite. Loops that drive the engine
        directly must call it too."""
        ok = torch.ones((), dtype=torch.bool, device=self.core.readout.weight.device)
        if not self.trains_synthesizer:
            return ok
        if self.targets is not None and self.targets.horizon is None and len(self.targets):
            if opts is None and self.synthesizer.fit == "adam":
                raise ValueError("end_step needs the optimizers to fit the span's targets")
            ok = ok & torch.isfinite(self.fit_ready(opts, self.targets.flush())[0])
        return ok & self.sg.end_step(all_reduce)


def window_update(
    net: DNIRNN,
    opts: Optimizers,
    window: Window,
    state: State,
    *,
    episode_start: bool = False,
    episode_end: bool = False,
    future: Sequence[Window] = (),
    next_context: Tensor | None = None,
    accumulate: bool = False,
    update: bool = True,
) -> WindowResult:
    """One DNI window update (steps 1-6, docs/design.md §1) of ``net`` from ``s_k`` =
    ``state`` (carried, or zeros at an episode start), with the core and synthesizer
    optimizers ``opts``. ``episode_start``: ``s_k`` is a fresh start, not a boundary whose
    synthetic gradient was used (the synthesizer is not trained on it); ``episode_end``,
    ``future``, ``next_context``: as ``DNIRNN.window_backward``'s. ``accumulate``: add to the
    earlier windows' gradients (not zeroed); ``update``: step theta after this window (False:
    no step, ``grad_norm`` 0). The synthesizer is fitted to every target
    that is ready (step 5; least squares collects the pairs, solved by ``net.end_step`` once
    per training step). Returns detached tensors; carry ``result.state`` on."""
    deep = net.depth > 1
    targets = net.targets if net.trains_synthesizer or deep else None
    if targets is not None and episode_start:
        targets.clear()  # (nothing waits across an episode start)
    fit_now = net.fits_per_window and not episode_start
    keep = targets is not None and (deep or not episode_start)
    if not accumulate:
        zero_grad(opts._core_params)
    start = truncate(state)  # 1.
    with net.keeping(window, keep) as record:
        logits, outputs, end = net.core(window.x, start)  # 2.
    wg = net.window_backward(  # 2. (the loss) - 4.
        window, start, logits, outputs, end, record, episode_end=episode_end, future=future,
        next_context=next_context, predict_start=fit_now, keep_graph=keep, inject=not deep,
    )
    delta = wg.target
    if deep:  # 4. continued through the kept windows; g_{k+1} reaches the oldest only
        wg.link.waiting = not episode_start
        delta = targets.deepen_window(wg.link)
    zero = torch.zeros((), device=wg.loss.device, dtype=wg.loss.dtype)
    core_norm = step(opts) if update else zero  # 6. (theta; the sum's finiteness: at its step)
    ready = []
    if keep:
        ready = targets.push(wg.link, episode_end)
    elif targets is not None and episode_end:
        ready = targets.flush()
    if fit_now:  # 5. and 6. (phi): delta_k, with M_phi(s_k) made beside g_{k+1}
        ready = [Ready(wg.start_flat, delta, window.context, window.position)]
    sg_loss, sg_cos, fitted = net.fit_ready(opts, ready, wg.prediction)
    target_norm = torch.linalg.vector_norm(delta)
    sg_norm = zero if wg.g_next is None else torch.linalg.vector_norm(wg.g_next)
    finite = torch.isfinite(torch.stack([  # loss, core gradients, targets, L_SG
        wg.loss, core_norm.to(zero), target_norm.to(zero), sg_loss.to(zero)])).all()
    return WindowResult(
        loss=wg.loss, nats=wg.nats, count=wg.count, state=wg.state,
        sg_loss=sg_loss.detach(), aux_loss=wg.aux_loss, sg_norm=sg_norm,
        target_norm=target_norm, sg_cos=sg_cos,
        grad_norm=core_norm, finite=finite, fitted=fitted, updated=update,
    )


def train_span(
    net: DNIRNN,
    opts: Optimizers,
    windows: Sequence[Window],
    state: State,
    *,
    reset: bool = False,
    last: bool = False,
    all_reduce=None,
) -> tuple[list[WindowResult], State]:
    """One training step: ``window_update`` on each window of a span, then ``net.end_step``.

    The one loop that drives the engine (the Lightning module, the benchmark, the scripts and
    the tests call it), updating theta every ``net.update_every`` windows and after the last.
    ``reset``: the span starts an episode (``state`` is zeros); ``last``:
    the episode ends with it (``g = 0`` after its last window). The oracle looks ahead
    through the span's later windows; each window's synthesizer context at its end is the
    next window's. ``all_reduce``: an in-place sum over data-parallel ranks, or None.
    Returns the windows' results (the last one's ``finite`` covers ``end_step``) and the
    state after the span.
    """
    net.rebuild_targets()  # (after a resume with horizon targets in flight)
    oracle, n = net.boundary == "oracle", len(windows)
    every = n if net.update_every == "span" else net.update_every
    results = []
    for k, w in enumerate(windows):
        res = window_update(
            net, opts, w, state,
            episode_start=reset and k == 0,
            episode_end=last and k == n - 1,
            future=windows[k + 1 :] if oracle else (),
            # (after the last window: an episode's end, g = 0, or a stream: no context)
            next_context=windows[k + 1].context if k + 1 < n else None,
            accumulate=k % every != 0, update=(k + 1) % every == 0 or k == n - 1,
        )
        state = res.state
        results.append(res)
    # an unbounded horizon on a stream ends here; the guard; the least-squares solve
    results[-1].finite = results[-1].finite & net.end_step(opts, all_reduce)
    return results, state
