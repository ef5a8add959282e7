"""One span of the hierarchy (``hierarchy_update``): its fast window updates, then the slow
window update, each part stepped by its own optimizer (``dnirnn.hierarchy``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dnirnn.engine.update import Ready, fit, step, zero_grad
from dnirnn.hierarchy.model import HierarchyState, TwoTimescaleRNN
from dnirnn.hierarchy.windows import (
    HierarchyOracle,
    SlowWindow,
    fast_window_gradients,
    slow_window_gradients,
)
from dnirnn.model import State, Window, flatten_state, split_windows
from dnirnn.optim import Optimizers
from dnirnn.synthesizers.interface import SyntheticGradient


@dataclass
class HierarchyOptimizers:
    """Up to five optimizers, no two sharing a parameter; each clips on its own.

    Attributes:
        fast: theta_f (``core``) and ``M_f`` (``synthesizer``), with their clip norms.
        slow: theta_s and ``M_s``.
        interface: ``M_if``'s optimizer (None without an interface synthesizer).
        interface_clip: its clip norm.

    A synthesizer fitted by least squares (``fit: rls``) has no optimizer: None.
    """

    fast: Optimizers
    slow: Optimizers
    interface: torch.optim.Optimizer | None = None
    interface_clip: float | None = None

    def __post_init__(self) -> None:
        seen: set[int] = set()
        for opt in (self.fast.core, self.fast.synthesizer, self.slow.core,
                    self.slow.synthesizer, self.interface):
            ids = set() if opt is None else {id(p) for g in opt.param_groups for p in g["params"]}
            if ids & seen:
                raise ValueError("the hierarchy's optimizers must not share parameters")
            seen |= ids

    @property
    def interface_fit(self) -> Optimizers:
        """``M_if``'s optimizer and clip as the engine's ``fit`` takes them (no core of its own)."""
        return Optimizers(None, self.interface, None, self.interface_clip)


def _fit(synthesizer: nn.Module | None, opts: Optimizers, inputs: Tensor,
         target: Tensor) -> tuple[Tensor, Tensor] | None:
    """The engine's step 5 (``dnirnn.engine.update.fit``) on ``(inputs, target)``; None
    without a synthesizer or samples. Returns ``(L_SG, cosine)`` before the fit."""
    if synthesizer is None or inputs.shape[0] == 0:
        return None
    return fit(SyntheticGradient(synthesizer), opts, [Ready(inputs, target)],
               device=inputs.device)[:2]


@dataclass
class HierarchyResult:
    """What one span update returns; every field is a detached tensor (no host sync).

    Attributes:
        loss: the span's task objective, summed over its fast windows (nats / loss_norm).
        nats, count: summed task nats and scored steps.
        state: the state after the span, detached: carry it into the next span.
        fast_sg_loss, slow_sg_loss: ``L_f`` (mean over the trained fast windows) and ``L_s``.
        fast_sg_cos, slow_sg_cos: cosine(``M_f(s_w)``, delta_w) (mean over the trained fast
            windows) and cosine(``M_s(z_{i0})``, delta_s); 0 where not trained.
        fast_target_norm: ``||delta_w||``, mean over the fast windows.
        interface_sg_loss, interface_sg_cos: ``L_if`` and cosine(``M_if(u)``, true gradient).
        fast_grad_norm: theta_f's gradient norm before clipping, mean over fast windows.
        slow_grad_norm: theta_s's gradient norm before clipping.
        finite: whether the loss and both cores' gradients were finite.
    """

    loss: Tensor
    nats: Tensor
    count: Tensor
    state: HierarchyState
    fast_sg_loss: Tensor
    slow_sg_loss: Tensor
    fast_sg_cos: Tensor
    slow_sg_cos: Tensor
    fast_target_norm: Tensor
    interface_sg_loss: Tensor
    interface_sg_cos: Tensor
    fast_grad_norm: Tensor
    slow_grad_norm: Tensor
    finite: Tensor


def _mean(values: list[Tensor], like: Tensor) -> Tensor:
    return torch.stack(values).mean() if values else torch.zeros_like(like)


def hierarchy_update(
    net: TwoTimescaleRNN,
    opts: HierarchyOptimizers,
    data: Window,
    state: HierarchyState,
    *,
    episode_start: bool = False,
    episode_end: bool = False,
    oracle: HierarchyOracle | None = None,
) -> HierarchyResult:
    """One span: its ``k T_s / T_f`` fast window updates, then the slow window update.

    Args:
        net: the hierarchy.
        opts: the optimizers (none for a least-squares synthesizer).
        data: ``k * T_s`` steps, time-major (``x`` ``(N, B)`` or ``(N, B, C)``, ``y``, ``mask``).
        state: carried from the previous span (or zeros at an episode start).
        episode_start: ``state`` is a fresh start: ``M_f`` (first fast window) and ``M_s``
            are not trained on it.
        episode_end: the episode ends with this span: no synthetic gradient at its end.
        oracle: true gradients to inject instead of the synthesizers' (analysis and tests).
    """
    if data.x.shape[0] != net.cfg.span:
        raise ValueError(f"a span is k * slow_window = {net.cfg.span} steps, got "
                         f"{data.x.shape[0]}")
    slow, s = SlowWindow.open(state.slow), state.fast
    windows = split_windows(data.x, data.y, net.cfg.fast_window, data.mask)
    per = net.cfg.fast_window // net.cfg.k  # ticks per fast window
    stats: dict[str, list[Tensor]] = {"loss": [], "nats": [], "count": [], "norm": [], "sg": [],
                                      "cos": [], "target": []}
    for w, window in enumerate(windows):
        last = w == len(windows) - 1
        zero_grad(opts.fast._core_params)
        fw = fast_window_gradients(
            net, window, s, slow, episode_end=episode_end and last,
            oracle_end=None if oracle is None else oracle.fast[w],
            oracle_interface=None if oracle is None else oracle.interface[w * per:(w + 1) * per],
        )
        stats["norm"].append(step(opts.fast))
        target = fw.target  # delta_w, (B, S_f)
        stats["target"].append(torch.linalg.vector_norm(target))
        if not (episode_start and w == 0):
            sg = _fit(net.fast_synthesizer, opts.fast, flatten_state(fw.start), target)
            stats["sg"] += [] if sg is None else [sg[0]]
            stats["cos"] += [] if sg is None else [sg[1]]
        for key, v in (("loss", fw.loss), ("nats", fw.nats), ("count", fw.count)):
            stats[key].append(v)
        s = fw.state
    return _slow_update(net, opts, slow, s, stats, episode_start, episode_end,
                        None if oracle is None else oracle.slow)


def _slow_update(
    net: TwoTimescaleRNN, opts: HierarchyOptimizers, slow: SlowWindow, fast_state: State,
    stats: dict[str, list[Tensor]], episode_start: bool, episode_end: bool,
    oracle_end: Tensor | None,
) -> HierarchyResult:
    """The span's slow window update (theta_s, M_s, M_if) and the result."""
    zero_grad(opts.slow._core_params)
    sw = slow_window_gradients(net, slow, episode_end=episode_end, oracle_end=oracle_end)
    slow_norm = step(opts.slow)
    loss = torch.stack(stats["loss"]).sum()
    zero = torch.zeros_like(loss)
    slow_sg = None if episode_start else _fit(
        net.slow_synthesizer, opts.slow, flatten_state(sw.start), sw.target)
    n = sw.messages.shape[0] - int(episode_end)  # the final tick's message is read by nothing
    if_sg = _fit(net.interface_synthesizer, opts.interface_fit,
                 sw.messages[:n].flatten(0, 1), sw.message_grads[:n].flatten(0, 1))  # (n B, H_f)
    fast_norm = torch.stack(stats["norm"]).mean()
    return HierarchyResult(
        loss=loss, nats=torch.stack(stats["nats"]).sum(), count=torch.stack(stats["count"]).sum(),
        state=HierarchyState(fast_state, sw.state),
        fast_sg_loss=_mean(stats["sg"], loss),
        slow_sg_loss=zero if slow_sg is None else slow_sg[0],
        fast_sg_cos=_mean(stats["cos"], loss),
        slow_sg_cos=zero if slow_sg is None else slow_sg[1],
        fast_target_norm=_mean(stats["target"], loss),
        interface_sg_loss=zero if if_sg is None else if_sg[0],
        interface_sg_cos=zero if if_sg is None else if_sg[1],
        fast_grad_norm=fast_norm, slow_grad_norm=slow_norm,
        finite=torch.isfinite(loss) & torch.isfinite(fast_norm) & torch.isfinite(slow_norm),
    )


def train_span(net: TwoTimescaleRNN, opts: HierarchyOptimizers, spans: list[Window],
               state: HierarchyState, *, reset: bool = False, last: bool = False
               ) -> tuple[list[HierarchyResult], HierarchyState]:
    """One training step of the hierarchy: ``hierarchy_update`` on each slow window's span
    (``k * slow_window`` steps), then ``net.end_step`` (least-squares synthesizers solve),
    as ``dnirnn.dni.train_span`` does for the single core. ``reset``: the first span starts
    an episode; ``last``: the episode ends with the last. Returns the spans' results (the
    last one's ``finite`` covers ``end_step``) and the state after them."""
    results = []
    for i, span in enumerate(spans):
        res = hierarchy_update(net, opts, span, state, episode_start=reset and i == 0,
                               episode_end=last and i == len(spans) - 1)
        state = res.state
        results.append(res)
    results[-1].finite = results[-1].finite & net.end_step()
    return results, state
