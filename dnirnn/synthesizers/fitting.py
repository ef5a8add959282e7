r"""Step 5 of the window update, the synthesizer's fit, for every fitting method and target.

``fit_boundary`` takes one regression pair set ``(s_k, delta_k)`` at boundary ``k``:

- ``fit = "adam"`` (a ``Synthesizer`` network, the paper): one optimizer step on
  ``L_SG = mean_b ||M_phi(s_k) - delta_k||^2`` with its own optimizer and its own clip;
- ``fit = "rls"`` (a ``LeastSquaresSynthesizer``): the pairs join the least-squares
  statistics, solved once per training step by ``end_step``.

Either way the guard (if any) sees the targets, and ``(L_SG, cosine)`` of the prediction made
BEFORE this fit is returned for logging.

Where the targets come from (the window's own ``delta_k``, or the λ-return over a horizon,
``dnirnn.engine.kept``) is the caller's business: this module fits a pair it is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnirnn.optim import Optimizers, adam_step, grad_norm, zero_grad
from dnirnn.synthesizers.network import features


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
