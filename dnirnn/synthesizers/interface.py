r"""The synthesizer as the window update sees it: what it predicts, how that is capped, and
how it is fitted. Every method reaches a synthesizer only through ``SyntheticGradient``::

    pair(s_k, s_{k+1})      -> (M(s_k) for a fit at this window, g_{k+1})    one batched call
    observe(s_k, G_k)       -> fits M to the pair once the target G_k is ready: (L_SG, cos)
    end_step()              -> once per training step: guard statistics, least-squares solve

Fitting (``observe``, docs/design.md §1): an Adam-fitted ``Synthesizer`` (the paper) takes
one step of its own optimizer, with its own clip, on ``L_SG = mean_b ||M(s_k) - G_k||^2``,
its gradient by a manual backward through its Linear / ReLU layers (the same floats as
autograd, without the graph); a ``LeastSquaresSynthesizer`` adds the pair to its
statistics, solved once per training step by ``end_step``. Either way ``(L_SG, cosine)`` of
the prediction made BEFORE the fit is returned. Where the targets come from is the
caller's business (``dnirnn.engine``).

The guard (``NormGuard``) caps ``g`` relative to its targets' running RMS: ``g`` is always
capped (the gradient the core receives), and the guard sees every target fitted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnirnn.engine.update import adam_step, grad_norm, zero_grad
from dnirnn.optim import Optimizers

AllReduce = Callable[[Tensor], None]


def features(synth: nn.Module, state_flat: Tensor, context: Tensor | None) -> Tensor:
    """The synthesizer's input: ``[s; context]`` ``(B, S + C)``; checks the context."""
    if not synth.context_size:
        return state_flat
    if context is None:
        raise ValueError("this synthesizer was built with context_size > 0: pass context")
    return torch.cat([state_flat, context.to(state_flat.dtype)], dim=-1)


@dataclass
class Prediction:
    """``M_phi(s)`` evaluated without a graph, with what its manual backward needs.

    Attributes:
        output: ``(B, S)`` the prediction.
        layers: the map's layers (``nn.Linear`` / ``nn.ReLU``), or None where the manual
            backward does not apply (then the fit recomputes the prediction with autograd).
        inputs: each layer's input, ``(B, .)``; the last entry is ``output``.
    """

    output: Tensor
    layers: list[nn.Module] | None = None
    inputs: list[Tensor] = field(default_factory=list)


def _layers(synthesizer: nn.Module, position: int) -> list[nn.Module] | None:
    """The layers of the map at ``position`` if they are all Linear / ReLU (else None)."""
    maps = getattr(synthesizer, "maps", None)
    if maps is None:
        return None
    layers = list(maps[min(position, synthesizer.positions - 1)])
    ok = all(type(m) in (nn.Linear, nn.ReLU) for m in layers)
    return layers if ok else None


@torch.no_grad()
def predict(synthesizer: nn.Module, inputs: Tensor, context: Tensor | None = None,
            position: int = 0) -> Prediction:
    """``M_phi(inputs)`` without a graph, keeping each layer's input for ``fit_boundary``'s
    manual backward (an Adam-fitted ``Synthesizer``; other synthesizers: the output only)."""
    layers = _layers(synthesizer, position) if synthesizer.fit == "adam" else None
    if layers is None:
        return Prediction(synthesizer(inputs, context, position))
    x, acts = features(synthesizer, inputs, context), []
    for layer in layers:
        acts.append(x)
        x = layer(x)
    return Prediction(x, layers, acts + [x])


