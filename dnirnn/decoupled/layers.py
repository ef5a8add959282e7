r"""One layer group's window update, with a temporal and an interface synthetic gradient.

The method is docs/design.md §7 (its surrogate, and what each synthesizer regresses); this
module is one group's side of it, with no processes or messages (``dnirnn.decoupled.pipeline``
has those). Group ``g`` holds consecutive layers of a stacked LSTM
(``dnirnn.decoupled.stack``). In window ``k`` it reads ``x^g_k`` (the tokens for ``g = 0``,
else group ``g - 1``'s output sequence ``(T, B, H)``, cut here as a leaf), starts in
``s^g_k`` and produces ``o^g_k`` ``(T, B, H)`` and ``s^g_{k+1}``; the last group also the
window's task loss ``l_k``. ``M_g`` is its temporal synthesizer (on its flat state),
``I_g`` its interface synthesizer (groups below the last: ``o_t`` ``(H)``, with an optional
one-hot target context, to a prediction of ``dL/do_t`` ``(H)``).

``Group.forward_window`` is steps 1-2 of the engine's window update
(``dnirnn.engine.update``); ``Group.update`` steps 3-6: it injects
``(s^g_{k+1}, β M_g(s^g_{k+1}))`` and ``(o^g_k, β_if I_g(o^g_k))``, runs ONE backward, steps
θ_g and fits ``M_g`` to ``δ^g_k``; afterwards ``x^g_k.grad`` is ``G^{g-1}_k``, the gradient
sent down. ``fit_interface`` fits ``I_g`` to ``(o^g_k, G^g_k)`` once ``G^g_k`` has come back
from group ``g + 1``, late. Every synthesizer is reached through ``SyntheticGradient`` and has
its own optimizer and clip, never θ_g's. Nothing here syncs with the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dnirnn.decoupled.stack import LayerGroup
from dnirnn.engine.update import (
    Ready,
    bootstrap_target,
    fit,
    scaled,
    state_pairs,
    truncate,
    update,
)
from dnirnn.model import (
    State,
    StepLoss,
    Window,
    detach_state,
    flatten_state,
    masked_task_loss,
    unflatten_state,
)
from dnirnn.optim import Optimizers, adam
from dnirnn.synthesizers.interface import SyntheticGradient

__all__ = ["CONTEXTS", "Group", "GroupForward", "GroupOptimizers", "GroupResult",
           "group_optimizers"]

CONTEXTS = ("none", "target")  # I_g's conditioning (see the module docstring)


@dataclass
class GroupOptimizers:
    """``core``: θ_g and ``M_g`` (``dnirnn.optim.Optimizers``, each its own clip);
    ``interface``: ``I_g``'s (no core), None for the last group."""

    core: Optimizers
    interface: Optimizers | None = None


def group_optimizers(group: Group, lr: float, synthesizer_lr: float,
                     clip: float | None = None, synthesizer_clip: float | None = None,
                     interface_lr: float | None = None) -> GroupOptimizers:
    """Adam for θ_g, and for each synthesizer fitted by Adam (none for least squares)."""
    def opt(module: nn.Module | None, rate: float):
        return None if module is None or module.fit != "adam" else adam(module.parameters(),
                                                                          rate)

    core = Optimizers(adam(group.layers.parameters(), lr), opt(group.synthesizer,
                      synthesizer_lr), clip, synthesizer_clip)
    interface = None
    if group.interface is not None:
        rate = synthesizer_lr if interface_lr is None else interface_lr
        interface = Optimizers(None, opt(group.interface, rate), None, synthesizer_clip)
    return GroupOptimizers(core, interface)


@dataclass
class GroupForward:
    """Steps 1-2 of a window (before anything is injected)."""

    start: State  # s^g_k, the leaves whose .grad holds δ^g_k
    inputs: Tensor | None  # x^g_k as a leaf (groups above the first), its .grad G^{g-1}_k
    out: Tensor  # o^g_k (T, B, H), with its graph
    end: State  # s^g_{k+1}, with its graph
    loss: Tensor  # l_k (last group), else a constant 0
    nats: Tensor
    count: Tensor
    context: Tensor | None = None  # I_g's conditioning context (T B, C), or None


