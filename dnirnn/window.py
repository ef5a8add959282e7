"""A truncation window's data, how a sequence is cut into windows, its masked loss, and what
one window update returns.

Plain data plumbing shared by the single-level engine (``dnirnn.dni``), the hierarchy and the
training modules; the DNI maths itself is in ``dnirnn.dni``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from dnirnn.state import State

__all__ = ["StepLoss", "Window", "WindowResult", "masked_task_loss", "split_windows"]

StepLoss = Callable[[Tensor, Tensor], Tensor]
"""``step_loss(logits (T, B, O), targets) -> (T, B)`` per-step, per-sequence loss in nats."""


@dataclass
class Window:
    """One truncation window, time-major.

    Attributes:
        x: inputs, ``(T, B)`` token ids or ``(T, B, C)`` features.
        y: targets, ``(T, B)`` token ids or ``(T, B, C)`` channels.
        mask: ``(T, B)`` weights of the scored steps, or None (all scored).
        context: ``(B, C)`` conditioning context for the synthesizer at the boundary this
            window STARTS from (cDNI), or None.
        position: the index k of that boundary within its episode (0 for streams).
        norm: the divisor of this window's summed loss where it is not the engine's
            ``loss_norm`` (a stream's shorter last window: the mean over its own tokens),
            else None.
    """

    x: Tensor
    y: Tensor
    mask: Tensor | None = None
    context: Tensor | None = None
    position: int = 0
    norm: float | None = None


@dataclass
class WindowResult:
    """What one window update returns; every field is a detached tensor (no host sync).

    Attributes:
        loss: the window's task objective ``l_k`` (nats / loss_norm).
        nats: summed task loss over scored steps, in nats.
        count: number of scored steps (sum of the mask).
        state: ``s_{k+1}``, detached: carry it into the next window.
        sg_loss: mean ``L_SG`` over the boundaries fitted in this update (0 if none; at
            H > 1 they are the boundaries H - 1 windows back, and at an episode's end all
            that waited).
        aux_loss: the Aux objective (0 unless ``dni_aux``).
        sg_norm: ``||g_{k+1}||``, the synthetic gradient injected at the end boundary.
        target_norm: ``||delta_k||``, the window's own bootstrapped target at its start.
        sg_cos: mean cosine between ``M_phi(s_j)`` (before the fit) and its target ``G_j``
            over the boundaries fitted in this update (0 if none).
        fitted: how many boundaries the synthesizer was fitted to in this update.
        grad_norm: the core's gradient norm before clipping.
        finite: whether the loss, the core gradients, delta_k and L_SG (hence the fitted
            targets) were all finite.
    """

    loss: Tensor
    nats: Tensor
    count: Tensor
    state: State
    sg_loss: Tensor
    aux_loss: Tensor
    sg_norm: Tensor
    target_norm: Tensor
    sg_cos: Tensor
    grad_norm: Tensor
    finite: Tensor
    fitted: int = 0



def masked_task_loss(
    step_loss: StepLoss, loss_norm: float, logits: Tensor, window: Window
) -> tuple[Tensor, Tensor, Tensor]:
    """``(l, nats, count)``: the masked summed loss / ``loss_norm`` (or the window's own
    ``norm``), and its metric sums.

    ``nats`` is the masked sum in nats, ``count`` the number of scored steps (the mask's sum).
    """
    per_step = step_loss(logits, window.y)  # (T, B)
    if window.mask is not None:
        per_step = per_step * window.mask
        count = window.mask.sum()
    else:
        # torch.full, not torch.tensor: no host-to-device copy (a sync on CUDA)
        count = torch.full((), float(per_step.numel()), device=per_step.device)
    nats = per_step.sum()
    return nats / (loss_norm if window.norm is None else window.norm), nats, count


def split_windows(
    x: Tensor, y: Tensor, window: int, mask: Tensor | None = None,
    loss_norm: Callable[[int], float] | None = None,
) -> list[Window]:
    """Cuts time-major ``(N, B, ...)`` tensors into windows of ``window`` steps (views).

    The last window is shorter if ``window`` does not divide ``N``; with ``loss_norm`` (the
    task's, of a window's length) it gets ``norm = loss_norm(its length)``.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n = x.shape[0]
    windows = [
        Window(x[i : i + window], y[i : i + window], None if mask is None else mask[i : i + window])
        for i in range(0, n, window)
    ]
    if loss_norm is not None and n % window:
        windows[-1].norm = float(loss_norm(n % window))
    return windows