def predict_pair(
    synthesizer: nn.Module,
    first: Tensor, first_context: Tensor | None, first_position: int,
    second: Tensor, second_context: Tensor | None, second_position: int,
) -> tuple[Prediction, Tensor]:
    """``(predict at first, M_phi(second))`` with the same phi, as ONE batched call of the
    map (the two halves concatenated along the batch) when both positions use the same map;
    otherwise two calls. Each row of a map's output depends on its own input row only."""
    maps = getattr(synthesizer, "positions", 1)
    same_map = min(first_position, maps - 1) == min(second_position, maps - 1)
    contexts_ok = (first_context is None) == (second_context is None)
    if not (same_map and contexts_ok):
        return (predict(synthesizer, first, first_context, first_position),
                predict(synthesizer, second, second_context, second_position).output)
    n = first.shape[0]
    both = torch.cat([first, second])  # (2B, S)
    ctx = None if first_context is None else torch.cat([first_context, second_context])
    pred = predict(synthesizer, both, ctx, first_position)
    half = Prediction(pred.output[:n], pred.layers, [a[:n] for a in pred.inputs])
    return half, pred.output[n:]


def _manual_backward(pred: Prediction, target: Tensor) -> list[Tensor]:
    """The gradients of ``L_SG = mean_b ||M(s) - delta||^2`` w.r.t. the map's parameters
    (``[W, b]`` per Linear, in ``parameters()`` order), computed as autograd computes them
    (same kernels, same operand layouts: the same floats) without building a graph."""
    out = pred.output
    diff = out - target
    # MeanBackward (grad / B), SumBackward (expand), PowBackward (grad * (2 * diff))
    e = torch.full((), 1.0, dtype=out.dtype, device=out.device).div(out.shape[0])
    e = e.expand(out.shape[0]).unsqueeze(-1).expand_as(out) * (2.0 * diff)
    grads: list[Tensor] = []
    for i in range(len(pred.layers) - 1, -1, -1):
        layer, x = pred.layers[i], pred.inputs[i]
        if isinstance(layer, nn.ReLU):
            e = torch.ops.aten.threshold_backward(e, pred.inputs[i + 1], 0)
            continue
        grads = [e.t().mm(x), e.sum(0)] + grads  # W: (out, in), b: (out,)
        if i > 0:
            e = e.mm(layer.weight)
    return grads


def synthesizer_regression(
    synthesizer: nn.Module, inputs: Tensor, target: Tensor, context: Tensor | None = None,
    position: int = 0,
) -> tuple[Tensor, Tensor]:
    """``L_SG = mean_b ||M_phi(s) - delta||^2`` with ``delta`` detached.

    Args:
        synthesizer: ``M_phi``.
        inputs: the (detached) flat state ``(B, S)`` the synthetic gradient is predicted at.
        target: ``delta``, ``(B, S)``.
        context: optional cDNI context ``(B, C)``.
        position: the boundary index (per-position synthesizers).

    Returns:
        ``(L_SG, cosine(M_phi(s), delta))``; only ``L_SG`` carries a graph (into phi).
    """
    pred = synthesizer(inputs.detach(), context, position)  # (B, S)
    return _regression(pred, target.detach())


