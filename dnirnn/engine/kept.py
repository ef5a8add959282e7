r"""Kept windows: the graphs of the last windows, held for a later backward (``KeptWindows``).

Two consumers (docs/design.md §1, "Targets" and "A deeper backward"): the synthesizer's
H-window λ-return targets (``push``, ``flush``: a chain of state-only vector-Jacobian
products per window, or per block of H windows with ``chain="block"``) and the core's deeper
backward of TBPTT(T, K·T) and the hybrid (``deepen_window``), whose walk also makes the
targets when K = H, λ = 1 and β = 1 (``shared``: no chain). Window j's graph from ``s_j`` to
``s_{j+1}`` is kept (a ``Link``) while a consumer needs it: at most max(H, K) graphs (the
block chain: max(2H - 1, K)), the memory of TBPTT over that many windows. Each kept forward
runs under ``ParameterSnapshot`` (a later VJP uses the parameters the window's data went
through, though the core steps in place) and, where a chain will walk it on the CPU, under
PyTorch's native LSTM kernels (``native_rnn``). On streams the chains cross training steps:
``state_dict`` holds what rebuilds the graphs on resume.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dnirnn.engine.update import Ready, scaled
from dnirnn.model import State, flatten_state, unflatten_state


@contextlib.contextmanager
def native_rnn(device: torch.device):
    """On the CPU, ``nn.LSTM`` uses PyTorch's native kernels instead of oneDNN's fused RNN
    inside the block (a state-only VJP through oneDNN's fused backward would cost a full
    backward: it computes every weight gradient whether asked or not); elsewhere, nothing
    changes."""
    get = getattr(torch._C, "_get_mkldnn_enabled", None)
    if device.type != "cpu" or get is None or not get():
        yield
        return
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(True)


class ParameterSnapshot:
    """A saved-tensor hook pair that stores copies of parameters instead of the parameters.

    Use ``with torch.autograd.graph.saved_tensors_hooks(*snap.hooks()):`` around a forward
    pass: any saved tensor that shares storage with one of ``params`` is replaced by a copy
    (one copy per distinct tensor, kept in ``copies``), so the graph survives in-place
    optimizer steps. Gradients still flow to the parameters themselves.
    """

    def __init__(self, params: Iterable[Tensor]) -> None:
        self._storages = {p.untyped_storage().data_ptr() for p in params}
        self.copies: dict[tuple, Tensor] = {}

    def _pack(self, t: Tensor) -> Tensor:
        if t.untyped_storage().data_ptr() not in self._storages:
            # (a view, not ``t``: a saved output holding itself would be a reference cycle
            # through its own grad_fn that Python's collector cannot see, and leak the graph)
            return t.detach()
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)
        copy = self.copies.get(key)
        if copy is None:
            copy = self.copies[key] = t.detach().clone()
        return copy

    def hooks(self):
        return self._pack, _identity


def _identity(t: Tensor) -> Tensor:
    return t


@dataclass
class Link:
    """One window's graph, kept for the targets of the boundaries before it and for the
    deeper backward of the windows after it.

    Attributes:
        start: ``s_j``, the graph's leaves (their ``.grad`` is ``delta_j``).
        end: ``s_{j+1}`` in the graph (the loss's branch is not kept: see ``_vjp``).
        g_end: ``g_{j+1}`` ``(B, S)`` as injected at the window's end (None: zero).
        state: ``s_j`` flat and detached ``(B, S)``: the regression input of boundary j.
        context: the synthesizer's context at boundary j (or None).
        position: boundary j's index within its episode.
        record: what rebuilds the graph on resume (streams): the window's data, the
            parameter copies and the RNG state before its forward.
        delta: ``delta_j = dl_j/ds_j + beta J_j^T g_{j+1}`` ``(B, S)``, the window's own
            bootstrapped target (default: read off the start leaves' ``.grad``, after the
            window's backward).
        waiting: boundary j's target is still to come (False for an episode's start, kept
            only for the deeper backward).
        acc: where the deeper backward makes the targets (``KeptWindows.shared``): the sum
            so far of what it carried back to ``s_j``.
    """

    start: State
    end: State
    g_end: Tensor | None
    state: Tensor
    context: Tensor | None
    position: int
    record: dict[str, Any] = field(default_factory=dict)
    delta: Tensor | None = None
    waiting: bool = True
    acc: Tensor | None = None

    def __post_init__(self) -> None:
        if self.delta is None:
            self.delta = flatten_state(tuple(torch.zeros_like(s) if s.grad is None else s.grad
                                             for s in self.start))


class KeptWindows:
    """Keeps the last H windows' graphs and hands out the H-window λ-return targets as they
    become ready (see the module docstring): the one object behind kept graphs.

    Args:
        core: the recurrent core whose windows are kept (``core(x, s) -> (logits, out, s)``).
        params: the parameters the core optimizer steps (snapshotted in each kept graph).
        horizon: H windows of the synthesizer's targets: >= 2, or None (unbounded: until the
            episode ends, or ``flush``); 1: no targets are made here (the window's own).
        lam: λ in [0, 1].
        beta: the synthetic gradient's weight.
        resumable: each kept window records what rebuilds its graph on resume (streams,
            whose chains cross training steps).
        depth: K, the windows the core's backward runs through (``deepen``): TBPTT(T, K·T).
        chain: "window" (each boundary its own chain, exactly H windows deep) or "block"
            (one chain per H windows for a block of H boundaries, H .. 2H - 1 deep).
    """

    def __init__(self, core: nn.Module, params: list[Tensor], horizon: int | None,
                 lam: float, beta: float, resumable: bool = False, depth: int = 1,
                 chain: str = "window") -> None:
        if horizon is not None and horizon < 2 and depth < 2:
            raise ValueError(f"KeptWindows needs a horizon >= 2 (or None) or a depth >= 2, "
                             f"got {horizon} and {depth}; H = 1 is the window's own target")
        if depth > 1 and horizon is None:
            raise ValueError("a deeper backward needs a bounded horizon (the kept windows "
                             "must not be flushed at a stream's step end)")
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lambda must be in [0, 1], got {lam}")
        if chain not in ("window", "block") or (chain == "block" and (horizon or 0) < 2):
            raise ValueError(f"chain must be 'window', or 'block' with a horizon >= 2, got "
                             f"{chain!r} with horizon {horizon}")
        self.core, self.params, self.depth, self.chain = core, params, depth, chain
        self.horizon, self.lam, self.beta = horizon, float(lam), float(beta)
        # The hybrid's one walk: with K = H, λ = 1 and β = 1, boundary j's target is the sum
        # of what the deeper backward carries back to s_j (``deepen``): the H windows'
        # losses, and the synthetic gradient H windows on once j is the oldest. No chain.
        self.shared = depth > 1 and depth == horizon and chain == "window" \
            and self.lam == 1.0 and self.beta == 1.0
        self.layers = core.cfg.num_layers
        self.links: deque[Link] = deque()
        self.max_held = 0  # the most window graphs held at once (a diagnostic)
        self.resumable = resumable
        self._pending: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def keeping(self, window):
        """Around a kept window's forward: parameter copies in its graph, the CPU's native
        kernels; yields the record that rebuilds it on resume (empty unless ``resumable``)."""
        record = {}
        if self.resumable:
            record = {"x": window.x, "y": window.y, "mask": window.mask,
                      "params": [p.detach().clone() for p in self.params],
                      "rng": torch.get_rng_state()}
        snap = ParameterSnapshot(self.params)
        with torch.autograd.graph.saved_tensors_hooks(*snap.hooks()), \
                self._kernels(window.x.device):
            yield record

    def _kernels(self, device: torch.device):
        """The CPU's native kernels where state-only VJPs will walk the graph (the targets'
        chain); with no targets to make (TBPTT(T, K·T), the oracle), or with the targets made
        by the deeper backward (``shared``: only the K - 1 transports of the synthetic
        gradient are state-only), the fused kernels: measured faster (results/speed.md)."""
        return native_rnn(device) if self.horizon != 1 and not self.shared else \
            contextlib.nullcontext()

    def __len__(self) -> int:
        return len(self.links)

    def push(self, link: Link, episode_end: bool) -> list[Ready]:
        """Adds window j's link (after its update) and returns the targets now ready:
        boundary ``j - H + 1``'s (``chain="window"``); the oldest H waiting boundaries' once
        2H - 1 windows wait (``"block"``); at an episode end every waiting boundary's. Keeps
        the windows still needed: those waiting for their target, and the last K - 1 for the
        next window's deeper backward."""
        if self.horizon == 1:
            link.waiting = False  # (no targets are made here: kept for the deeper backward only)
        self.links.append(link)
        self.max_held = max(self.max_held, len(self.links))
        if episode_end:
            return self.flush()
        ready = []
        h = self.horizon
        if self.chain == "block":
            ready = self._block()
        elif h is not None and 1 < h <= len(self.links) and self.links[-h].waiting:
            oldest = self.links[-h]
            target = oldest.acc if self.shared and oldest.acc is not None else \
                self._chain(list(self.links)[-h:], keep=False)[-1]
            oldest.waiting = False
            ready = [Ready(oldest.state, target, oldest.context, oldest.position)]
        while self.links and not self.links[0].waiting and len(self.links) > self.depth - 1:
            self.links.popleft()
        return ready

    def flush(self) -> list[Ready]:
        """Every waiting boundary's target, with its horizon cut at the newest window (whose
        own target ``delta_j`` heads the chain): oldest first. Frees every graph."""
        links = list(self.links)
        self.links.clear()
        first = next((i for i, l in enumerate(links) if l.waiting), None)
        if first is None or self.horizon == 1:
            return []
        links = links[first:]
        if self.shared and all(l.acc is not None for l in links):
            targets = [l.acc for l in links]
        else:
            targets = self._chain(links, keep=True)[::-1]
        return [Ready(l.state, t, l.context, l.position) for l, t in zip(links, targets)]

    def _block(self) -> list[Ready]:
        """The block chain: once the waiting windows (a suffix of the kept ones) number
        2H - 1, ONE chain headed by the newest one's ``delta_j`` walks back through all of
        them (2H - 2 state-only products) and the oldest H boundaries take their targets,
        H .. 2H - 1 windows deep (the newest H - 1 wait for the next chain, H windows on:
        each of their values here would be shorter than H)."""
        h = self.horizon
        waiting = [l for l in self.links if l.waiting]
        if len(waiting) < 2 * h - 1:
            return []
        targets = self._chain(waiting, keep=True)[::-1]
        for l in waiting[:h]:
            l.waiting = False
        return [Ready(l.state, t, l.context, l.position) for l, t in zip(waiting, targets[:h])]

    # ---- the deeper backward: TBPTT(T, K·T), and the hybrid's synthetic gradient --------

    def transport(self, start: State, end: State, v: Tensor) -> Tensor:
        """``J^T v`` through one window's graph, states only: ``(B, S)``."""
        got = torch.autograd.grad(list(end), start, unflatten_state(v, self.layers),
                                  retain_graph=True, allow_unused=True)
        return flatten_state(tuple(torch.zeros_like(s) if g is None else g
                                   for g, s in zip(got, start)))

    def deepen_window(self, link: Link) -> Tensor:
        """After window t's backward of its loss alone (``link``, not yet pushed): the
        deeper backward (``deepen``) with ``v_g = J_t^T beta g_{t+1}``. Returns (and sets as
        ``link.delta``) the window's own bootstrapped target ``delta_t = v_loss + v_g``."""
        v_loss, v_g = link.delta, None
        if self.shared:
            link.acc = v_loss  # (its own loss's part; the later windows' come in ``deepen``)
        if link.g_end is not None and self.beta != 0.0:
            v_g = self.transport(link.start, link.end, scaled(link.g_end, self.beta))
        self.deepen(v_loss, v_g)
        link.delta = v_loss if v_g is None else v_loss + v_g
        return link.delta

    def deepen(self, v_loss: Tensor, v_g: Tensor | None = None) -> None:
        """The core's backward continued through the last K - 1 kept windows (before the
        current one is pushed), accumulating into the parameters' ``.grad``.

        ``v_loss`` ``(B, S)``: the gradient of the current window's loss at its start state;
        it credits every window it passes (TBPTT(T, K·T)). ``v_g``: the synthetic gradient's
        part at the same state, ``J_t^T beta g_{t+1}``; it is carried back through the states
        only and credits the parameters of the OLDEST of the K windows alone, once that one
        is K - 1 windows back (so each window receives it exactly once: the hybrid, whose
        synthetic gradient stands for the credit the K windows do not reach).
        """
        prev = list(self.links)[-(self.depth - 1):] if self.depth > 1 else []
        if len(prev) < self.depth - 1:
            v_g = None  # (the oldest of the K windows is before the episode's start)
        for i, link in enumerate(reversed(prev)):
            oldest = i == len(prev) - 1
            v = v_loss if v_g is None or not oldest else v_loss + v_g
            inputs = [*link.start, *self.params]
            got = torch.autograd.grad(list(link.end), inputs, unflatten_state(v, self.layers),
                                      retain_graph=True, allow_unused=True)
            for p, g in zip(self.params, got[len(link.start):]):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
            v_loss = flatten_state(tuple(torch.zeros_like(s) if g is None else g
                                         for g, s in zip(got[:len(link.start)], link.start)))
            if self.shared and link.acc is not None:
                link.acc = link.acc + v_loss  # (at the oldest, with the synthetic gradient's)
            if v_g is not None and not oldest:
                v_g = self.transport(link.start, link.end, v_g)

    def clear(self) -> None:
        self.links.clear()

    def _chain(self, links: list[Link], keep: bool) -> list[Tensor]:
        """``[G_newest, ..., G_oldest]`` down the chain headed by the newest link's delta.
        ``keep=False`` returns only the last value in full (the others are intermediate)."""
        g = links[-1].delta
        out = [g]
        for link in reversed(links[:-1]):
            mixed = g if link.g_end is None or self.lam == 1.0 else \
                self.lam * g + (1.0 - self.lam) * link.g_end
            g = self._vjp(link, mixed if self.beta == 1.0 else self.beta * mixed)
            if keep:
                out.append(g)
        return out if keep else [g]

    def _vjp(self, link: Link, v: Tensor) -> Tensor:
        """``dl_j/ds_j + J_j^T v`` through the kept graph of window j (no parameter .grad).

        By linearity from the window's own target ``delta_j = dl_j/ds_j + J_j^T (beta g_{j+1})``
        (the update injected ``beta g_{j+1}``): ``delta_j + J_j^T (v - beta g_{j+1})``. Only the
        state's path is walked back; the loss's branch (the output layer, the softmax) is not
        kept at all."""
        if link.g_end is not None:
            v = v - (link.g_end if self.beta == 1.0 else self.beta * link.g_end)
        got = torch.autograd.grad(list(link.end), link.start, unflatten_state(v, self.layers),
                                  retain_graph=True, allow_unused=True)
        return link.delta + flatten_state(tuple(torch.zeros_like(s) if g is None else g
                                                for g, s in zip(got, link.start)))

    # ---- exact resume with chains in flight (streams) -------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What rebuilds the waiting windows' graphs (``rebuild``): per waiting window its
        ``record`` (data, parameters, RNG state before its forward), start state, own target
        and injected gradient. Empty between episodes."""
        def cpu(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().cpu()

        links = []
        for l in self.links:
            rec = {k: ([cpu(v) for v in val] if isinstance(val, list) else cpu(val))
                   for k, val in l.record.items()}
            links.append({**rec, "start": [cpu(s) for s in l.start], "delta": cpu(l.delta),
                          "acc": cpu(l.acc), "g_end": cpu(l.g_end), "context": cpu(l.context),
                          "position": l.position, "waiting": l.waiting})
        return {"links": links, "max_held": self.max_held}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.links.clear()
        self._pending = list(state.get("links", []))
        self.max_held = state.get("max_held", 0)
        if self._pending and not all("params" in rec for rec in self._pending):
            raise ValueError("the checkpoint's horizon targets cannot be rebuilt: their "
                             "windows were not recorded")

    @property
    def needs_rebuild(self) -> bool:
        return bool(self._pending)

    def rebuild(self) -> None:
        """Re-runs the waiting windows' forwards after a resume, oldest first, each with the
        parameters and RNG state it had (both restored after), so their graphs are as
        before the checkpoint."""
        pending, self._pending = self._pending, []
        device = self.params[0].device

        def dev(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        for rec in pending:
            start = tuple(s.to(device).requires_grad_(True) for s in rec["start"])
            end = self._forward_as_recorded(rec, start)
            record = {k: rec[k] for k in ("x", "y", "mask", "params", "rng")}
            self.links.append(Link(start, end, dev(rec["g_end"]),
                                   flatten_state(start).detach(), dev(rec["context"]),
                                   rec["position"], record, delta=rec["delta"].to(device),
                                   waiting=rec.get("waiting", True), acc=dev(rec.get("acc"))))

    def _forward_as_recorded(self, rec: dict, start: State) -> State:
        params, device = self.params, self.params[0].device
        now = [p.detach().clone() for p in params]
        rng = torch.get_rng_state()
        try:
            with torch.no_grad():
                for p, v in zip(params, rec["params"]):
                    p.copy_(v.to(device))
            torch.set_rng_state(rec["rng"])
            snap = ParameterSnapshot(params)
            with torch.enable_grad(), self._kernels(device), \
                    torch.autograd.graph.saved_tensors_hooks(*snap.hooks()):
                _, _, end = self.core(rec["x"].to(device), start)
        finally:
            with torch.no_grad():
                for p, v in zip(params, now):
                    p.copy_(v)
            torch.set_rng_state(rng)
        return end
