"""``DNIModule``: one LSTM core trained by the DNI window update (``dnirnn.dni``).

What every dnirnn model shares (carried state, positions-based data, the finiteness check,
evaluation, exact-resume checkpoint hooks) is ``RecurrentModule``'s (``dnirnn.recurrent``).

Data parallel (``trainer.strategy=ddp``, ``DNIModule``): each process trains on its shard of
the global batch (``task.shard``); the engine steps the raw optimizers, so Lightning's DDP
reducer is not used (it is inert under manual optimisation) and the replicas are kept
identical here, by gradient hooks (``register_post_accumulate_grad_hook``) that all-reduce
every gradient as soon as backward accumulates it, i.e. before the engine clips and steps:

- ``loss_norm`` keeps the GLOBAL batch size, so the task term and the bootstrapped target
  ``delta_k = s_k.grad`` have the single-process scale; core gradients are SUMMED over
  processes (= the gradient of the global-batch objective, clipped on the global norm). The
  Aux term is a mean over the local batch, so its weight is divided by the world size.
- the synthesizer loss is a mean over the local batch: its gradients are AVERAGED.

Hence a DDP run equals single-process training on the global batch (up to float
summation order; not with dropout, whose masks are drawn per process). The carried state is
gathered across processes into the checkpoint (global layout) and sliced back on load.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from dnirnn.dni import train_span
from dnirnn.engine.build import (
    EngineSpec,
    Parts,
    assemble,
    engine_optimizers,
    make_optimizers,
    make_parts,
)
from dnirnn.model import State, Window, WindowResult, split_windows
from dnirnn.optim import Optimizers, advance, build_scheduler, on_validation
from dnirnn.options import PHASE_CONTEXT, check_dni, check_flat, need
from dnirnn.recurrent import RecurrentModule
from dnirnn.tasks import TASKS, Batch, CopyTask

__all__ = ["DNIModule"]


class DNIModule(RecurrentModule):
    """Trains an LSTM with truncated BPTT and synthetic gradients.

    The flat options are the ones typed most; the others are in groups (``dnirnn.options``):
    ``core`` (``CoreOptions``), ``synthesizer`` (``SynthesizerOptions``), ``targets``
    (``TargetOptions``) and ``optim`` (``OptimOptions``): ``--model.synthesizer.fit=rls``.
    Every option but ``depth`` and ``update_every`` is ``RecurrentModule``'s (every model
    takes them).

    Args:
        depth: the windows each update's backward runs through (docs/design.md §1): 1, the
            window's own; K > 1, TBPTT(T, K·T), and with ``dni`` or ``oracle`` the hybrid,
            whose synthetic gradient credits only what the K windows do not reach. Holds K
            windows' graphs (as ``targets.horizon`` K does).
        update_every: the windows whose gradients are summed into one update of the core: 1
            (every window: the paper, TBPTT), U, or "span" (one update a training step: once
            an episode on the copy tasks, as full BPTT; with the oracle, full BPTT's
            gradient). Holds no more memory (the gradient's buffer exists anyway).
        boundary: "tbptt", "dni", "dni_aux" or "oracle" (see ``dnirnn.dni``).
        lr: core learning rate (of ``optim.optimizer``; the schedule anneals it).
        synthesizer: the synthesizer M and its fit (``SynthesizerOptions``; ``dni``, ``dni_aux``).
    """

    trains_on_tail = True  # (a shorter last window is the mean over its own tokens)

    train_keys = {k: k for k in ("sg_loss", "aux_loss", "sg_norm", "target_norm", "sg_cos",
                                 "grad_norm")}
    fit_keys = {"sg_loss", "sg_cos"}  # means over the boundaries fitted (``fitted``)
    update_keys = {"grad_norm"}  # the mean over the core's updates (``update_every``)

    def __init__(self, depth: int = 1, update_every: int | str = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_options(locals())
        hp = self.hparams
        need(hp.task in TASKS, "model.task", hp.task, f"must be one of {tuple(TASKS)}")
        check_flat(hp, ("depth",))
        check_dni(hp.boundary, self.synthesizer_options, self.targets_options, depth,
                  update_every)
        self.spec = EngineSpec(hp.task, hp.input_size, hp.output_size, hp.hidden_size,
                               hp.num_layers, hp.boundary, depth, update_every, hp.lr,
                               self.core_options, self.synthesizer_options,
                               self.targets_options, self.optim_options)
        # Outside a Trainer (tests, scripts) the engine has the loss scale 1; ``setup`` builds
        # it again, whole, from the same parts once the task and the processes are known.
        self.engine = assemble(self.spec, make_parts(self.spec))
        self._opts: Optimizers | None = None

    def check_task(self, task: Any, world: int) -> None:
        super().check_task(task, world)
        if self.spec.synthesizer.context == "phase" and not isinstance(task, CopyTask):
            raise ValueError("model.synthesizer.context: 'phase' needs a copy / repeat-copy "
                             "task (it marks the input and answer phases); use 'none'")
        if self.hparams.depth > 1 and world > 1:
            raise ValueError("model.depth > 1 runs in one process (its deeper backward adds "
                             "gradients that the data-parallel all-reduce does not see): use "
                             "--trainer.devices=1, or --model.depth=1")
        if self.hparams.update_every != 1 and world > 1:
            raise ValueError("model.update_every runs in one process (data parallel averages "
                             "each window's gradient, not their sum): use --trainer.devices=1, "
                             "or --model.update_every=1")

    def configure_task(self, world: int) -> None:
        e = self.engine  # (the parts made in __init__; the loss scale of the global batch)
        self.engine = assemble(
            self.spec, Parts(e.core, e.synthesizer, e.guard, e.aux),
            loss_norm=self.task.loss_norm(self.hparams.window), world=world,
            resumable=not self.task.episodic,  # (kept windows cross steps: streams)
            rank=self.trainer.global_rank if world > 1 else 0)

    def configure_optimizers(self):
        o = self.spec.optim
        opts = make_optimizers(self.engine, self.spec)
        core = opts[0]
        schedule = build_scheduler(core, o.lr_scheduler, o.lr_scheduler_args)
        if schedule is None:
            return opts if len(opts) > 1 else core
        # (Lightning saves and restores it; it is stepped here, by the hooks below)
        return opts, [{"scheduler": schedule, "interval": o.lr_scheduler_interval}]

    def _schedule(self) -> Any:
        """The core's learning-rate schedule, or None."""
        configs = self.trainer.lr_scheduler_configs if self._trainer is not None else []
        return configs[0].scheduler if configs else None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """An epoch or step schedule catches up with its counter before the step trains
        (``dnirnn.optim.advance``: the same state after a resume)."""
        schedule = self._schedule()
        if schedule is not None and not on_validation(schedule):
            t = self.trainer
            advance(schedule, t.current_epoch if self.spec.optim.lr_scheduler_interval == "epoch"
                    else t.global_step)

    def on_validation_epoch_end(self) -> None:
        """A plateau schedule steps on the validation loss of each validation of a fit (not
        the sanity check; before that validation's checkpoint is written)."""
        super().on_validation_epoch_end()
        schedule = self._schedule()
        if on_validation(schedule) and self.trainer.state.fn == "fit" \
                and not self.trainer.sanity_checking and "nats" in self._eval:
            schedule.step(float(self.task.metrics(self._eval["nats"], self._eval["count"])["loss"]))

    def _optimizers(self) -> Optimizers:
        if self._opts is None:
            opts = self.optimizers()
            opts = opts if isinstance(opts, list) else [opts]
            # the engine steps the raw optimizers; no Lightning wrapper
            self._opts = engine_optimizers(self.spec, [o.optimizer for o in opts])
        return self._opts

    # ---- engine hooks -------------------------------------------------------------------

    def zero_state(self, batch: int) -> State:
        return self.engine.core.zero_state(batch)

    def _sync_gradients(self) -> list[Any]:
        """Under DDP, all-reduces each gradient as backward accumulates it (see the module
        docstring): core gradients summed, synthesizer gradients averaged."""
        world = self.trainer.world_size
        if world <= 1 or not torch.distributed.is_initialized():
            return []
        opts = self._optimizers()

        def reducer(scale: float):
            def hook(p: Tensor) -> None:
                torch.distributed.all_reduce(p.grad)
                if scale != 1.0:
                    p.grad.mul_(scale)
            return hook

        return [p.register_post_accumulate_grad_hook(reducer(scale))
                for params, scale in ((opts._core_params, 1.0), (opts._synth_params, 1 / world))
                for p in params]

    def span_step(self, batch: Batch) -> Callable[[], tuple[list[WindowResult], State]]:
        return functools.partial(
            train_span, self.engine, self._optimizers(), self.windows(batch), self.carried,
            reset=batch.reset, last=batch.last, all_reduce=self._all_reduce())

    def windows(self, batch: Batch) -> list[Window]:
        """The step's windows, each with its boundary position and cDNI context."""
        windows = split_windows(batch.x, batch.y, self.hparams.window, batch.mask,
                                self.task.loss_norm)
        contexts = self.contexts(len(windows), batch.x)
        for k, w in enumerate(windows):
            w.position = k if self.task.episodic else 0
            w.context = None if contexts is None else contexts[k]
        return windows

    def contexts(self, windows: int, x: Tensor) -> Tensor | None:
        """cDNI context at boundaries k = 0..K-1 of an episode of K windows: ``(K, B, C)``.

        "phase" (copy tasks): ``[input phase, answer phase, k / K]``, where the boundary is
        in the answer phase once the pattern and count have been read (step k*T is at or
        past the first answer step). Built from Python numbers with one host-to-device copy
        per step; each window gets a view.
        """
        if self.spec.synthesizer.context == "none" or self.engine.synthesizer is None:
            return None
        rows = []
        for k in range(windows):
            answer = float(self.task.answer_phase(k * self.hparams.window))
            rows.append([1.0 - answer, answer, k / windows])
        table = torch.tensor(rows, dtype=x.dtype).to(x.device)  # (K, C)
        return table[:, None, :].expand(windows, x.shape[1], PHASE_CONTEXT)

    def _all_reduce(self):
        """In-place sum over DDP ranks (the least-squares statistics), or None."""
        if self.trainer.world_size <= 1 or not torch.distributed.is_initialized():
            return None
        return torch.distributed.all_reduce

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.engine.targets is not None:  # horizon targets in flight (streams)
            checkpoint["dnirnn"]["horizon"] = self.engine.targets.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.engine.targets is not None:
            self.engine.targets.load_state_dict(checkpoint["dnirnn"].get("horizon", {}))

    def eval_forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        logits, _, state = self.engine.core(x, state)
        return logits, state

    def task_loss(self, logits: Tensor, window: Window) -> tuple[Tensor, Tensor, Tensor]:
        return self.engine.task_loss(logits, window)
