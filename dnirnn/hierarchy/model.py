"""The two-timescale hierarchy's configuration, carried state and network (see
``dnirnn.hierarchy`` for the schedule and the update)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dnirnn.model import State, StepLoss, Window, detach_state, masked_task_loss, zero_state
from dnirnn.options import SynthesizerOptions
from dnirnn.synthesizers import build_synthesizer
from dnirnn.synthesizers.interface import SyntheticGradient


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
    fast_synthesizer: SynthesizerOptions | None = SynthesizerOptions(hidden=256)
    """``M_f``: its kind, fit and widths (``SynthesizerOptions``, which checks them), or None:
    ``g_f = 0`` (plain TBPTT, fast core)."""
    slow_synthesizer: SynthesizerOptions | None = SynthesizerOptions(hidden=256)
    """``M_s``, or None: ``g_s = 0`` (plain TBPTT for the slow core)."""
    interface_synthesizer: SynthesizerOptions | None = SynthesizerOptions(hidden=256)
    """``M_if``, or None: no gradient from the slow level reaches the fast core."""
    sg_scale: float = 1.0
    """``beta``: weight of the recurrent synthetic gradients ``g_f``, ``g_s``."""
    interface_sg_scale: float = 1.0
    """``beta_if``: weight of the interface synthetic gradient ``ĝ_i`` in the fast surrogate."""
    forget_bias: float = 0.0
    """Initial forget-gate bias of both cores (``init_forget_bias``); 0 = PyTorch's init."""

    def __post_init__(self) -> None:
        for name in ("input_size", "output_size", "k", "fast_hidden", "fast_layers",
                     "slow_hidden", "slow_layers", "fast_window", "slow_window"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"hierarchy.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.embed_size is not None and self.embed_size < 1:
            raise ValueError(f"hierarchy.embed_size must be >= 1 or null, got {self.embed_size!r}")
        for name in ("fast_synthesizer", "slow_synthesizer", "interface_synthesizer"):
            if not isinstance(getattr(self, name), SynthesizerOptions | None):
                raise ValueError(f"hierarchy.{name} must be SynthesizerOptions (kind, fit, "
                                 f"hidden, ...) or None, got {getattr(self, name)!r}")
        for name in ("sg_scale", "interface_sg_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"hierarchy.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.fast_window % self.k:  # (the CLI's names: model.window, model.k)
            raise ValueError(f"model.window={self.fast_window}: the fast window T_f must be a "
                             f"multiple of k={self.k}, so that no segment of k steps straddles "
                             f"two fast windows; set model.window to a multiple of {self.k}")
        if self.span % self.fast_window:
            raise ValueError(f"model.slow_window={self.slow_window}: k * slow_window (= "
                             f"{self.span} steps) must be a multiple of the fast window "
                             f"(model.window={self.fast_window}), so that a slow window ends "
                             f"on a fast window boundary")

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


def _synthesizer(options: SynthesizerOptions | None, size: int) -> nn.Module | None:
    """A synthesizer ``size -> size`` as ``options`` say (None: none)."""
    return None if options is None else build_synthesizer(size, options)


class TwoTimescaleRNN(nn.Module):
    """Fast core, slow core, their recurrent synthesizers, the interface synthesizer, readout.

    Args:
        cfg: shape and schedule.
        step_loss: per-step loss ``(logits (T, B, O), y) -> (T, B)`` in nats (``dni.StepLoss``).
        loss_norm: constant divisor of the summed loss, as in ``dni.DNIRNN``.
        parts: an engine whose modules this one takes as they are (the Lightning module
            builds them first, then the engine whole once the task's ``loss_norm`` is known).
    """

    PARTS = ("encoder", "fast", "slow", "readout", "fast_synthesizer", "slow_synthesizer",
             "interface_synthesizer")

    def __init__(self, cfg: HierarchyConfig, step_loss: StepLoss, loss_norm: float,
                 parts: TwoTimescaleRNN | None = None) -> None:
        super().__init__()
        if not loss_norm > 0:
            raise ValueError(f"loss_norm must be > 0, got {loss_norm}")
        self.cfg, self.step_loss, self.loss_norm = cfg, step_loss, float(loss_norm)
        if parts is not None:  # (the modules of an engine made before the task was known)
            for name in self.PARTS:
                setattr(self, name, getattr(parts, name))
            return
        width = cfg.embed_size or cfg.fast_hidden
        self.encoder = (
            nn.Embedding(cfg.input_size, width) if cfg.embed else nn.Linear(cfg.input_size, width)
        )
        self.fast = nn.LSTM(width + cfg.slow_hidden, cfg.fast_hidden, cfg.fast_layers)
        self.slow = nn.LSTM(cfg.fast_hidden, cfg.slow_hidden, cfg.slow_layers)
        self.readout = nn.Linear(cfg.fast_hidden, cfg.output_size)
        init_forget_bias(self.fast, cfg.forget_bias)
        init_forget_bias(self.slow, cfg.forget_bias)
        self.fast_synthesizer = _synthesizer(
            cfg.fast_synthesizer, 2 * cfg.fast_layers * cfg.fast_hidden)  # M_f
        self.slow_synthesizer = _synthesizer(
            cfg.slow_synthesizer, 2 * cfg.slow_layers * cfg.slow_hidden)  # M_s
        self.interface_synthesizer = _synthesizer(
            cfg.interface_synthesizer, cfg.fast_hidden)  # M_if: u (H_f) -> dL/du (H_f)

    def synthesizers(self) -> list[nn.Module]:
        """The configured synthesizers among ``M_f``, ``M_s``, ``M_if``."""
        return [m for m in (self.fast_synthesizer, self.slow_synthesizer,
                            self.interface_synthesizer) if m is not None]

    def end_step(self, all_reduce=None) -> Tensor:
        """Closes a training step for every synthesizer (``SyntheticGradient.end_step``):
        least-squares ones solve here. Returns a 0-dim bool tensor: all are finite."""
        ok = torch.ones((), dtype=torch.bool, device=self.readout.weight.device)
        for m in self.synthesizers():
            ok = ok & SyntheticGradient(m).end_step(all_reduce)
        return ok

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
    def synthetic_gradient(synthesizer: nn.Module | None, inputs: Tensor) -> Tensor | None:
        """``M(inputs)`` with no graph, ``(..., S) -> (..., S)``; None without a synthesizer."""
        if synthesizer is None:
            return None
        return SyntheticGradient(synthesizer)(inputs.reshape(-1, inputs.shape[-1])).view_as(inputs)

