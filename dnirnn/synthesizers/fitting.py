r"""Step 5 of the window update, the synthesizer's fit, for every fitting method and target.

``fit_boundary`` takes one regression pair set ``(s_k, delta_k)`` at boundary ``k``:

- ``fit = "adam"`` (a ``Synthesizer`` network, the paper): one optimizer step on
  ``L_SG = mean_b ||M_phi(s_k) - delta_k||^2`` with its own optimizer and its own clip;
- ``fit = "rls"`` (a ``LeastSquaresSynthesizer``): the pairs join the least-squares
  statistics, solved once per training step by ``end_step``.

Either way the guard (if any) sees the targets, and ``(L_SG, cosine)`` of the prediction made
BEFORE this fit is returned for logging.

``fit_span`` is the λ-return variant (``sg_lambda``): after a training step's window updates
it computes every boundary's λ-target over the span with frozen parameters
(``dnirnn.synthesizers.targets``) and fits each boundary in order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnirnn.optim import Optimizers, grad_norm
from dnirnn.state import State
from dnirnn.synthesizers.targets import lambda_targets


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
) -> tuple[Tensor, Tensor]:
    """Fits ``synthesizer`` at ``position`` to ``(inputs, target)`` (see the module docstring).

    Returns ``(L_SG, cosine)`` of the prediction before this fit, detached.
    """
    inputs, target = inputs.detach(), target.detach()
    if guard is not None:
        guard.observe(target, position)
    if synthesizer.fit == "rls":
        with torch.no_grad():
            loss, cos = _regression(synthesizer(inputs, context, position), target)
        synthesizer.observe(inputs, target, context, position)
        return loss, cos
    if opts.synthesizer is None:
        raise ValueError("an Adam-fitted synthesizer needs a synthesizer optimizer")
    loss, cos = synthesizer_regression(synthesizer, inputs, target, context, position)
    opts.synthesizer.zero_grad(set_to_none=True)
    loss.backward()
    if opts.synthesizer_clip is not None:
        grad_norm(opts._synth_params, opts.synthesizer_clip)
    opts.synthesizer.step()
    return loss.detach(), cos


def fit_span(
    net,
    opts: Optimizers,
    windows: Sequence,
    state: State,
    *,
    lam: float,
    episode_start: bool,
    episode_end: bool,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """λ-targets over ``windows`` from ``state`` (frozen parameters), then ``fit_boundary``
    at every window start (not at an episode's first state: zeros, nothing flows into it).

    Returns ``(sg_losses, cosines, targets)`` per window (zeros where not fitted).
    """
    def predict(flat: Tensor, k: int) -> Tensor:
        if k < len(windows):
            return net.synthetic_gradient_flat(flat, windows[k].context, windows[k].position)
        return net.synthetic_gradient_flat(flat, None, windows[-1].position + 1)

    span = lambda_targets(net, windows, state, lam=lam, beta=net.sg_scale, predict=predict,
                          episode_end=episode_end)
    zero = torch.zeros((), device=span.targets[0].device, dtype=span.targets[0].dtype)
    losses, coses = [], []
    for k, w in enumerate(windows):
        if k == 0 and episode_start:
            losses.append(zero)
            coses.append(zero)
            continue
        loss, cos = fit_boundary(net.synthesizer, opts, span.states[k], span.targets[k],
                                 w.context, w.position, net.guard)
        losses.append(loss)
        coses.append(cos)
    return losses, coses, span.targets
