r"""Truncated BPTT with Decoupled Neural Interfaces: the window update.

Notation (docs/design.md §1). A stream is cut into windows of T steps. Window k starts in the
recurrent state ``s_k`` and ends in ``s_{k+1}``; ``l_k`` is its task loss (a sum of per-step
terms, so that the window losses add up to the loss of the whole sequence). ``M_phi`` is the
synthesizer, ``theta`` the core (+ readout, + Aux head).

One window update is ONE forward and ONE backward pass through the window::

    1. s_k      <- detach(s_k), a leaf with requires_grad         (the truncation)
    2. s_{k+1}, l_k = core_theta(x_k, s_k)                       (one nn.LSTM call)
    3. g_{k+1}  = detach(M_phi(s_{k+1}))     (0 if the episode ends at this boundary)
    4. backward of the surrogate   l_k + beta * <g_{k+1}, s_{k+1}>        (beta = sg_scale)
         theta.grad = dl_k/dtheta + beta * (ds_{k+1}/dtheta)^T g_{k+1}
         s_k.grad   = delta_k = dl_k/ds_k + beta * (ds_{k+1}/ds_k)^T g_{k+1}
                                                       (the bootstrapped target)
    5. fit M_phi to (s_j, G_j) for every boundary j whose target is ready:
       L_SG = || M_phi(s_j) - G_j ||^2, by its own optimizer (Adam, the paper) or by exact
       least squares (``rls``). With ``sg_horizon`` H = 1 (the paper) G_k = delta_k, ready at
       once; with H > 1, G_k is the H-window truncated λ-return, ready H - 1 windows later
       (``dnirnn.synthesizers.horizon``: the last H windows' graphs are kept, no second
       forward pass).
    6. step theta (core optimizer, core clip) and phi (its own optimizer, its own clip);
       carry detach(s_{k+1}) into window k+1.

The synthesizer is reached through one narrow face, ``SyntheticGradient``
(``dnirnn.synthesizers.interface``): ``pair`` (M_phi(s_k) and g_{k+1} in one batched call),
``observe`` (fit a ready pair), ``end_step``; the targets come from the window (H = 1) or from
``HorizonTargets`` (H > 1), so the path through a window runs one way.

Cost (``scripts/bench.py``). Steps 3 and 5 evaluate M_phi with the SAME phi (phi steps only
at the end of step 5), so at H = 1 ``M_phi(s_k)`` and ``M_phi(s_{k+1})`` are one batched call
of the synthesizer (the two states concatenated along the batch), made in step 3 without a
graph; step 5 takes the gradient of L_SG by a manual backward through the synthesizer's
Linear / ReLU layers (``dnirnn.synthesizers.fitting``: the same kernels and floats as
autograd). The optimizer steps, clips and zero_grads are torch's fused kernels without their
Python bookkeeping (``dnirnn.optim``). A batched GEMM may round a row differently from the
same row computed alone (the BLAS picks its kernel by the row count and the width).

With beta = 1, step 4 is the paper's update ``theta <- theta - a(sum dL/dtheta +
delta_hat * dh_T/dtheta)`` and delta_k is exactly the paper's bootstrapped target. With
beta < 1 the synthesizer becomes a beta-per-window *discounted* predictor of the future
gradient: unrolling the target, M_phi(s_k) ~ sum_j beta^j (future window j's gradient).

Boundaries (``boundary``):
  - ``tbptt``:   g = 0, plain truncated BPTT (the baseline).
  - ``dni``:     g = M_phi(s_{k+1}), as above.
  - ``dni_aux``: as ``dni``; in addition an Aux head reads the core output o_t at every step
                 t of the window and regresses g_{k+1} (the synthetic gradient at the END of
                 the window, i.e. further in the future than t). Its loss
                 ``aux_weight * mean_{t,b} ||A o_t - g_{k+1}||^2`` joins l_k in step 4, so the
                 objective is task + aux, and delta_k is the gradient of that whole objective
                 (the synthesizer predicts the future of the same objective).
  - ``oracle``:  g = the TRUE gradient of the next W windows' task loss w.r.t. s_{k+1},
                 by BPTT with frozen parameters (analysis and tests only; expensive).

Positions. ``Window.position`` is the index k of the boundary a window starts from within its
episode (0 for streams); a per-position synthesizer uses map k there, and ``M_{k+1}`` at the
window's end.

Nothing in this module syncs with the host: every diagnostic is returned as a tensor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dnirnn.model import LSTMCore
from dnirnn.optim import Optimizers, adam_step, grad_norm, zero_grad
from dnirnn.state import State, detach_state, flatten_state, unflatten_state
from dnirnn.synthesizers.fitting import Prediction, synthesizer_regression
from dnirnn.synthesizers.guard import NormGuard
from dnirnn.synthesizers.horizon import (
    HorizonTargets,
    Link,
    ParameterSnapshot,
    Ready,
    native_rnn,
    rebuild_graphs,
    window_record,
)
from dnirnn.synthesizers.interface import SyntheticGradient
from dnirnn.window import StepLoss, Window, WindowResult, masked_task_loss, split_windows

__all__ = ["BOUNDARIES", "DNIRNN", "Optimizers", "StepLoss", "Window", "WindowResult",
           "bootstrap_target", "grad_norm", "masked_task_loss", "split_windows",
           "surrogate_backward", "synthesizer_regression", "window_update"]

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


def surrogate_backward(
    objective: Tensor,
    ends: Sequence[Tensor],
    g: Sequence[Tensor] | None,
    sg_scale: float = 1.0,
    retain_graph: bool = False,
) -> None:
    """Step 4: ONE backward pass of ``objective + sg_scale * <g, ends>``.

    ``g`` (one tensor per tensor of ``ends``, detached) is injected as the incoming gradient
    of ``ends`` instead of forming the dot product. ``g=None`` or ``sg_scale=0`` is plain
    backprop of ``objective`` (TBPTT). ``retain_graph`` keeps the graph (horizon targets).
    """
    if g is None or sg_scale == 0.0:
        objective.backward(retain_graph=retain_graph)
        return
    # (x * 1.0 == x bit for bit: skip the multiply at the paper's beta = 1)
    incoming = [gi.detach() if sg_scale == 1.0 else gi.detach() * sg_scale for gi in g]
    outputs = list(ends)
    if objective.requires_grad:  # (a layer with no loss of its own has only the g term)
        outputs, incoming = [objective, *outputs], [None, *incoming]
    torch.autograd.backward(outputs, incoming, retain_graph=retain_graph)


def bootstrap_target(start: State) -> Tensor:
    """``delta_k = dl_k/ds_k + beta (ds_{k+1}/ds_k)^T g_{k+1}``, read off the leaves' ``.grad``.

    Returns ``(B, S)``; zeros if no gradient reached the start state.
    """
    grads = tuple(torch.zeros_like(s) if s.grad is None else s.grad for s in start)
    return flatten_state(grads)  # type: ignore[arg-type]


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
        sg_scale: ``beta``, the weight of the synthetic gradient in the surrogate.
        aux_weight: weight of the Aux loss (``dni_aux``).
        oracle_windows: ``W``, how many future windows the ``oracle`` boundary looks ahead.
        guard: caps each synthetic gradient relative to its targets' running RMS (or None).
        sg_lambda: None: the synthesizer's target is the window's own ``delta_k`` (H = 1);
            λ in [0, 1]: the λ-return over ``sg_horizon`` windows.
        sg_horizon: with ``sg_lambda``: H >= 1 windows of the truncated λ-return (1: delta_k),
            or None: unbounded, to the episode's end (a stream: the training step's end, at
            ``end_step``), i.e. full BPTT for the synthesizer, whose memory grows with it.
        aux: the Aux head, already made (``dni_aux``; None: a new ``nn.Linear``).
        resumable: horizon targets record what rebuilds their windows' graphs (streams).
    """

    def __init__(
        self,
        core: LSTMCore,
        step_loss: StepLoss,
        loss_norm: float,
        boundary: str = "dni",
        synthesizer: nn.Module | None = None,
        sg_scale: float = 1.0,
        aux_weight: float = 1.0,
        oracle_windows: int = 1,
        guard: NormGuard | None = None,
        sg_lambda: float | None = None,
        sg_horizon: int | None = None,
        aux: nn.Module | None = None,
        resumable: bool = False,
    ) -> None:
        super().__init__()
        if boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
        if boundary in ("dni", "dni_aux") and synthesizer is None:
            raise ValueError(f"boundary={boundary!r} needs a synthesizer")
        if sg_scale < 0:
            raise ValueError(f"sg_scale must be >= 0, got {sg_scale}")
        if aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
        if oracle_windows < 1:
            raise ValueError(f"oracle_windows must be >= 1, got {oracle_windows}")
        if not loss_norm > 0:
            raise ValueError(f"loss_norm must be > 0, got {loss_norm}")
        if sg_lambda is not None and not 0.0 <= sg_lambda <= 1.0:
            raise ValueError(f"sg_lambda must be in [0, 1] or None, got {sg_lambda}")
        if sg_horizon is not None and sg_horizon < 1:
            raise ValueError(f"sg_horizon must be >= 1 or None, got {sg_horizon}")
        if sg_lambda is None and sg_horizon not in (None, 1):
            raise ValueError("sg_horizon > 1 needs sg_lambda (the λ of the λ-return)")
        if sg_lambda is not None and boundary == "dni_aux":
            raise ValueError("sg_lambda (λ-return targets) is not defined for dni_aux (its "
                             "targets include the Aux loss): use boundary='dni'")
        self.core, self.synthesizer = core, synthesizer
        self.step_loss, self.loss_norm = step_loss, float(loss_norm)
        self.boundary, self.sg_scale = boundary, float(sg_scale)
        self.aux_weight, self.oracle_windows = float(aux_weight), oracle_windows
        # (tbptt / oracle have no synthesizer: sg_lambda does not apply)
        self.guard = guard
        self.sg_lambda = sg_lambda if boundary == "dni" else None
        self.sg_horizon = sg_horizon if self.sg_lambda is not None else 1
        self.targets = (HorizonTargets(self.sg_horizon, self.sg_lambda, self.sg_scale,
                                       core.cfg.num_layers)
                        if self.sg_lambda is not None and self.sg_horizon != 1 else None)
        if self.targets is not None:  # (streams: the chains cross training steps)
            self.targets.resumable = resumable
        self.aux = aux if aux is not None else (  # the Aux head A: o_t (H) -> g_{k+1} (S)
            nn.Linear(core.cfg.hidden_size, core.state_size) if boundary == "dni_aux" else None
        )

    @property
    def trains_synthesizer(self) -> bool:
        return self.boundary in ("dni", "dni_aux")

    @property
    def fits_per_window(self) -> bool:
        """The target is the window's own delta_k (H = 1), fitted inside its update."""
        return self.trains_synthesizer and self.targets is None

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

    def synthetic_gradient(
        self, state: State, context: Tensor | None = None, position: int = 0
    ) -> Tensor:
        """``M_phi(s)`` at boundary ``position`` for a detached state: ``(B, S)``, no graph
        (capped by the guard, if any: this is the gradient the core receives)."""
        return self.sg(flatten_state(state), context, position)

    def synthetic_gradient_flat(
        self, state_flat: Tensor, context: Tensor | None = None, position: int = 0
    ) -> Tensor:
        """As ``synthetic_gradient``, for a flat state ``(B, S)``."""
        return self.sg(state_flat, context, position)

    def oracle_gradient(self, state: State, future: Sequence[Window]) -> Tensor:
        """The TRUE gradient of the next windows' task loss w.r.t. ``state``: ``(B, S)``.

        Full BPTT through ``future`` (the windows that follow the boundary, up to the episode
        end) with frozen parameters: parameter ``.grad`` is untouched. Zeros if ``future``
        is empty (the episode ends at this boundary).
        """
        if len(future) == 0:
            return torch.zeros_like(flatten_state(state))
        s = detach_state(state, requires_grad=True)
        leaves, total = s, 0.0
        with torch.enable_grad():
            for w in future:
                logits, _, s = self.core(w.x, s)
                total = total + self.task_loss(logits, w)[0]
            grads = torch.autograd.grad(total, leaves, allow_unused=True)
        grads = tuple(torch.zeros_like(l) if g is None else g for g, l in zip(grads, leaves))
        return flatten_state(grads)  # type: ignore[arg-type]

    # ---- steps 1-4 ----------------------------------------------------------------------

    def window_gradients(
        self,
        window: Window,
        state: State,
        *,
        episode_end: bool = False,
        future: Sequence[Window] = (),
        next_context: Tensor | None = None,
        predict_start: bool = False,
        keep_graph: bool = False,
    ) -> WindowGradients:
        """Steps 1-4: forward the window, inject g_{k+1}, ONE backward pass.

        Accumulates into the core parameters' ``.grad`` (zero them first) and leaves
        ``delta_k`` in the start leaves' ``.grad``. Nothing is stepped.

        Args:
            window: the window's data.
            state: ``s_k`` (any graph attached to it is cut here).
            episode_end: the episode ends at ``s_{k+1}``: ``g_{k+1} = 0``.
            future: for ``oracle``: the windows after this one (the first ``W`` are used).
            next_context: cDNI context for ``M_phi(s_{k+1})`` (at position
                ``window.position + 1``).
            predict_start: also evaluate ``M_phi(s_k)`` for step 5 (``prediction``), with
                the same phi as g_{k+1}, batched with it into one call of the synthesizer.
            keep_graph: keep the window's graph (``link``) for horizon targets, its forward
                run under a parameter snapshot (``dnirnn.synthesizers.horizon``).
        """
        start = detach_state(state, requires_grad=True)  # 1.
        record = window_record(self, window) if keep_graph and self.targets.resumable else None
        with contextlib.ExitStack() as keep:
            if keep_graph:  # (parameter copies in the graph; VJP-friendly CPU kernels)
                snap = ParameterSnapshot(self.core_parameters())
                keep.enter_context(torch.autograd.graph.saved_tensors_hooks(*snap.hooks()))
                keep.enter_context(native_rnn(window.x.device))
            logits, outputs, end = self.core(window.x, start)  # 2. (T,B,O), (T,B,H), s_{k+1}
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
        surrogate_backward(objective, end, g_end, self.sg_scale, retain_graph=keep_graph)  # 4.
        link = None
        if keep_graph:
            link = Link(start, end, g_next, start_flat, window.context, window.position,
                        record or {})
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
        graphs (``dnirnn.synthesizers.horizon.rebuild_graphs``)."""
        if self.targets is not None and self.targets.needs_rebuild:
            rebuild_graphs(self)

    # ---- step 5 and the training step's end ---------------------------------------------

    def fit_ready(self, opts: Optimizers, ready: Sequence[Ready],
                  prediction: Prediction | None = None) -> tuple[Tensor, Tensor, int]:
        """Step 5 for each ready boundary, oldest first: ``(mean L_SG, mean cos, count)``
        (zeros if none; a non-finite target makes L_SG non-finite). ``prediction`` is
        M_phi(s) of a single ready pair, made with the current phi (the H = 1 path batches it
        with g_{k+1})."""
        if not ready:
            zero = torch.zeros((), device=self.core.readout.weight.device)
            return zero, zero, 0
        sg, losses, coses = self.sg, [], []
        for r in ready:
            loss, cos = sg.observe(opts, r.state, r.target, r.context, r.position,
                                   prediction=prediction if len(ready) == 1 else None)
            losses.append(loss)
            coses.append(cos)
        if len(ready) == 1:
            return losses[0], coses[0], 1
        return torch.stack(losses).mean(), torch.stack(coses).mean(), len(ready)

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
) -> WindowResult:
    """One DNI window update (steps 1-6 of the module docstring).

    Args:
        net: the engine.
        opts: core and synthesizer optimizers with their own clip norms.
        window: this window's data.
        state: ``s_k``, carried from the previous window (or zeros at an episode start).
        episode_start: ``s_k`` is a fresh episode start (zeros), not a boundary whose
            synthetic gradient was used: the synthesizer is not trained on it.
        episode_end: the episode ends at ``s_{k+1}``: ``g_{k+1} = 0``.
        future: for the ``oracle`` boundary, the windows that follow (see ``oracle_gradient``).
        next_context: cDNI context at ``s_{k+1}``.

    The synthesizer is fitted to every target that is ready (step 5); a least-squares
    synthesizer only collects the pairs here and is solved by ``net.end_step`` once per
    training step, which every loop calls.

    Returns:
        A ``WindowResult`` of detached tensors; carry ``result.state`` into the next window.
    """
    targets = net.targets if net.trains_synthesizer else None
    if targets is not None and episode_start:
        targets.clear()  # (nothing waits across an episode start)
    fit_now = net.fits_per_window and not episode_start
    keep = targets is not None and not episode_start
    zero_grad(opts._core_params)
    wg = net.window_gradients(
        window, state, episode_end=episode_end, future=future, next_context=next_context,
        predict_start=fit_now, keep_graph=keep,
    )
    core_norm = grad_norm(opts._core_params, opts.core_clip)
    adam_step(opts.core)  # 6. (theta)
    if fit_now:  # 5. and 6. (phi): delta_k, with M_phi(s_k) made beside g_{k+1}
        ready = [Ready(wg.start_flat, wg.target, window.context, window.position)]
    elif keep:
        ready = targets.push(wg.link, episode_end)
    else:
        ready = targets.flush() if targets is not None and episode_end else []
    sg_loss, sg_cos, fitted = net.fit_ready(opts, ready, wg.prediction)
    zero = torch.zeros((), device=wg.loss.device, dtype=wg.loss.dtype)
    target_norm = torch.linalg.vector_norm(wg.target)
    sg_norm = zero if wg.g_next is None else torch.linalg.vector_norm(wg.g_next)
    finite = torch.isfinite(torch.stack([  # loss, core gradients, targets, L_SG
        wg.loss, core_norm.to(zero), target_norm.to(zero), sg_loss.to(zero)])).all()
    return WindowResult(
        loss=wg.loss, nats=wg.nats, count=wg.count, state=wg.state,
        sg_loss=sg_loss.detach(), aux_loss=wg.aux_loss, sg_norm=sg_norm,
        target_norm=target_norm, sg_cos=sg_cos,
        grad_norm=core_norm.detach(), finite=finite, fitted=fitted,
    )
