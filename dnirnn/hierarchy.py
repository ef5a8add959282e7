r"""Two-timescale hierarchy: a fast core and a slow core decoupled by synthetic gradients.

DESIGN.md §1, last paragraph. A FAST core (multi-layer LSTM) ticks every step; a SLOW core
(multi-layer LSTM) ticks every ``k`` steps. At a tick the slow core reads the fast core's
top-layer hidden state (bottom-up message ``u``); its new top-layer hidden state ``m`` is
fed back to the fast core, concatenated to its input, at every step until the next tick
(top-down). The bottom-up message is the fast top hidden state itself, ``u_i = h_f``: the
slow LSTM's input weights play the part of ``W_up`` and, being slow parameters, they get
TRUE gradients.

Schedule (here k = 2, fast window T_f = 4 steps, slow window T_s = 4 ticks: one *span* of
k * T_s = 8 fast steps is the data of one ``hierarchy_update``; steps counted from 1)::

    fast step t    |  1    2 |  3    4 |  5    6 |  7    8 ||  9   10 | 11 ...
    segment j      |    0    |    1    |    2    |    3    ||    4    |   5
    top-down input | m_0  m_0| m_1  m_1| m_2  m_2| m_3  m_3|| m_4  m_4| m_5
    slow tick i    |       1^|       2^|       3^|       4^||       5^|
    fast windows   | fast window 0     | fast window 1     || fast window 2 ...
    slow window    | span 0: segments 0..3, ticks 1..4     || span 1: segments 4..7 ...

- Segment j covers fast steps jk+1 .. (j+1)k: ONE ``nn.LSTM`` call with input
  ``[E x_t ; m_j]``. ``m_0`` is the top-layer h of the initial slow state ``z_0``.
- Tick i happens right after fast step ik (after segment i-1): ``u_i`` = top-layer h of the
  fast core after step ik; ``z_i = LSTM_s(u_i, z_{i-1})``; ``m_i`` = top-layer h of ``z_i``.
  The last tick of a span produces the ``m`` of the next span's first segment.
- Constraints: ``T_f % k == 0`` (segments never straddle fast windows, so ``G_j`` is complete
  after ONE fast window) and ``(k T_s) % T_f == 0`` (a span is whole fast windows).

Updates. Fast window w runs from ``s_w`` to ``s_{w+1}`` over segments j; slow window (span)
n runs from ``z_{i0}`` to ``z_{i0+T_s}`` over segments i0..i0+T_s-1 and ticks i0+1..i0+T_s.
Both levels follow the DNI window update of ``dnirnn.dni`` (one forward, ONE backward)::

    fast window (leaves s_w and m̄_j = detach(m_j); M_f, M_if give g_f, ĝ_i, detached):
        surrogate_f = l_w + beta <g_f, s_{w+1}> + beta_if sum_{ticks i in w} <ĝ_i, u_i>
            g_f = M_f(s_{w+1}),  ĝ_i = M_if(u_i)              (beta = sg_scale,
                                                               beta_if = interface_sg_scale)
        theta_f.grad   = d surrogate_f / d theta_f     -> step theta_f NOW (update-unlocked)
        s_w.grad       = delta_w                        -> L_f  = ||M_f(s_w) - delta_w||^2
        m̄_j.grad      = G_j  (summed over the k steps that read m_j), kept for the slow level

    slow window (leaves z_{i0} and ū_i = detach(u_i); g_s = M_s(z_{i0+T_s}), detached):
        surrogate_s = sum_{j=i0}^{i0+T_s-1} <G_j, m_j> + beta <g_s, z_{i0+T_s}>
        theta_s.grad = d surrogate_s / d theta_s     -> step theta_s
        z_{i0}.grad  = delta_s                         -> L_s  = ||M_s(z_{i0}) - delta_s||^2
        ū_i.grad     = d surrogate_s / d u_i           -> L_if = mean_i ||M_if(u_i) - ū_i.grad||^2
                       (exact through the slow core: the slow level's TRUE gradient on u_i)

``m_{i0}`` is the top-layer h of the start leaf ``z_{i0}``, so ``G_{i0}`` reaches only the slow
bootstrapped target delta_s (the previous span saw it through ``g_s``), and ``m_{i0+T_s}`` is
part of ``z_{i0+T_s}``, whose future gradient ``g_s`` predicts. So no G crosses spans: the
state carried between spans is just ``(s_f, z)``. Since G_j is the gradient of the fast
*surrogate*, the slow level learns from the fast level's synthetic gradients too (bootstrap).

With every synthetic gradient replaced by the true one (``HierarchyOracle``, beta = beta_if = 1)
and parameters frozen, the summed window gradients equal full BPTT through the whole
two-level graph; with ``M_if = 0`` the fast core trains exactly as if ``m`` were a constant
input. Synthesizers each have their own optimizer and clip norm, never a core's.

Nothing here syncs with the host: every diagnostic is returned as a tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from dnirnn.dni import (
    Optimizers,
    StepLoss,
    Window,
    bootstrap_target,
    grad_norm,
    masked_task_loss,
    split_windows,
    surrogate_backward,
    synthesizer_regression,
)
from dnirnn.optim import adam
from dnirnn.state import State, detach_state, flatten_state, unflatten_state, zero_state
from dnirnn.synthesizers import SYNTHESIZER_KINDS, Synthesizer


@dataclass
class HierarchyConfig:
    """Shape and schedule of the two-timescale hierarchy."""

    input_size: int
    """Vocabulary size if ``embed`` (token inputs), else the feature width."""
    output_size: int
    """Readout width (vocabulary size, or target channels); the readout reads the fast core."""
    k: int = 4
    """Tick period: the slow core ticks once every ``k`` fast steps."""
    fast_hidden: int = 256
    """Fast LSTM units per layer (also the width of the message ``u``)."""
    fast_layers: int = 1
    """Fast LSTM layers (one ``nn.LSTM`` call per segment runs them all)."""
    slow_hidden: int = 256
    """Slow LSTM units per layer (also the width of the top-down input ``m``)."""
    slow_layers: int = 1
    """Slow LSTM layers."""
    embed: bool = False
    """Token inputs through ``nn.Embedding`` (True) or float features through ``nn.Linear``."""
    embed_size: int | None = None
    """Embedding / input-projection width; defaults to ``fast_hidden``."""
    fast_window: int = 16
    """``T_f``: the fast core's TBPTT window, in fast steps; a multiple of ``k``."""
    slow_window: int = 8
    """``T_s``: the slow core's TBPTT window, in ticks; ``k * T_s`` is a multiple of ``T_f``."""
    fast_synthesizer: str | None = "mlp"
    """Kind of ``M_f`` (``linear``/``mlp``), or None: ``g_f = 0`` (plain TBPTT, fast core)."""
    slow_synthesizer: str | None = "mlp"
    """Kind of ``M_s``, or None: ``g_s = 0`` (plain TBPTT for the slow core)."""
    interface_synthesizer: str | None = "mlp"
    """Kind of ``M_if``, or None: no gradient from the slow level reaches the fast core."""
    synthesizer_hidden: int = 256
    """Hidden width of ``mlp`` synthesizers (one ReLU layer)."""
    sg_scale: float = 1.0
    """``beta``: weight of the recurrent synthetic gradients ``g_f``, ``g_s``."""
    interface_sg_scale: float = 1.0
    """``beta_if``: weight of the interface synthetic gradient ``ĝ_i`` in the fast surrogate."""
    forget_bias: float = 0.0
    """Initial forget-gate bias of both cores (``init_forget_bias``); 0 = PyTorch's init."""

    def __post_init__(self) -> None:
        for name in ("input_size", "output_size", "k", "fast_hidden", "fast_layers",
                     "slow_hidden", "slow_layers", "fast_window", "slow_window",
                     "synthesizer_hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"hierarchy.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.embed_size is not None and self.embed_size < 1:
            raise ValueError(f"hierarchy.embed_size must be >= 1 or null, got {self.embed_size!r}")
        for name in ("fast_synthesizer", "slow_synthesizer", "interface_synthesizer"):
            if getattr(self, name) not in (*SYNTHESIZER_KINDS, None):
                raise ValueError(f"hierarchy.{name} must be one of {SYNTHESIZER_KINDS} or null, "
                                 f"got {getattr(self, name)!r}")
        for name in ("sg_scale", "interface_sg_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"hierarchy.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.fast_window % self.k:
            raise ValueError(f"hierarchy.fast_window (T_f={self.fast_window}) must be a multiple "
                             f"of k={self.k}, so that no segment straddles two fast windows")
        if self.span % self.fast_window:
            raise ValueError(f"k * slow_window (={self.span} fast steps) must be a multiple of "
                             f"fast_window (T_f={self.fast_window}), so that a slow window "
                             "ends at a fast window boundary")

    @property
    def span(self) -> int:
        """Fast steps per slow window, ``k * T_s``: the data of one ``hierarchy_update``."""
        return self.k * self.slow_window


@dataclass
class HierarchyState:
    """The carried state: the fast core's ``s = (h, c)``, each ``(L_f, B, H_f)``, and the slow
    core's ``z = (h, c)``, each ``(L_s, B, H_s)``. The top-down input is ``m = z.h[-1]``."""

    fast: State
    slow: State

    @property
    def m(self) -> Tensor:
        """The current top-down input, ``(B, H_s)``."""
        return self.slow[0][-1]

    def detach(self) -> HierarchyState:
        return HierarchyState(detach_state(self.fast), detach_state(self.slow))


def init_forget_bias(lstm: nn.LSTM, value: float) -> None:
    """Sets the forget-gate bias of every layer of ``lstm`` to ``value`` (Jozefowicz et al.
    2015: a positive bias makes a fresh LSTM remember, so gradients survive long spans).

    ``nn.LSTM`` has two bias vectors per layer, gates ordered (i, f, g, o): each gets
    ``value / 2`` on its f block. ``value = 0`` leaves PyTorch's init untouched.
    """
    if value == 0.0:
        return
    h = lstm.hidden_size
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            if name.startswith("bias_"):
                p[h : 2 * h].fill_(value / 2)


def _synthesizer(kind: str | None, size: int, hidden: int) -> Synthesizer | None:
    return None if kind is None else Synthesizer(size, kind=kind, hidden_size=hidden)


class TwoTimescaleRNN(nn.Module):
    """Fast core, slow core, their recurrent synthesizers, the interface synthesizer, readout.

    Args:
        cfg: shape and schedule.
        step_loss: per-step loss ``(logits (T, B, O), y) -> (T, B)`` in nats (``dni.StepLoss``).
        loss_norm: constant divisor of the summed loss, as in ``dni.DNIRNN``.
    """

    def __init__(self, cfg: HierarchyConfig, step_loss: StepLoss, loss_norm: float) -> None:
        super().__init__()
        if not loss_norm > 0:
            raise ValueError(f"loss_norm must be > 0, got {loss_norm}")
        self.cfg, self.step_loss, self.loss_norm = cfg, step_loss, float(loss_norm)
        width = cfg.embed_size or cfg.fast_hidden
        self.encoder = (
            nn.Embedding(cfg.input_size, width) if cfg.embed else nn.Linear(cfg.input_size, width)
        )
        self.fast = nn.LSTM(width + cfg.slow_hidden, cfg.fast_hidden, cfg.fast_layers)
        self.slow = nn.LSTM(cfg.fast_hidden, cfg.slow_hidden, cfg.slow_layers)
        self.readout = nn.Linear(cfg.fast_hidden, cfg.output_size)
        init_forget_bias(self.fast, cfg.forget_bias)
        init_forget_bias(self.slow, cfg.forget_bias)
        hid = cfg.synthesizer_hidden
        self.fast_synthesizer = _synthesizer(
            cfg.fast_synthesizer, 2 * cfg.fast_layers * cfg.fast_hidden, hid)  # M_f
        self.slow_synthesizer = _synthesizer(
            cfg.slow_synthesizer, 2 * cfg.slow_layers * cfg.slow_hidden, hid)  # M_s
        self.interface_synthesizer = _synthesizer(
            cfg.interface_synthesizer, cfg.fast_hidden, hid)  # M_if: u (H_f) -> dL/du (H_f)

    def fast_parameters(self) -> list[nn.Parameter]:
        """theta_f: encoder, fast LSTM, readout."""
        return [*self.encoder.parameters(), *self.fast.parameters(), *self.readout.parameters()]

    def slow_parameters(self) -> list[nn.Parameter]:
        """theta_s: the slow LSTM (its input weights are the bottom-up projection)."""
        return list(self.slow.parameters())

    def zero_state(self, batch: int) -> HierarchyState:
        p, cfg = self.readout.weight, self.cfg
        return HierarchyState(
            zero_state(cfg.fast_layers, batch, cfg.fast_hidden, device=p.device, dtype=p.dtype),
            zero_state(cfg.slow_layers, batch, cfg.slow_hidden, device=p.device, dtype=p.dtype),
        )

    def segment(self, emb: Tensor, m: Tensor, s: State) -> tuple[Tensor, State]:
        """One ``nn.LSTM`` call over a segment: input ``[E x_t ; m]`` at each step.

        ``emb`` ``(k, B, E)``, ``m`` ``(B, H_s)`` -> outputs ``(k, B, H_f)``, ``s``.
        """
        top_down = m.unsqueeze(0).expand(emb.shape[0], -1, -1)  # (k, B, H_s)
        return self.fast(torch.cat([emb, top_down], dim=-1), s)

    def tick(self, u: Tensor, z: State) -> State:
        """One slow step: ``z_i = LSTM_s(u_i, z_{i-1})``, ``u`` ``(B, H_f)``."""
        _, z = self.slow(u.unsqueeze(0), z)  # (1, B, H_f) -> (L_s, B, H_s) x2
        return z

    def forward(self, x: Tensor, state: HierarchyState) -> tuple[Tensor, HierarchyState]:
        """The whole stream forward with carried state (validation / test), no truncation.

        ``x`` ``(N, B)`` tokens or ``(N, B, C)`` features, ``N`` a multiple of ``k`` (the state
        holds no phase within a segment). Returns logits ``(N, B, O)`` and the final state.
        """
        if x.shape[0] % self.cfg.k:
            raise ValueError(f"the stream length ({x.shape[0]}) must be a multiple of "
                             f"k={self.cfg.k}")
        s, z, outputs = state.fast, state.slow, []
        for emb in self.encoder(x).split(self.cfg.k):  # (k, B, E) segments
            out, s = self.segment(emb, z[0][-1], s)
            z = self.tick(s[0][-1], z)
            outputs.append(out)
        return self.readout(torch.cat(outputs)), HierarchyState(s, z)

    def task_loss(self, logits: Tensor, window: Window) -> tuple[Tensor, Tensor, Tensor]:
        """``(l, nats, count)``: masked summed nats / loss_norm, and the metric sums."""
        return masked_task_loss(self.step_loss, self.loss_norm, logits, window)

    @staticmethod
    def synthetic_gradient(synthesizer: Synthesizer | None, inputs: Tensor) -> Tensor | None:
        """``M(inputs)`` with no graph, ``(..., S) -> (..., S)``; None without a synthesizer."""
        if synthesizer is None:
            return None
        with torch.no_grad():
            flat = inputs.detach().reshape(-1, inputs.shape[-1])
            return synthesizer(flat).view_as(inputs)


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
    start = detach_state(state, requires_grad=True)
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
    ends, grads = _fast_injections(net, s, u, episode_end, oracle_end, oracle_interface)
    surrogate_backward(loss, ends, grads or None)
    slow.G.extend(_grad_or_zero(m) for m in m_leaves)
    return FastWindowGradients(start, detach_state(s), loss.detach(), nats.detach(), count)


def _fast_injections(
    net: TwoTimescaleRNN, end: State, u: Tensor, episode_end: bool,
    oracle_end: Tensor | None, oracle_interface: Tensor | None,
) -> tuple[list[Tensor], list[Tensor]]:
    """The ``(ends, incoming)`` pairs of ``beta <g_f, s_{w+1}> + beta_if sum_i <ĝ_i, u_i>``."""
    cfg = net.cfg
    g_f = oracle_end
    if g_f is None and not episode_end:
        g_f = net.synthetic_gradient(net.fast_synthesizer, flatten_state(end))
    g_u = oracle_interface
    if g_u is None:
        g_u = net.synthetic_gradient(net.interface_synthesizer, u)  # (n, B, H_f)
        if g_u is not None and episode_end:
            g_u = torch.cat([g_u[:-1], torch.zeros_like(g_u[-1:])])
    ends, grads = [], []
    if g_f is not None:
        ends += list(end)
        grads += [cfg.sg_scale * g for g in unflatten_state(g_f, cfg.fast_layers)]
    if g_u is not None:
        ends.append(u)
        grads.append(cfg.interface_sg_scale * g_u)
    return ends, grads


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
    surrogate_backward(objective, slow.state, g_end, net.cfg.sg_scale)
    return SlowWindowGradients(
        start=slow.start, state=detach_state(slow.state),
        messages=torch.stack(slow.u).detach(),
        message_grads=torch.stack([_grad_or_zero(u) for u in slow.u]),
    )


@dataclass
class HierarchyOptimizers:
    """Five optimizers, no two sharing a parameter; each clips on its own.

    Attributes:
        fast: theta_f (``core``) and ``M_f`` (``synthesizer``), with their clip norms.
        slow: theta_s and ``M_s``.
        interface: ``M_if``'s optimizer (None without an interface synthesizer).
        interface_clip: its clip norm.
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


def adam_optimizers(
    net: TwoTimescaleRNN,
    lr: float = 1e-3,
    synthesizer_lr: float | None = None,
    clip: float | None = None,
    synthesizer_clip: float | None = None,
) -> HierarchyOptimizers:
    """Adam for every part (``synthesizer_lr`` defaults to ``lr``)."""
    slr = lr if synthesizer_lr is None else synthesizer_lr

    def opt(module: nn.Module | None, rate: float) -> torch.optim.Optimizer | None:
        return None if module is None else adam(module.parameters(), rate)

    return HierarchyOptimizers(
        fast=Optimizers(adam(net.fast_parameters(), lr),
                        opt(net.fast_synthesizer, slr), clip, synthesizer_clip),
        slow=Optimizers(adam(net.slow_parameters(), lr),
                        opt(net.slow_synthesizer, slr), clip, synthesizer_clip),
        interface=opt(net.interface_synthesizer, slr),
        interface_clip=synthesizer_clip,
    )


def _step(opt: torch.optim.Optimizer, clip: float | None) -> Tensor:
    """Clips (if ``clip``) and steps ``opt``; returns the gradient norm before clipping."""
    norm = grad_norm([p for g in opt.param_groups for p in g["params"]], clip)
    opt.step()
    return norm.detach()


def _train_synthesizer(
    synthesizer: Synthesizer | None,
    opt: torch.optim.Optimizer | None,
    clip: float | None,
    inputs: Tensor,
    target: Tensor,
) -> tuple[Tensor, Tensor] | None:
    """One regression step ``||M(inputs) - target||^2`` on its own optimizer; None if no M."""
    if synthesizer is None or inputs.shape[0] == 0:
        return None
    if opt is None:
        raise ValueError("a synthesizer is configured but has no optimizer")
    loss, cos = synthesizer_regression(synthesizer, inputs, target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    _step(opt, clip)
    return loss.detach(), cos


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
        opts: the five optimizers.
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
        opts.fast.core.zero_grad(set_to_none=True)
        fw = fast_window_gradients(
            net, window, s, slow, episode_end=episode_end and last,
            oracle_end=None if oracle is None else oracle.fast[w],
            oracle_interface=None if oracle is None else oracle.interface[w * per:(w + 1) * per],
        )
        stats["norm"].append(_step(opts.fast.core, opts.fast.core_clip))
        target = fw.target  # delta_w, (B, S_f)
        stats["target"].append(torch.linalg.vector_norm(target))
        if not (episode_start and w == 0):
            sg = _train_synthesizer(net.fast_synthesizer, opts.fast.synthesizer,
                                    opts.fast.synthesizer_clip, flatten_state(fw.start), target)
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
    opts.slow.core.zero_grad(set_to_none=True)
    sw = slow_window_gradients(net, slow, episode_end=episode_end, oracle_end=oracle_end)
    slow_norm = _step(opts.slow.core, opts.slow.core_clip)
    loss = torch.stack(stats["loss"]).sum()
    zero = torch.zeros_like(loss)
    slow_sg = None if episode_start else _train_synthesizer(
        net.slow_synthesizer, opts.slow.synthesizer, opts.slow.synthesizer_clip,
        flatten_state(sw.start), sw.target)
    n = sw.messages.shape[0] - int(episode_end)  # the final tick's message is read by nothing
    if_sg = _train_synthesizer(
        net.interface_synthesizer, opts.interface, opts.interface_clip,
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
