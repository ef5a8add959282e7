"""What the processes of a decoupled run share besides the pipeline's messages: a training
step's sums (one all-reduce), every group's layers before evaluation (a broadcast from the
process that trains it), and the checkpoint's groups (gathered on rank 0, restored into the
runners). With one process each is a no-op or local.

Checkpoints (written by rank 0, gathered from every process): ``state_dict`` is the whole
model (every group's parameters and synthesizers, least-squares statistics included, from
the process that trains it), and the section ``decoupled`` holds each group's optimizer
states and its runner (carried state, windows not yet run, messages received and not yet
used, outputs waiting for their gradient: ``GroupRunner.state_dict``; every message sent in a
step is received by its end, so nothing is lost on the wire). Resume is exact.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dnirnn.decoupled.pipeline import GroupRunner

SUMS = ("nats", "count", "bad", "updates", "grad_norm", "target_norm", "sg_loss", "sg_cos",
        "fitted", "interface_norm", "interfaced", "interface_sg_loss", "interface_sg_cos",
        "interface_target_norm", "interface_fits")


def step_sums(results, fits, ok: Tensor, like: Tensor) -> dict[str, Tensor]:
    """The step's sums on the device (see ``SUMS``), zeros where nothing happened."""
    zero = torch.zeros((), device=like.device, dtype=torch.float32)

    def total(values) -> Tensor:
        values = [v.detach().float() for v in values]
        return torch.stack(values).sum() if values else zero

    interfaced = [r for r in results if r.interfaced]
    return {
        "nats": total(r.nats for r in results), "count": total(r.count for r in results),
        "bad": total([~r.finite for r in results] + [~ok]
                     + [~torch.isfinite(f.loss) for f in fits]),
        "updates": zero + len(results), "grad_norm": total(r.grad_norm for r in results),
        "target_norm": total(r.target_norm for r in results),
        "sg_loss": total(r.sg_loss for r in results), "sg_cos": total(r.sg_cos for r in results),
        "fitted": zero + sum(r.fitted for r in results),
        "interface_norm": total(r.interface_norm for r in interfaced),
        "interfaced": zero + len(interfaced),
        "interface_sg_loss": total(f.loss for f in fits),
        "interface_sg_cos": total(f.cos for f in fits),
        "interface_target_norm": total(f.target_norm for f in fits),
        "interface_fits": zero + len(fits),
    }


def reduce_sums(sums: dict[str, Tensor], world_size: int) -> dict[str, Tensor]:
    """Every process's step sums added up (one all-reduce; the loss lives in the last group's
    process)."""
    vec = torch.stack([sums[k] for k in SUMS])
    if world_size > 1:
        torch.distributed.all_reduce(vec)
    return dict(zip(SUMS, vec))


def share_parameters(groups: nn.ModuleList, world_size: int) -> None:
    """Every group's layers from the process that trains it (rank g), to every process."""
    if world_size <= 1 or not torch.distributed.is_initialized():
        return
    for g, group in enumerate(groups):
        for t in group.layers.state_dict().values():
            torch.distributed.broadcast(t, src=g)


def save_groups(checkpoint: dict[str, Any], runners: list[GroupRunner], groups: nn.ModuleList,
                world_size: int, global_rank: int) -> None:
    """Puts every group's parameters into ``checkpoint["state_dict"]`` and its optimizers and
    runner into ``checkpoint["decoupled"]`` (on rank 0, gathered from every process; the
    other ranks' ``checkpoint`` is left as it is)."""
    mine = {}
    for r in runners:
        mine[r.g] = {"params": {k: v.detach().cpu() for k, v
                                in groups[r.g].state_dict().items()},
                     "optimizers": _optimizer_states(r), "runner": r.state_dict()}
    if world_size > 1:
        every = [None] * world_size if global_rank == 0 else None
        torch.distributed.gather_object(mine, every, dst=0)
        if every is None:
            return
        mine = {g: v for part in every for g, v in part.items()}
    for g, saved in mine.items():
        checkpoint["state_dict"].update({f"groups.{g}.{k}": v
                                         for k, v in saved.pop("params").items()})
    checkpoint["decoupled"] = {"groups": [mine.get(g) for g in range(len(groups))]}


def restore_runners(runners: list[GroupRunner], decoupled: dict[str, Any]) -> None:
    """Each runner's optimizers and state from a checkpoint's ``decoupled`` section."""
    for r in runners:
        saved = decoupled["groups"][r.g]
        if saved is not None:
            _load_optimizers(r, saved["optimizers"])
            r.load_state_dict(saved["runner"])


def _parts(r: GroupRunner) -> dict[str, Any]:
    opts = r.opts
    return {"core": opts.core.core, "synthesizer": opts.core.synthesizer,
            "interface": None if opts.interface is None else opts.interface.synthesizer}


def _optimizer_states(r: GroupRunner) -> dict[str, Any]:
    return {k: None if o is None else o.state_dict() for k, o in _parts(r).items()}


def _load_optimizers(r: GroupRunner, states: dict[str, Any]) -> None:
    for k, o in _parts(r).items():
        if o is not None and states.get(k) is not None:
            o.load_state_dict(states[k])
