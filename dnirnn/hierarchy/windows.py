"""One fast window and one slow window of the hierarchy: forward, ONE backward each, and the
gradients they leave (docs/design.md §6 has the equations). Nothing is stepped here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dnirnn.engine.update import backward, bootstrap_target, scaled, state_pairs, truncate
from dnirnn.hierarchy.model import TwoTimescaleRNN
from dnirnn.model import State, Window, detach_state, flatten_state, unflatten_state


@dataclass
class HierarchyOracle:
    """TRUE gradients injected in place of the synthesizers' over one span (tests, analysis).

    They are scaled by beta / beta_if like the synthetic ones (set both to 1 for exactness).

    Attributes:
        fast: for each fast window of the span, the gradient at its end state as the NEXT
            fast window reads it, flat ``(B, 2 L_f H_f)``.
        slow: the gradient at the span's end slow state ``z``, flat ``(B, 2 L_s H_s)``.
        interface: the gradient on each tick's message through the slow core, ``(T_s, B, H_f)``.
    """

    fast: Sequence[Tensor]
    slow: Tensor
    interface: Tensor


@dataclass
class SlowWindow:
    """The slow window (span) under construction while its fast windows run.

    Attributes:
        start: ``z_{i0}``, leaves; after the slow backward ``.grad`` holds delta_s.
        state: the current slow state ``z_i`` (graph from ``start``), each ``(L_s, B, H_s)``.
        m: ``m_{i0}, m_{i0+1}, ...``: top h of ``start`` and of each tick, graph, ``(B, H_s)``.
        u: ``ū_{i0+1}, ...``: the detached message leaves the ticks read, ``(B, H_f)``.
        G: ``G_{i0}, ...``: the fast surrogate's gradient on each ``m_j``, ``(B, H_s)``.
    """

    start: State
    state: State
    m: list[Tensor] = field(default_factory=list)
    u: list[Tensor] = field(default_factory=list)
    G: list[Tensor] = field(default_factory=list)

    @classmethod
    def open(cls, z: State) -> SlowWindow:
        start = detach_state(z, requires_grad=True)  # the slow truncation point
        return cls(start=start, state=start, m=[start[0][-1]])

    def tick(self, net: TwoTimescaleRNN, u: Tensor) -> None:
        """The slow core reads ``u`` (cut here: a leaf) and emits the next ``m``."""
        self.u.append(u.detach().requires_grad_(True))
        self.state = net.tick(self.u[-1], self.state)
        self.m.append(self.state[0][-1])


@dataclass
class FastWindowGradients:
    """The result of the forward/backward of one fast window, before any step."""

    start: State  # s_w as leaves whose .grad holds delta_w
    state: State  # s_{w+1}, detached
    loss: Tensor  # l_w (task), detached
    nats: Tensor
    count: Tensor

    @property
    def target(self) -> Tensor:
        """``delta_w``, ``(B, 2 L_f H_f)``."""
        return bootstrap_target(self.start)


def _grad_or_zero(t: Tensor) -> Tensor:
    return torch.zeros_like(t) if t.grad is None else t.grad


def fast_window_gradients(
    net: TwoTimescaleRNN,
    window: Window,
    state: State,
    slow: SlowWindow,
    *,
    episode_end: bool = False,
    oracle_end: Tensor | None = None,
    oracle_interface: Tensor | None = None,
) -> FastWindowGradients:
    """One fast window: segments + ticks forward, ONE backward of ``surrogate_f``.

    Ticks the slow core after each segment (extending ``slow``'s graph, which is NOT
    backpropagated here), accumulates into theta_f's ``.grad``, leaves delta_w in the start
    leaves and appends ``G_j`` for this window's segments to ``slow.G``. Nothing is stepped.

    Args:
        window: ``T_f`` steps of data.
        state: ``s_w`` (any graph is cut here).
        slow: the open slow window; ``slow.m[-1]`` is the top-down input of the first segment.
        episode_end: the episode ends at ``s_{w+1}``: ``g_f = 0`` and the last tick's
            message gets no gradient (nothing reads it).
        oracle_end, oracle_interface: true gradients replacing ``g_f`` ``(B, S_f)`` and
            ``ĝ`` ``(T_f / k, B, H_f)`` (see ``HierarchyOracle``).
    """
    start = truncate(state)
    s, outputs, m_leaves, us = start, [], [], []
    for emb in net.encoder(window.x).split(net.cfg.k):  # (k, B, E): one nn.LSTM call each
        m_leaves.append(slow.m[-1].detach().requires_grad_(True))  # m̄_j, (B, H_s)
        out, s = net.segment(emb, m_leaves[-1], s)
        us.append(s[0][-1])  # u_i: top-layer h after the segment's last step, (B, H_f)
        slow.tick(net, us[-1])
        outputs.append(out)
    logits = net.readout(torch.cat(outputs))  # (T_f, B, O)
    loss, nats, count = net.task_loss(logits, window)
    u = torch.stack(us)  # (T_f / k, B, H_f)
    backward(loss, _fast_injections(net, s, u, episode_end, oracle_end, oracle_interface))
    slow.G.extend(_grad_or_zero(m) for m in m_leaves)
    return FastWindowGradients(start, detach_state(s), loss.detach(), nats.detach(), count)


def _fast_injections(
    net: TwoTimescaleRNN, end: State, u: Tensor, episode_end: bool,
    oracle_end: Tensor | None, oracle_interface: Tensor | None,
) -> list[tuple[Tensor, Tensor]]:
    """The injections of ``beta <g_f, s_{w+1}> + beta_if sum_i <ĝ_i, u_i>``."""
    cfg = net.cfg
    g_f = oracle_end
    if g_f is None and not episode_end:
        g_f = net.synthetic_gradient(net.fast_synthesizer, flatten_state(end))
    g_u = oracle_interface
    if g_u is None:
        g_u = net.synthetic_gradient(net.interface_synthesizer, u)  # (n, B, H_f)
        if g_u is not None and episode_end:
            g_u = torch.cat([g_u[:-1], torch.zeros_like(g_u[-1:])])
    pairs = []
    if g_f is not None:
        pairs += state_pairs(end, unflatten_state(g_f, cfg.fast_layers), cfg.sg_scale)
    if g_u is not None:
        pairs.append((u, scaled(g_u, cfg.interface_sg_scale)))
    return pairs


@dataclass
class SlowWindowGradients:
    """The result of the slow window's backward, before any step."""

    start: State  # z_{i0} as leaves whose .grad holds delta_s
    state: State  # z_{i0+T_s}, detached
    messages: Tensor  # u_i, (T_s, B, H_f), detached
    message_grads: Tensor  # ū_i.grad: the true gradient on u_i, M_if's target, (T_s, B, H_f)

    @property
    def target(self) -> Tensor:
        """``delta_s``, ``(B, 2 L_s H_s)``."""
        return bootstrap_target(self.start)


