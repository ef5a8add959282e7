"""The LightningModules: thin orchestrators over the pure engines.

``RecurrentModule`` holds what every dnirnn model shares: positions-based data (see
``dnirnn.tasks``), the recurrent state carried on the module, manual optimisation with one
``trainer.global_step`` per ``training_step``, the once-per-step finiteness check, metrics
summed on the device, evaluation of the whole stream with carried state, and checkpoint
hooks that make resume exact (carried state, data position, task/curriculum state, RNG).
``DNIModule`` (here: one LSTM core, ``dnirnn.dni``) and ``HierarchyModule``
(``dnirnn.lit_hierarchy``: two timescales, ``dnirnn.hierarchy``) fill in the engine.

Manual optimisation. Each ``training_step`` receives a *position* (see ``dnirnn.tasks``),
fetches that span of data from the task (already on the device), cuts it into windows of
``window`` steps and runs ``window_update`` on each: streams carry the recurrent state across
windows, steps and batches (reset at epoch start); episodes start from zeros and inject
``g = 0`` at their end. Metrics are summed on the device across the windows; the only host
syncs are Lightning's logging and the finiteness check, once per step.

Non-finite loss or gradients: the engine returns ``finite`` flags per window; they are
reduced on the device and read once per training step. A non-finite step raises
``NonFiniteLossError`` (naming the step) inside ``training_step``, i.e. before the checkpoint
callbacks of that step run, so the last checkpoint on disk holds finite parameters.

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

import lightning as L
import torch
from torch import Tensor

from dnirnn.data import repeat_copy
from dnirnn.dni import (
    BOUNDARIES,
    DNIRNN,
    Optimizers,
    Window,
    WindowResult,
    split_windows,
    window_update,
)
from dnirnn.hierarchy import init_forget_bias
from dnirnn.model import CoreConfig, LSTMCore
from dnirnn.optim import adam
from dnirnn.state import State
from dnirnn.synthesizer import SYNTHESIZER_KINDS, Synthesizer
from dnirnn.tasks import Batch, CopyTask, LanguageModelTask, RecallTask, lm_step_loss

TASKS = {"lm": lm_step_loss, "copy": repeat_copy.step_loss, "recall": lm_step_loss}
TOKEN_TASKS = ("lm", "recall")  # token inputs (an embedding); the others read features


class NonFiniteLossError(RuntimeError):
    """Raised when a training step produced a non-finite loss or gradient."""


class RecurrentModule(L.LightningModule):
    """What every dnirnn model shares (see the module docstring); not used on its own.

    A subclass sets ``hparams`` with at least ``window``, ``windows_per_step``, ``eval_chunk``
    (``save_hyperparameters`` in its ``__init__``) and implements the engine hooks:
    ``zero_state``, ``run_windows``, ``eval_forward``, ``task_loss``, and
    ``carried_tensors`` / ``carried_from_tensors`` when its state is not a plain ``(h, c)``;
    and ``train_keys``, the per-update diagnostics it logs.
    """

    # train/<key> -> the attribute of the per-update results averaged over the step (logged
    # on logged steps only). Every result also has ``nats``, ``count`` and ``finite``.
    train_keys: dict[str, str] = {}

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.task: LanguageModelTask | CopyTask | RecallTask | None = None
        self.carried: Any = None  # the recurrent state carried between steps
        self.data_position = 0  # the next training position (see dnirnn.tasks)
        self.steps_done = 0
        self._eval: dict[str, Any] = {}
        self.last_train_error: Tensor | None = None  # read by the curriculum callback
        self.last_finite: Tensor | None = None
        self._grad_hooks: list[Any] | None = None

    # ---- engine hooks -------------------------------------------------------------------

    def zero_state(self, batch: int) -> Any:
        raise NotImplementedError

    def run_windows(self, batch: Batch) -> Any:
        """Trains on one span of data from ``self.carried``; sets ``self.carried``; returns
        the per-update results (each with ``nats``, ``count``, ``finite`` and the attributes
        named in ``train_keys``)."""
        raise NotImplementedError

    def eval_forward(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        """The forward pass of evaluation: ``(logits, state)``."""
        raise NotImplementedError

    def task_loss(self, logits: Tensor, window: Window) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def check_task(self, task: Any, world: int) -> None:
        """Pre-flight: raises ``ValueError`` if the model cannot train on ``task``."""

    def carried_tensors(self, carried: Any) -> list[Tensor]:
        """The carried state as tensors with the batch in dim 1 (checkpoint layout)."""
        return list(carried)

    def carried_from_tensors(self, tensors: list[Tensor]) -> Any:
        return tuple(tensors)

    # ---- set-up -------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if dm is None or getattr(dm, "task", None) is None:
            raise RuntimeError(f"{type(self).__name__} needs a dnirnn data module "
                               "(CopyDataModule / PTBDataModule / RecallDataModule)")
        self.task = dm.task
        world = self.trainer.world_size
        if world > 1:
            self.task.shard(self.trainer.global_rank, world)
        self.configure_task(world)

    def configure_task(self, world: int) -> None:
        """Called by ``setup`` once ``self.task`` is known (and sharded)."""

    def on_fit_start(self) -> None:
        self.task.to(self.device)

    def on_validation_start(self) -> None:
        self.task.to(self.device)

    def on_test_start(self) -> None:
        self.task.to(self.device)

    @property
    def chunk(self) -> int:
        """Steps of data per training_step for streams: ``window * windows_per_step``."""
        return self.hparams.window * self.hparams.windows_per_step

    def train_positions(self) -> range:
        """The positions the rest of this epoch covers (read when an epoch's iteration starts)."""
        if self.task.episodic:
            per_epoch = self.trainer.datamodule.steps_per_epoch
            return range(self.data_position, (self.data_position // per_epoch + 1) * per_epoch)
        n = self.task.num_batches("train", self.chunk)
        return range(self.data_position if self.data_position < n else 0, n)

    # ---- training -----------------------------------------------------------------------

    def training_step(self, position: int, batch_idx: int) -> None:
        position, step = int(position), self.trainer.global_step
        if self._grad_hooks is None:
            self._grad_hooks = self._sync_gradients()
        batch = self.task.batch("train", position, self.chunk)
        if batch.reset or self.carried is None:
            self.carried = self.zero_state(batch.x.shape[1])
        results = self.run_windows(batch)
        self.data_position, self.steps_done = position + 1, self.steps_done + 1
        self._count_step()
        self._log_train(results)
        self._check_finite(step)

    def _check_finite(self, step: int) -> None:
        """One host sync per step; raises before this step's checkpoint could be written."""
        finite = self.last_finite.float()
        if self.trainer.world_size > 1:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if bool(finite):
            return
        cb = self.trainer.checkpoint_callback
        last = getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "")
        where = f"the last checkpoint, {last}," if last else "no checkpoint was written; any"
        raise NonFiniteLossError(
            f"training step {step} (trainer.global_step, the 'step' of metrics.csv) produced a "
            f"non-finite loss or gradient; training stopped before saving it, so {where} holds "
            f"the last good (finite) parameters. Lower model.lr, set model.clip / "
            f"model.synthesizer_clip, or check the data; then resume with --ckpt_path or "
            f"start again."
        )

    def _sync_gradients(self) -> list[Any]:
        """Gradient all-reduce hooks under DDP (see ``DNIModule``); none by default."""
        return []

    def on_fit_end(self) -> None:
        for h in self._grad_hooks or []:
            h.remove()
        self._grad_hooks = None

    def _count_step(self) -> None:
        # The engine steps the raw optimizers, so Lightning did not count this step; one
        # training_step (K windows) is one step of `trainer.global_step` / `max_steps`.
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()
        progress.increment_completed()

    def _log_train(self, results: list[Any]) -> None:
        """Reduced on the device: the finiteness flag and the task metrics every step (the
        finiteness check and the curriculum read them), the diagnostics on logged steps."""
        def stacked(attr: str) -> Tensor:
            return torch.stack([getattr(r, attr) for r in results])

        self.last_finite = stacked("finite").all()
        metrics = self.task.metrics(stacked("nats").sum(), stacked("count").sum())
        self.last_train_error = metrics.get("bits_per_step")
        if not self._logs_this_step():
            return
        metrics = {f"train/{k}": v for k, v in metrics.items()}
        metrics.update({f"train/{key}": stacked(attr).mean()
                        for key, attr in self.train_keys.items()})
        loss = metrics.pop("train/loss")
        self.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=False)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        if isinstance(self.task, CopyTask):
            self._log_curriculum()

    def _logs_this_step(self) -> bool:
        """Whether Lightning writes this step's metrics (every ``log_every_n_steps``; called
        after ``_count_step``). ``self.log`` costs about 0.1 ms a call on a CPU, more than a
        small window's update, so the other steps skip it; what is logged is unchanged."""
        t = self.trainer
        n = t.log_every_n_steps
        return (n > 0 and t.global_step % n == 0) or t.should_stop

    def _log_curriculum(self) -> None:
        t = self.task
        self.log_dict({"curriculum/level": float(t.level), "curriculum/length": float(t.length),
                       "curriculum/repeats": float(t.repeats),
                       "curriculum/max_level_solved": float(t.max_level_solved)},
                      on_step=True, prog_bar=False)
        self.log("level", float(t.level), prog_bar=True, on_step=True, logger=False)

    # ---- evaluation: the whole stream forward with carried state -------------------------

    def validation_step(self, position: int, batch_idx: int) -> None:
        self._eval_step("valid", int(position))

    def test_step(self, position: int, batch_idx: int) -> None:
        self._eval_step("test", int(position))

    def on_validation_epoch_start(self) -> None:
        self._eval = {}

    def on_test_epoch_start(self) -> None:
        self._eval = {}

    def _eval_step(self, split: str, position: int) -> None:
        batch = self.task.batch(split, position, self.hparams.eval_chunk)
        if batch.reset or "state" not in self._eval:
            self._eval["state"] = self.zero_state(batch.x.shape[1])
        logits, self._eval["state"] = self.eval_forward(batch.x, self._eval["state"])
        _, nats, count = self.task_loss(logits, Window(batch.x, batch.y, batch.mask))
        self._eval["nats"] = self._eval.get("nats", 0.0) + nats
        self._eval["count"] = self._eval.get("count", 0.0) + count

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def _log_eval(self, prefix: str) -> None:
        if "nats" not in self._eval:
            return
        metrics = self.task.metrics(self._eval["nats"], self._eval["count"])
        self.log_dict({f"{prefix}/{k}": v for k, v in metrics.items()}, prog_bar=True)

    # ---- checkpoints: state dicts + everything needed to continue exactly ----------------

    def _world(self) -> int:
        trainer = self._trainer
        return trainer.world_size if trainer is not None else 1

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        carried = None if self.carried is None else self.carried_tensors(self.carried)
        if carried is not None and self._world() > 1:  # every rank dumps; gather the columns
            carried = [torch.cat(self.all_gather(s).unbind(0), dim=1) for s in carried]
        checkpoint["dnirnn"] = {
            "carried": None if carried is None else [s.cpu() for s in carried],
            "data_position": self.data_position,
            "steps_done": self.steps_done,
            "task": self.task.state_dict() if self.task is not None else {},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get("dnirnn")
        if extra is None:
            raise ValueError("not a dnirnn checkpoint: it has no 'dnirnn' section")
        carried = extra["carried"]
        world = self._world()
        if carried is not None and world > 1:  # the global layout: keep this rank's columns
            b, r = carried[0].shape[1] // world, self.trainer.global_rank
            carried = [s[:, r * b : (r + 1) * b] for s in carried]
        self.carried = None if carried is None else self.carried_from_tensors(
            [s.to(self.device) for s in carried])
        self.data_position, self.steps_done = extra["data_position"], extra["steps_done"]
        if self.task is not None:
            self.task.load_state_dict(extra["task"])
        torch.set_rng_state(extra["torch_rng"])
        if extra.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(extra["cuda_rng"])


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
        boundary: "tbptt", "dni", "dni_aux" or "oracle" (see ``dnirnn.dni``).
        window: T, the truncation window in steps.
        windows_per_step: K, windows per ``training_step`` for streams (episodes always run
            all their windows in one step).
        sg_scale: beta, the weight of the synthetic gradient (1 = the paper).
        aux_weight: weight of the Aux loss (``dni_aux``).
        oracle_windows: W, windows of look-ahead of the ``oracle`` boundary.
        synthesizer: "linear" or "mlp".
        synthesizer_hidden: hidden units of the mlp synthesizer (null: the state size,
            2 * num_layers * hidden_size, so the synthesizer never outgrows the core).
        synthesizer_layers: hidden layers of the mlp synthesizer.
        lr: core learning rate (Adam).
        synthesizer_lr: synthesizer learning rate (its own Adam).
        clip: core gradient-norm clip (null: none).
        synthesizer_clip: synthesizer gradient-norm clip (null: none), never shared with the core.
        eval_chunk: steps per validation/test forward call (the result is independent of it).
        forget_bias: initial forget-gate bias of the LSTM (0: PyTorch's init, unchanged).
    """

    train_keys = {k: k for k in ("sg_loss", "aux_loss", "sg_norm", "target_norm", "sg_cos",
                                 "grad_norm")}

    def __init__(
        self,
        task: str = "lm",
        input_size: int = 1,
        output_size: int = 1,
        hidden_size: int = 256,
        num_layers: int = 1,
        embed_size: int | None = None,
        dropout: float = 0.0,
        boundary: str = "dni",
        window: int = 8,
        windows_per_step: int = 8,
        sg_scale: float = 1.0,
        aux_weight: float = 1.0,
        oracle_windows: int = 1,
        synthesizer: str = "mlp",
        synthesizer_hidden: int | None = None,
        synthesizer_layers: int = 1,
        lr: float = 1e-3,
        synthesizer_lr: float = 1e-4,
        clip: float | None = 1.0,
        synthesizer_clip: float | None = 1.0,
        eval_chunk: int = 256,
        forget_bias: float = 0.0,
    ) -> None:
        super().__init__()
        _validate(locals())
        self.save_hyperparameters()
        core = LSTMCore(CoreConfig(input_size, output_size, hidden_size, num_layers,
                                   embed=task in TOKEN_TASKS, embed_size=embed_size,
                                   dropout=dropout))
        init_forget_bias(core.lstm, forget_bias)
        synth = None
        if boundary in ("dni", "dni_aux"):
            width = core.state_size if synthesizer_hidden is None else synthesizer_hidden
            synth = Synthesizer(core.state_size, synthesizer, width,
                                synthesizer_layers)
        self.engine = DNIRNN(core, TASKS[task], 1.0, boundary, synth, sg_scale, aux_weight,
                             oracle_windows)
        self._opts: Optimizers | None = None

    def configure_task(self, world: int) -> None:
        self.engine.aux_weight = self.hparams.aux_weight / world  # see the module docstring
        self.engine.loss_norm = self.task.loss_norm(self.hparams.window)  # global batch

    def configure_optimizers(self):
        core = adam(self.engine.core_parameters(), self.hparams.lr)
        if self.engine.synthesizer is None:
            return core
        synth = adam(self.engine.synthesizer.parameters(), self.hparams.synthesizer_lr)
        return [core, synth]

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
        opts, state = self._optimizers(), self.carried
        windows = split_windows(batch.x, batch.y, self.hparams.window, batch.mask)
        oracle = self.engine.boundary == "oracle"
        results = []
        for k, w in enumerate(windows):
            res = window_update(
                self.engine, opts, w, state,
                episode_start=batch.reset and k == 0,
                episode_end=batch.last and k == len(windows) - 1,
                future=windows[k + 1 :] if oracle else (),
            )
            state = res.state
            results.append(res)
        self.carried = state
        return results

    def eval_forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        logits, _, state = self.engine.core(x, state)
        return logits, state

    def task_loss(self, logits: Tensor, window: Window) -> tuple[Tensor, Tensor, Tensor]:
        return self.engine.task_loss(logits, window)


def _validate(args: dict[str, Any]) -> None:
    """Config checks with messages that name the field and the fix."""
    def need(ok: bool, field: str, msg: str) -> None:
        if not ok:
            raise ValueError(f"model.{field}: {msg} (got {args[field]!r})")

    need(args["task"] in TASKS, "task", f"must be one of {tuple(TASKS)}")
    need(args["boundary"] in BOUNDARIES, "boundary", f"must be one of {BOUNDARIES}")
    need(args["synthesizer"] in SYNTHESIZER_KINDS, "synthesizer",
         f"must be one of {SYNTHESIZER_KINDS}")
    for f in ("window", "windows_per_step", "hidden_size", "num_layers", "oracle_windows",
              "eval_chunk", "input_size", "output_size", "synthesizer_layers"):
        need(isinstance(args[f], int) and args[f] >= 1, f, "must be an integer >= 1")
    need(args["synthesizer_hidden"] is None
         or (isinstance(args["synthesizer_hidden"], int) and args["synthesizer_hidden"] >= 1),
         "synthesizer_hidden", "must be an integer >= 1, or null for the state size")
    for f in ("sg_scale", "aux_weight"):
        need(args[f] >= 0, f, "must be >= 0")
    for f in ("lr", "synthesizer_lr"):
        need(args[f] > 0, f, "must be > 0")
    for f in ("clip", "synthesizer_clip"):
        need(args[f] is None or args[f] > 0, f, "must be > 0, or null for no clipping")
    need(0 <= args["dropout"] < 1, "dropout", "must be in [0, 1)")