def _regression(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    loss = (pred - target).pow(2).sum(-1).mean()
    cos = F.cosine_similarity(pred.detach().flatten(), target.flatten(), dim=0, eps=1e-30)
    return loss, cos


def fit_boundary(
    synthesizer: nn.Module,
    opts: Optimizers,
    inputs: Tensor,
    target: Tensor,
    context: Tensor | None = None,
    position: int = 0,
    guard: nn.Module | None = None,
    prediction: Prediction | None = None,
) -> tuple[Tensor, Tensor]:
    """Fits ``synthesizer`` at ``position`` to ``(inputs, target)`` (see the module docstring).

    ``prediction``: ``predict(synthesizer, inputs, context, position)`` if the caller already
    made it with the current phi (``window_update`` batches it with ``g_{k+1}``).

    An Adam-fitted ``Synthesizer`` gets its gradient by a manual backward through its Linear
    / ReLU layers (``_manual_backward``: the same floats as autograd, without the graph);
    parameters with gradient hooks (DDP's all-reduce) take autograd, which runs the hooks.

    Returns ``(L_SG, cosine)`` of the prediction before this fit, detached.
    """
    inputs, target = inputs.detach(), target.detach()
    if guard is not None:
        guard.observe(target, position)
    if synthesizer.fit == "rls":
        pred = synthesizer(inputs, context, position) if prediction is None else prediction.output
        with torch.no_grad():
            loss, cos = _regression(pred, target)
        synthesizer.observe(inputs, target, context, position)
        return loss, cos
    if opts.synthesizer is None:
        raise ValueError("an Adam-fitted synthesizer needs a synthesizer optimizer")
    params = opts._synth_params
    hooked = any(p._post_accumulate_grad_hooks or p._backward_hooks for p in params)
    if prediction is None and not hooked:
        prediction = predict(synthesizer, inputs, context, position)
    zero_grad(params)
    if hooked or prediction.layers is None:
        loss, cos = synthesizer_regression(synthesizer, inputs, target, context, position)
        loss.backward()
    else:
        with torch.no_grad():
            loss, cos = _regression(prediction.output, target)
            owned = [p for layer in prediction.layers for p in layer.parameters()]
            for p, g in zip(owned, _manual_backward(prediction, target)):
                p.grad = g
    if opts.synthesizer_clip is not None:
        grad_norm(params, opts.synthesizer_clip)
    adam_step(opts.synthesizer)
    return loss.detach(), cos


class NormGuard(nn.Module):
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

    Args:
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


class SyntheticGradient:
    """Args:
        synthesizer: ``M_phi``.
        guard: a ``NormGuard`` or None.
    """

    __slots__ = ("synthesizer", "guard")

    def __init__(self, synthesizer: nn.Module, guard: nn.Module | None = None) -> None:
        self.synthesizer, self.guard = synthesizer, guard

    def cap(self, g: Tensor, position: int) -> Tensor:
        return g if self.guard is None else self.guard.cap(g, position)[0]

    @torch.no_grad()
    def __call__(self, state_flat: Tensor, context: Tensor | None = None,
                 position: int = 0) -> Tensor:
        """``g = M_phi(s)`` at boundary ``position``, capped: ``(B, S)``, no graph."""
        return self.cap(self.synthesizer(state_flat.detach(), context, position), position)

    def pair(
        self,
        start: Tensor | None, start_context: Tensor | None, start_position: int,
        end: Tensor | None, end_context: Tensor | None, end_position: int,
    ) -> tuple[Prediction | None, Tensor | None]:
        """``(prediction at s_k, g_{k+1})`` with the same phi, batched into one call where
        both are asked for (``start`` None: no fit at this window; ``end`` None: the episode
        ends at ``s_{k+1}``, ``g = 0``)."""
        if start is not None and end is not None:
            pred, g = predict_pair(self.synthesizer, start, start_context, start_position,
                                   end, end_context, end_position)
            return pred, self.cap(g, end_position)
        pred = None if start is None else predict(self.synthesizer, start, start_context,
                                                  start_position)
        g = None if end is None else self(end, end_context, end_position)
        return pred, g

    def observe(
        self, opts: Optimizers, state: Tensor, target: Tensor, context: Tensor | None = None,
        position: int = 0, prediction: Prediction | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Fits ``M_phi`` at ``position`` to ``(state, target)`` (``fit_boundary``: one
        optimizer step, or the pair joins the least-squares statistics); the guard sees the
        target. Returns ``(L_SG, cosine)`` of the prediction before the fit."""
        return fit_boundary(self.synthesizer, opts, state, target, context, position,
                            self.guard, prediction=prediction)

    def end_step(self, all_reduce: AllReduce | None = None) -> Tensor:
        """Once per training step: folds the step's targets into the guard and solves a
        least-squares synthesizer. Returns a 0-dim bool: the new synthesizer is finite."""
        if self.guard is not None:
            self.guard.end_step(all_reduce)
        return self.synthesizer.end_step(all_reduce)