@dataclass
class GroupResult:
    """One window update of one group; every tensor is detached (no host sync).

    Attributes:
        loss, nats, count: the window's task objective and metric sums (0 below the last).
        state: ``s^g_{k+1}``, detached: carry it.
        out: ``o^g_k`` ``(T, B, H)``: the message up, and ``I_g``'s regression input.
        context: ``I_g``'s context for the window ``(T B, C)`` (None: unconditioned).
        input_grad: ``G^{g-1}_k`` ``(T, B, H_in)``, the message down (None for group 0).
        grad_norm: θ_g's gradient norm before clipping.
        sg_loss, sg_cos: ``M_g``'s fit (0 where none: an episode start, TBPTT).
        target_norm: ``||δ^g_k||``; sg_norm: ``||g_{k+1}||``; interface_norm: ``||ĝ_k||``.
        fitted: 1 if ``M_g`` was fitted, else 0; interfaced: 1 if a gradient was injected
            at the output (``ĝ``), else 0.
        finite: the loss, θ_g's gradients, δ and L_SG are finite.
    """

    loss: Tensor
    nats: Tensor
    count: Tensor
    state: State
    out: Tensor
    context: Tensor | None
    input_grad: Tensor | None
    grad_norm: Tensor
    sg_loss: Tensor
    sg_cos: Tensor
    target_norm: Tensor
    sg_norm: Tensor
    interface_norm: Tensor
    finite: Tensor
    fitted: int = 0
    interfaced: int = 0


