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

from typing import Any

import torch
from torch import Tensor

from dnirnn.dni import DNIRNN, train_span
from dnirnn.hierarchy import init_forget_bias
from dnirnn.lit_config import CONTEXTS, PHASE_CONTEXT, validate_dni_args
from dnirnn.model import CoreConfig, LSTMCore
from dnirnn.optim import (
    Optimizers,
    adam,
    advance,
    build_optimizer,
    build_scheduler,
    on_validation,
)
from dnirnn.recurrent import TASKS, TOKEN_TASKS, NonFiniteLossError, RecurrentModule
from dnirnn.state import State
from dnirnn.synthesizers import NormGuard, build_synthesizer
from dnirnn.tasks import Batch, CopyTask
from dnirnn.window import Window, WindowResult, split_windows

__all__ = ["CONTEXTS", "TASKS", "TOKEN_TASKS", "DNIModule", "NonFiniteLossError",
           "RecurrentModule"]


class DNIModule(RecurrentModule):
    """Trains an LSTM with truncated BPTT and synthetic gradients.

    Args:
        task: "lm" (token streams), "copy" (episodes) or "recall" (token episodes); linked
            from the data module.
        input_size: vocabulary size (lm, recall) or observation channels (copy); linked.
        output_size: vocabulary size (lm, recall) or target channels (copy); linked.
        hidden_size: LSTM units per layer.
        num_layers: stacked LSTM layers.
        embed_size: embedding width (token tasks); defaults to hidden_size.
        dropout: dropout on embedding, between layers and before the readout.
        tied: the readout's weight is the embedding's (token tasks; needs embed_size ==
            hidden_size), as word_language_model's ``--tied``.
        init_range: embedding and readout weights uniform in +-init_range, readout bias 0
            (word_language_model: 0.1); null: PyTorch's initialisation.
        boundary: "tbptt", "dni", "dni_aux" or "oracle" (see ``dnirnn.dni``).
        window: T, the truncation window in steps.
        windows_per_step: K, windows per ``training_step`` for streams (episodes always run
            all their windows in one step).
        sg_scale: beta, the weight of the synthetic gradient (1 = the paper).
        aux_weight: weight of the Aux loss (``dni_aux``).
        oracle_windows: W, windows of look-ahead of the ``oracle`` boundary.
        synthesizer: "linear" or "mlp" (``synthesizer_fit: rls`` needs "linear").
        synthesizer_fit: how the synthesizer is fitted: "adam" (its own Adam on L_SG, per
            window: the paper) or "rls" (exact ridge least squares with exponential
            forgetting, re-solved once per training step: ``dnirnn.synthesizers``).
        synthesizer_positions: P, one synthesizer map per boundary index k within an episode
            (k >= P share map P-1); 1: one shared map (streams always use map 0).
        synthesizer_context: cDNI context appended to the synthesizer's input: "none", or
            "phase" (copy tasks: [input phase, answer phase, k / K] of the boundary).
        rls_forget: ``rls``: weight of a regression pair one training step older, in (0, 1].
        rls_ridge: ``rls``: ridge, relative to the mean diagonal of the normal matrix.
        rls_input: ``rls``: what the maps regress on: "state" (h and c) or "h" (the hidden
            half only: a quarter of the normal matrix, for fewer samples per unknown).
        rls_share: ``rls``: weight in [0, 1] with which a boundary's pairs also join the
            statistics of the neighbouring positions (0: none).
        sg_lambda: null: the synthesizer regresses the one-window bootstrapped target
            delta_k, per window (the paper); λ in [0, 1]: it regresses λ-return targets
            over ``sg_horizon`` windows (λ = 1: the true gradient of those windows' loss,
            bootstrapped with the synthesizer at the horizon).
        sg_horizon: with ``sg_lambda``: H windows of exact credit in the target (the
            H-window truncated λ-return, ready H - 1 windows later; the last H windows'
            graphs are kept: the memory of TBPTT over H * T steps); null: unbounded, to
            the episode's end (streams: the training step's end): full BPTT for the
            synthesizer, whose memory grows with the episode (``dnirnn.engine.kept``).
        sg_guard: cap each synthetic gradient's norm at this multiple of the running RMS
            norm of its position's targets (null: no cap).
        synthesizer_hidden: hidden units of the mlp synthesizer (null: the state size,
            2 * num_layers * hidden_size, so the synthesizer never outgrows the core).
        synthesizer_layers: hidden layers of the mlp synthesizer.
        lr: core learning rate (of ``optimizer``; the schedule anneals it).
        optimizer: the core's optimizer: adam (fused), sgd, any torch.optim class by name
            (AdamW, rmsprop) or a dotted class path (torch.optim.SGD); ``dnirnn.optim``.
        optimizer_args: its keyword arguments but lr ({momentum: 0.9} for sgd), or null.
        lr_scheduler: the core's learning-rate schedule: null (constant), plateau (lr / 4
            when the validation loss does not improve on its best: word_language_model's
            anneal), or a torch.optim.lr_scheduler class by name or class path.
        lr_scheduler_args: its keyword arguments (plateau's defaults: factor 0.25,
            patience 0, threshold 0).
        lr_scheduler_interval: "epoch" or "step": when a schedule other than plateau steps
            (plateau steps after each validation of a fit).
        synthesizer_lr: synthesizer learning rate (its own Adam).
        clip: core gradient-norm clip (null: none).
        synthesizer_clip: synthesizer gradient-norm clip (null: none), never shared with the core.
        eval_chunk: steps per validation/test batch; each runs in forward calls whose logits
            fit ``eval_logits_bytes`` (the result is independent of both).
        forget_bias: initial forget-gate bias of the LSTM (0: PyTorch's init, unchanged).
    """

    trains_on_tail = True  # (a shorter last window is the mean over its own tokens)

    train_keys = {k: k for k in ("sg_loss", "aux_loss", "sg_norm", "target_norm", "sg_cos",
                                 "grad_norm")}
    fit_keys = {"sg_loss", "sg_cos"}  # means over the boundaries fitted (``fitted``)

    def __init__(
        self,
        task: str = "lm",
        input_size: int = 1,
        output_size: int = 1,
        hidden_size: int = 256,
        num_layers: int = 1,
        embed_size: int | None = None,
        dropout: float = 0.0,
        tied: bool = False,
        init_range: float | None = None,
        boundary: str = "dni",
        window: int = 8,
        windows_per_step: int = 8,
        sg_scale: float = 1.0,
        aux_weight: float = 1.0,
        oracle_windows: int = 1,
        synthesizer: str = "mlp",
        synthesizer_fit: str = "adam",
        synthesizer_positions: int = 1,
        synthesizer_context: str = "none",
        rls_forget: float = 0.8,
        rls_ridge: float = 0.1,
        rls_input: str = "state",
        rls_share: float = 0.0,
        sg_lambda: float | None = None,
        sg_horizon: int | None = None,
        sg_guard: float | None = None,
        synthesizer_hidden: int | None = None,
        synthesizer_layers: int = 1,
        lr: float = 1e-3,
        optimizer: str = "adam",
        optimizer_args: dict[str, Any] | None = None,
        lr_scheduler: str | None = None,
        lr_scheduler_args: dict[str, Any] | None = None,
        lr_scheduler_interval: str = "epoch",
        synthesizer_lr: float = 1e-4,
        clip: float | None = 1.0,
        synthesizer_clip: float | None = 1.0,
        eval_chunk: int = 256,
        forget_bias: float = 0.0,
    ) -> None:
        super().__init__()
        validate_dni_args(locals())
        self.save_hyperparameters()
        core = LSTMCore(CoreConfig(input_size, output_size, hidden_size, num_layers,
                                   embed=task in TOKEN_TASKS, embed_size=embed_size,
                                   dropout=dropout, tied=tied, init_range=init_range))
        init_forget_bias(core.lstm, forget_bias)
        synth = guard = None
        if boundary in ("dni", "dni_aux"):
            width = core.state_size if synthesizer_hidden is None else synthesizer_hidden
            context = PHASE_CONTEXT if synthesizer_context == "phase" else 0
            synth = build_synthesizer(
                core.state_size, fit=synthesizer_fit, kind=synthesizer, hidden_size=width,
                hidden_layers=synthesizer_layers, context_size=context,
                positions=synthesizer_positions, forget=rls_forget, ridge=rls_ridge,
                inputs=rls_input, share=rls_share)
            if sg_guard is not None:
                guard = NormGuard(synthesizer_positions, sg_guard)
        self.engine = DNIRNN(core, TASKS[task], 1.0, boundary, synth, sg_scale, aux_weight,
                             oracle_windows, guard, sg_lambda, sg_horizon)
        self._opts: Optimizers | None = None

    def check_task(self, task: Any, world: int) -> None:
        super().check_task(task, world)
        if self.hparams.synthesizer_context == "phase" and not isinstance(task, CopyTask):
            raise ValueError("model.synthesizer_context: 'phase' needs a copy / repeat-copy "
                             "task (it marks the input and answer phases); use 'none'")

    def configure_task(self, world: int) -> None:
        self.engine.aux_weight = self.hparams.aux_weight / world  # see the module docstring
        self.engine.loss_norm = self.task.loss_norm(self.hparams.window)  # global batch
        if self.engine.targets is not None:  # chains cross training steps on streams only
            self.engine.targets.resumable = not self.task.episodic
        if world > 1 and hasattr(self.engine.synthesizer, "rank"):  # least squares under DDP
            self.engine.synthesizer.rank = self.trainer.global_rank

    def configure_optimizers(self):
        hp = self.hparams
        core = build_optimizer(self.engine.core_parameters(), hp.optimizer, hp.lr,
                               hp.optimizer_args)
        opts = [core]
        if self.engine.synthesizer is not None and list(self.engine.synthesizer.parameters()):
            # (none for tbptt / oracle, or a synthesizer solved in closed form)
            opts.append(adam(self.engine.synthesizer.parameters(), hp.synthesizer_lr))
        schedule = build_scheduler(core, hp.lr_scheduler, hp.lr_scheduler_args)
        if schedule is None:
            return opts if len(opts) > 1 else core
        # (Lightning saves and restores it; it is stepped here, by the hooks below)
        return opts, [{"scheduler": schedule, "interval": hp.lr_scheduler_interval}]

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
            advance(schedule, t.current_epoch if self.hparams.lr_scheduler_interval == "epoch"
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
            raw = [o.optimizer for o in opts]  # the engine steps them; no Lightning wrapper
            self._opts = Optimizers(raw[0], raw[1] if len(raw) > 1 else None,
                                    self.hparams.clip, self.hparams.synthesizer_clip)
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

    def run_windows(self, batch: Batch) -> list[WindowResult]:
        results, self.carried = train_span(
            self.engine, self._optimizers(), self.windows(batch), self.carried,
            reset=batch.reset, last=batch.last, all_reduce=self._all_reduce())
        return results

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
        if self.hparams.synthesizer_context == "none" or self.engine.synthesizer is None:
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
