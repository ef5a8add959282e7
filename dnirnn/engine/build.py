"""The single core's engine and its optimizers, built from the options (``dnirnn.options``).

``build(spec, loss_norm=...)`` returns ``(DNIRNN, Optimizers)``: what the Lightning module,
the benchmark, the cost script and a loop of one's own drive with ``dnirnn.dni.train_span``.
The parts are made in one fixed order (the core, its forget-gate bias, the synthesizer, the
guard, the Aux head), so a seed gives the same initial weights however the engine is used;
``assemble`` puts already-made parts together (no RNG drawn) once the run's loss scale and
processes are known.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
from torch import nn

from dnirnn.dni import DNIRNN
from dnirnn.hierarchy import init_forget_bias
from dnirnn.model import CoreConfig, LSTMCore
from dnirnn.optim import Optimizers, adam, build_optimizer
from dnirnn.options import (
    PHASE_CONTEXT,
    CoreOptions,
    OptimOptions,
    SynthesizerOptions,
    TargetOptions,
)
from dnirnn.synthesizers import NormGuard, build_synthesizer
from dnirnn.tasks import TASKS, TOKEN_TASKS


@dataclass(frozen=True)
class EngineSpec:
    """The task's shape and the model's options (``DNIModule``'s, docs/design.md §8)."""

    task: str
    input_size: int
    output_size: int
    hidden_size: int = 256
    num_layers: int = 1
    boundary: str = "dni"
    depth: int = 1
    update_every: int | str = 1
    lr: float = 1e-3
    core: CoreOptions = field(default_factory=CoreOptions)
    synthesizer: SynthesizerOptions = field(default_factory=SynthesizerOptions)
    targets: TargetOptions = field(default_factory=TargetOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)


class Parts(NamedTuple):
    core: LSTMCore
    synthesizer: nn.Module | None
    guard: NormGuard | None
    aux: nn.Module | None


def make_parts(spec: EngineSpec) -> Parts:
    """The modules with parameters, in the one order that draws the RNG."""
    c = spec.core
    core = LSTMCore(CoreConfig(spec.input_size, spec.output_size, spec.hidden_size,
                               spec.num_layers, embed=spec.task in TOKEN_TASKS,
                               embed_size=c.embed_size, dropout=c.dropout, tied=c.tied,
                               init_range=c.init_range))
    init_forget_bias(core.lstm, c.forget_bias)
    synth = guard = aux = None
    if spec.boundary in ("dni", "dni_aux"):
        s = spec.synthesizer
        synth = build_synthesizer(core.state_size, s,
                                  context_size=PHASE_CONTEXT if s.context == "phase" else 0)
        if s.guard is not None:
            guard = NormGuard(s.positions, s.guard)
    if spec.boundary == "dni_aux":  # the Aux head A: o_t (H) -> predicted g_{k+1} (S)
        aux = nn.Linear(spec.hidden_size, core.state_size)
    return Parts(core, synth, guard, aux)


def assemble(spec: EngineSpec, parts: Parts, *, loss_norm: float = 1.0, world: int = 1,
             resumable: bool = False, rank: int = 0) -> DNIRNN:
    """The engine from made parts. ``loss_norm``: the objective's constant divisor (the
    task's, of the global batch); under DDP (``world`` processes) the Aux weight is divided
    by the world size and a least-squares synthesizer knows its ``rank``; ``resumable``:
    kept windows record what rebuilds them (streams)."""
    if hasattr(parts.synthesizer, "rank"):
        parts.synthesizer.rank = rank
    targets = replace(spec.targets, aux_weight=spec.targets.aux_weight / world)
    return DNIRNN(parts.core, TASKS[spec.task], loss_norm, spec.boundary, parts.synthesizer,
                  targets, parts.guard, aux=parts.aux, resumable=resumable, depth=spec.depth,
                  update_every=spec.update_every)


def make_optimizers(net: DNIRNN, spec: EngineSpec) -> list[torch.optim.Optimizer]:
    """The core's optimizer (``optim``) and, for a synthesizer fitted by Adam, its own."""
    opts = [build_optimizer(net.core_parameters(), spec.optim.optimizer, spec.lr,
                            spec.optim.optimizer_args)]
    if net.synthesizer is not None and list(net.synthesizer.parameters()):
        # (none for tbptt / oracle, or a synthesizer solved in closed form)
        opts.append(adam(net.synthesizer.parameters(), spec.synthesizer.lr))
    return opts


def engine_optimizers(spec: EngineSpec, opts: list[torch.optim.Optimizer]) -> Optimizers:
    """The raw optimizers as the engine steps them, each with its own clip."""
    return Optimizers(opts[0], opts[1] if len(opts) > 1 else None, spec.optim.clip,
                      spec.synthesizer.clip)


def build(spec: EngineSpec, *, loss_norm: float = 1.0, resumable: bool = False
          ) -> tuple[DNIRNN, Optimizers]:
    """The engine and its optimizers, in one process."""
    net = assemble(spec, make_parts(spec), loss_norm=loss_norm, resumable=resumable)
    return net, engine_optimizers(spec, make_optimizers(net, spec))