class Group(nn.Module):
    """One layer group: its layers, ``M_g`` and ``I_g`` (see the module docstring).

    Args:
        layers: the group's ``LayerGroup``.
        step_loss, loss_norm: the task's per-step loss and its constant divisor (as
            ``dnirnn.dni.DNIRNN``); used by the last group only.
        synthesizer: ``M_g`` (``build_synthesizer(layers.state_size, ...)``), or None: TBPTT
            at the group's truncation boundary.
        interface: ``I_g`` (``build_synthesizer(hidden_size, ...)``), or None (the last
            group; below it, None means the group gets no gradient from above).
        sg_scale: β; interface_scale: β_if.
        context: ``I_g``'s conditioning: "none", or "target" (the step's target token,
            one-hot: ``interface`` built with ``context_size`` = the vocabulary).
    """

    def __init__(self, layers: LayerGroup, step_loss: StepLoss, loss_norm: float = 1.0, *,
                 synthesizer: nn.Module | None = None, interface: nn.Module | None = None,
                 sg_scale: float = 1.0, interface_scale: float = 1.0,
                 context: str = "none") -> None:
        super().__init__()
        if layers.readout is not None and interface is not None:
            raise ValueError("the last layer group has no interface above it")
        if context not in CONTEXTS:
            raise ValueError(f"interface context must be one of {CONTEXTS}, got {context!r}")
        self.context = context
        self.layers, self.synthesizer, self.interface = layers, synthesizer, interface
        self.step_loss, self.loss_norm = step_loss, float(loss_norm)
        self.sg_scale, self.interface_scale = float(sg_scale), float(interface_scale)

    @property
    def first(self) -> bool:
        return self.layers.encoder is not None

    @property
    def last(self) -> bool:
        return self.layers.readout is not None

    @property
    def sg(self) -> SyntheticGradient:
        return SyntheticGradient(self.synthesizer)

    @property
    def interface_sg(self) -> SyntheticGradient:
        return SyntheticGradient(self.interface)

    def interface_gradient(self, out: Tensor, context: Tensor | None = None) -> Tensor:
        """``ĝ = I_g(o[, context])``: ``(T, B, H) -> (T, B, H)``, no graph."""
        return self.interface_sg(out.flatten(0, 1), context).view_as(out)

    def interface_context(self, window: Window, like: Tensor) -> Tensor | None:
        """``I_g``'s context rows ``(T B, C)`` for ``window`` (None: unconditioned)."""
        if self.context == "none" or self.interface is None:
            return None
        width = self.interface.context_size
        return torch.nn.functional.one_hot(window.y.flatten(), width).to(like.dtype)

    # ---- steps 1-2 ------------------------------------------------------------------

    def forward_window(self, inputs: Tensor, state: State, window: Window) -> GroupForward:
        """Steps 1-2: ``inputs`` is ``window.x`` for group 0, else the output sequence of the
        group below (cut here: a leaf); ``window`` gives the targets and mask (last group)."""
        start = truncate(state)
        leaf = None if self.first else inputs.detach().requires_grad_(True)
        out, end = self.layers(inputs if leaf is None else leaf, start)
        if self.last:
            loss, nats, count = masked_task_loss(self.step_loss, self.loss_norm,
                                                 self.layers.logits(out), window)
        else:
            loss = nats = count = torch.zeros((), device=out.device, dtype=out.dtype)
        return GroupForward(start, leaf, out, end, loss, nats, count,
                            self.interface_context(window, out))

    # ---- steps 3-6 ------------------------------------------------------------------

    def update(self, fw: GroupForward, opts: GroupOptimizers, *, episode_start: bool = False,
               episode_end: bool = False, interface_grad: Tensor | None = None,
               inject: bool = True) -> GroupResult:
        """Steps 3-6 of the window ``fw``: inject, ONE backward pass, step θ_g, fit ``M_g``.

        ``episode_start``: ``s^g_k`` is a fresh start, not a boundary: ``M_g`` is not fitted
        on it. ``episode_end``: ``g_{k+1} = 0``. ``interface_grad``: inject this instead of
        ``I_g(o)`` (the oracle of the tests: ``G^g_k`` of the same window). ``inject=False``:
        no ``ĝ`` at all (the warm-up, while ``I_g`` has seen too few targets)."""
        fit_now = self.synthesizer is not None and not episode_start
        start_flat = flatten_state(fw.start).detach()
        prediction = g_next = None
        if self.synthesizer is not None:  # 3. (M_g(s_k) batched with g_{k+1}, as dni.py)
            end_flat = None if episode_end else flatten_state(fw.end).detach()
            prediction, g_next = self.sg.pair(start_flat if fit_now else None, None, 0,
                                              end_flat, None, 0)
        if interface_grad is None and self.interface is not None and inject:
            interface_grad = self.interface_gradient(fw.out, fw.context)
        g_end = None if g_next is None else unflatten_state(g_next, self.layers.num_layers)
        pairs = state_pairs(fw.end, g_end, self.sg_scale)
        if interface_grad is not None:
            pairs.append((fw.out, scaled(interface_grad, self.interface_scale)))
        norm = update(opts.core, fw.loss, pairs)  # 4. and 6. (θ_g)
        target = bootstrap_target(fw.start)  # δ^g_k, (B, S_g)
        input_grad = None
        if fw.inputs is not None:
            input_grad = (torch.zeros_like(fw.inputs) if fw.inputs.grad is None
                          else fw.inputs.grad)
        zero = torch.zeros((), device=fw.out.device, dtype=fw.out.dtype)
        sg_loss = sg_cos = zero
        if fit_now:  # 5. (M_g, on its own target at once)
            sg_loss, sg_cos, _ = fit(self.sg, opts.core, [Ready(start_flat, target)],
                                     device=zero.device, prediction=prediction)
        target_norm = torch.linalg.vector_norm(target)
        finite = torch.isfinite(torch.stack([fw.loss.detach(), norm.to(zero),
                                             target_norm.to(zero), sg_loss.to(zero)])).all()
        return GroupResult(
            loss=fw.loss.detach(), nats=fw.nats.detach(), count=fw.count,
            state=detach_state(fw.end), out=fw.out.detach(), context=fw.context,
            input_grad=input_grad,
            grad_norm=norm, sg_loss=sg_loss.detach(), sg_cos=sg_cos,
            target_norm=target_norm,
            sg_norm=zero if g_next is None else torch.linalg.vector_norm(g_next),
            interface_norm=(zero if interface_grad is None
                            else torch.linalg.vector_norm(interface_grad)),
            finite=finite, fitted=int(fit_now), interfaced=int(interface_grad is not None),
        )

    def fit_interface(self, opts: GroupOptimizers, out: Tensor, target: Tensor,
                      context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Step 5 for ``I_g``: fits it to ``(o^g_k, G^g_k)``, ``(T, B, H)`` each, one row per
        step and sequence (``context``: the window's, as ``GroupResult.context``). Returns
        ``(L_SG, cosine)`` of the prediction before the fit."""
        opt = opts.interface if opts.interface is not None else Optimizers(None)
        return self.interface_sg.observe(opt, out.flatten(0, 1), target.flatten(0, 1),
                                         context)

    def end_step(self) -> Tensor:
        """Once per training step: the least-squares solves of ``M_g`` and ``I_g`` (a 0-dim
        bool tensor: the new maps are finite)."""
        ok = torch.ones((), dtype=torch.bool, device=self.layers.lstm.weight_hh_l0.device)
        for sg in (self.synthesizer, self.interface):
            if sg is not None:
                ok = ok & SyntheticGradient(sg).end_step()
        return ok
