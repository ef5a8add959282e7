r"""The schedule run: each layer group's ticks, its messages, and what it holds between steps.

``GroupRunner`` is one group's side of ``dnirnn.decoupled.schedule.Schedule``: at tick ``τ``
it runs phase A (window ``schedule.window(g, τ)``: take the activation from below, forward,
send the activation up, update, send the gradient down) and phase B (take the gradient from
above for window ``schedule.fitted_window(g, τ)`` and fit ``I_g``), through a transport
(``dnirnn.decoupled.transport``). ``run_step`` drives one training step of the runners that
live in this process, in the same order whether that is every group (the one-process
simulation: a ``LoopbackTransport``) or one (a process per group: ``DistributedTransport``)::

    push the step's K windows to every runner; post the receives of every message the
    neighbours send during the step's K ticks
    for τ in the step's ticks:  phase A of every local runner (groups in order), then phase B
    drain: every runner completes its receives and sends of the step

Phase A of tick τ only takes messages sent at ticks < τ (``lag = 1``) or by a lower group in
the same tick (``lag = 0``), phase B gradients sent in phase A of tick ``τ - delay + lag`` or
earlier; so the order above is valid for one process, and in a process per group each wait
ends as soon as the neighbour has sent. Both runs compute the same floats.

Between steps (after the drain) a runner holds: its carried state ``s^g``, the windows
pushed but not yet run (``g·lag`` of them: their data), the messages received but not yet
used (``Schedule.in_flight``) and the outputs ``o^g_k`` waiting for their gradient (with
``I_g``'s context for them), plus the counters. ``state_dict`` / ``load_state_dict`` carry
exactly that, so a resumed run continues bit for bit; nothing is left on the wire at a step
boundary.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dnirnn.decoupled.layers import Group, GroupOptimizers, GroupResult
from dnirnn.decoupled.schedule import ACTIVATION, GRADIENT, Schedule
from dnirnn.decoupled.transport import message_tag
from dnirnn.model import State, Window

__all__ = ["GroupRunner", "InterfaceFit", "WindowData", "run_step"]


@dataclass
class WindowData:
    """Window ``index`` (counted from the start of training) with its data and flags:
    ``reset``: it starts from the zero state (an epoch's or episode's start); ``end``: the
    episode (epoch) ends after it, so ``g_{k+1} = 0``."""

    index: int
    window: Window
    reset: bool = False
    end: bool = False


@dataclass
class InterfaceFit:
    """Phase B of a tick: ``I_g``'s fit to window ``index``'s target."""

    index: int
    loss: Tensor
    cos: Tensor
    target_norm: Tensor


class GroupRunner:
    """Group ``g``'s side of the schedule (see the module docstring).

    Args:
        index: g.
        group, opts: the group and its optimizers.
        schedule: the shared schedule.
        transport: how messages travel (the same object for every runner of a process).
        log: a list to record every message sent and used, or None (tests: the delays).
        warmup: the windows this group runs before it injects ``ĝ`` (``I_g`` is fitted
            from the start): an early least-squares fit on a few targets of a fast-changing
            map points anywhere, and Adam turns even a small wrong gradient into full steps.
    """

    def __init__(self, index: int, group: Group, opts: GroupOptimizers, schedule: Schedule,
                 transport: Any, log: list | None = None, warmup: int = 0) -> None:
        self.g, self.group, self.opts, self.warmup = index, group, opts, warmup
        self.schedule, self.transport, self.log = schedule, transport, log
        self.state: State | None = None
        self.backlog: deque[WindowData] = deque()  # pushed, not yet run
        self.pushed = 0  # windows pushed so far (the index of the next)
        self.updates = 0  # windows run (θ_g's updates)
        self.inbox: dict[tuple[str, int], Tensor] = {}  # received, not yet used
        self.outputs: dict[int, tuple[Tensor, Tensor | None]] = {}  # (o^g_k, context)
        # waiting for G^g_k
        self._posted: dict[tuple[str, int], tuple[Tensor, Any]] = {}
        self._sending: list[tuple[Tensor, Any]] = []
        self._batch = 0

    # ---- a step ---------------------------------------------------------------------

    def push(self, windows: list[WindowData]) -> None:
        """The step's windows (every group gets every window; it runs it ``g·lag`` ticks
        after group 0)."""
        for w in windows:
            if w.index != self.pushed:
                raise RuntimeError(f"window {w.index} pushed after {self.pushed - 1}")
            self.backlog.append(w)
            self.pushed += 1
            self._batch = w.window.x.shape[1]

    def post(self, ticks: range) -> None:
        """Posts the receives of every message a neighbour sends during ``ticks``."""
        s = self.schedule
        for kind, peer in ((ACTIVATION, self.g - 1), (GRADIENT, self.g + 1)):
            if not 0 <= peer < s.groups or (kind == GRADIENT and self.group.interface is None):
                continue
            for tick in ticks:
                k = s.window(peer, tick)
                if 0 <= k < self.pushed:
                    buffer = torch.empty(self._length(k), self._batch,
                                         self.group.layers.hidden_size,
                                         dtype=self._dtype, device=self._device)
                    handle = self.transport.irecv(buffer, peer, self.g,
                                                  message_tag(kind, k))
                    self._posted[(kind, k)] = (buffer, handle)

    def tick(self, tick: int) -> GroupResult | None:
        """Phase A: the window this group runs at ``tick`` (None while the pipeline fills)."""
        k = self.schedule.window(self.g, tick)
        if not self.backlog or k < self.backlog[0].index:
            return None
        w = self.backlog.popleft()
        if w.index != k:
            raise RuntimeError(f"group {self.g} at tick {tick} should run window {k}, has "
                               f"{w.index} (a schedule error)")
        inputs = w.window.x if self.group.first else self._take(ACTIVATION, k, tick)
        state = self.state
        if w.reset or state is None:
            state = self.group.layers.zero_state(w.window.x.shape[1])
        fw = self.group.forward_window(inputs, state, w.window)
        if not self.group.last:
            self._send(ACTIVATION, self.g + 1, k, fw.out.detach(), tick)
        result = self.group.update(fw, self.opts, episode_start=w.reset, episode_end=w.end,
                                   inject=self.updates >= self.warmup)
        self.updates += 1
        if not self.group.first:
            self._send(GRADIENT, self.g - 1, k, result.input_grad, tick)
        if self.group.interface is not None:
            self.outputs[k] = (result.out, result.context)
        self.state = result.state
        return result

    def finish_tick(self, tick: int) -> InterfaceFit | None:
        """Phase B: fits ``I_g`` to the target of window ``schedule.fitted_window(g, tick)``
        if this group ran it (None otherwise)."""
        k = self.schedule.fitted_window(self.g, tick)
        if self.group.interface is None or k not in self.outputs:
            return None
        target = self._take(GRADIENT, k, tick)
        out, context = self.outputs.pop(k)
        loss, cos = self.group.fit_interface(self.opts, out, target, context)
        return InterfaceFit(k, loss, cos, torch.linalg.vector_norm(target))

    def drain(self) -> None:
        """Completes the step's receives (into the inbox) and sends: nothing stays on the
        wire across a step boundary."""
        for key, (buffer, handle) in self._posted.items():
            handle.wait()
            self.inbox[key] = buffer
        self._posted = {}
        for _, handle in self._sending:
            handle.wait()
        self._sending = []

    # ---- messages -------------------------------------------------------------------

    @property
    def _device(self) -> torch.device:
        return self.group.layers.lstm.weight_hh_l0.device

    @property
    def _dtype(self) -> torch.dtype:
        return self.group.layers.lstm.weight_hh_l0.dtype

    def _length(self, k: int) -> int:
        """Steps of window ``k``: from its data (not yet run) or its output (waiting)."""
        for w in self.backlog:
            if w.index == k:
                return w.window.x.shape[0]
        if k in self.outputs:
            return self.outputs[k][0].shape[0]
        raise RuntimeError(f"group {self.g} expects a message about window {k}, which it "
                           f"neither holds nor waits for (a schedule error)")

    def _send(self, kind: str, dst: int, k: int, tensor: Tensor, tick: int) -> None:
        tensor = tensor.contiguous()
        self._sending.append((tensor, self.transport.isend(tensor, self.g, dst,
                                                           message_tag(kind, k))))
        if self.log is not None:
            self.log.append(("sent", kind, self.g, dst, k, tick, self.updates))

    def _take(self, kind: str, k: int, tick: int) -> Tensor:
        key = (kind, k)
        if key in self.inbox:
            tensor = self.inbox.pop(key)
        elif key in self._posted:
            tensor, handle = self._posted.pop(key)
            handle.wait()
        else:
            raise RuntimeError(f"group {self.g} needs message {key}, never posted (a schedule "
                               f"error)")
        if self.log is not None:
            self.log.append(("used", kind, self.g, None, k, tick, self.updates))
        return tensor

    # ---- checkpoint: what the runner holds between steps ----------------------------

    def state_dict(self) -> dict[str, Any]:
        """Between steps (after ``drain``): everything but the group's and optimizers'
        states, on the CPU."""
        if self._posted or self._sending:
            raise RuntimeError("a runner is checkpointed between steps only (after drain)")

        def cpu(t):
            return None if t is None else t.detach().cpu()

        return {
            "state": None if self.state is None else [cpu(s) for s in self.state],
            "backlog": [{"index": w.index, "reset": w.reset, "end": w.end,
                         "x": cpu(w.window.x), "y": cpu(w.window.y),
                         "mask": cpu(w.window.mask)} for w in self.backlog],
            "pushed": self.pushed, "updates": self.updates,
            "inbox": [(kind, k, cpu(t)) for (kind, k), t in self.inbox.items()],
            "outputs": [(k, cpu(t), cpu(c)) for k, (t, c) in self.outputs.items()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = self._device

        def to(t):
            return None if t is None else t.to(dev)

        self.state = None if state["state"] is None else tuple(to(s) for s in state["state"])
        self.backlog = deque(
            WindowData(b["index"], Window(to(b["x"]), to(b["y"]), to(b["mask"])), b["reset"],
                       b["end"]) for b in state["backlog"])
        self.pushed, self.updates = int(state["pushed"]), int(state["updates"])
        self.inbox = {(kind, int(k)): to(t) for kind, k, t in state["inbox"]}
        self.outputs = {int(k): (to(t), to(c)) for k, t, c in state["outputs"]}
        if self.backlog:
            self._batch = self.backlog[0].window.x.shape[1]


def run_step(runners: list[GroupRunner], windows: list[WindowData]
             ) -> tuple[list[GroupResult], list[InterfaceFit], Tensor]:
    """One training step of the local ``runners`` over ``windows`` (one tick per window):
    the updates made, the interface fits made, and a 0-dim bool tensor: the least-squares
    solves at the step's end are finite (see the module docstring)."""
    first = runners[0].pushed  # (every runner has pushed the same windows)
    ticks = range(first, first + len(windows))
    for r in runners:
        r.push(windows)
        r.post(ticks)
    results, fits = [], []
    for tick in ticks:
        for r in runners:
            res = r.tick(tick)
            if res is not None:
                results.append(res)
        for r in runners:
            fit = r.finish_tick(tick)
            if fit is not None:
                fits.append(fit)
    ok = None
    for r in runners:
        r.drain()
        done = r.group.end_step()
        ok = done if ok is None else ok & done
    return results, fits, ok