def slow_window_gradients(
    net: TwoTimescaleRNN,
    slow: SlowWindow,
    *,
    episode_end: bool = False,
    oracle_end: Tensor | None = None,
) -> SlowWindowGradients:
    """ONE backward of ``surrogate_s = sum_j <G_j, m_j> + beta <g_s, z_end>`` over the span.

    Accumulates into theta_s's ``.grad``; delta_s lands in ``slow.start``'s ``.grad`` and the
    true message gradients in the ``ū_i.grad``. ``episode_end``: ``g_s = 0``; ``oracle_end``:
    the true gradient ``(B, S_s)`` replacing ``g_s``.
    """
    n = len(slow.u)
    if len(slow.G) != n:
        raise RuntimeError(f"{len(slow.G)} top-down gradients for {n} ticks: run the fast "
                           "windows of the whole span first")
    objective = (torch.stack(slow.G) * torch.stack(slow.m[:n])).sum()  # sum_j <G_j, m_j>
    g_s = oracle_end
    if g_s is None and not episode_end:
        g_s = net.synthetic_gradient(net.slow_synthesizer, flatten_state(slow.state))
    g_end = None if g_s is None else unflatten_state(g_s, net.cfg.slow_layers)
    backward(objective, state_pairs(slow.state, g_end, net.cfg.sg_scale))
    return SlowWindowGradients(
        start=slow.start, state=detach_state(slow.state),
        messages=torch.stack(slow.u).detach(),
        message_grads=torch.stack([_grad_or_zero(u) for u in slow.u]),
    )

