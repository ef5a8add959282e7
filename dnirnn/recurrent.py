"""The base LightningModule: what every dnirnn model shares (thin, over a pure engine).

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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor

from dnirnn.model import Window
from dnirnn.options import (
    CoreOptions,
    OptimOptions,
    SynthesizerOptions,
    TargetOptions,
    as_hparams,
    check_flat,
)
from dnirnn.tasks import Batch, CopyTask, LanguageModelTask, RecallTask


class NonFiniteLossError(RuntimeError):
    """Raised when a training step produced a non-finite loss or gradient."""


class RecurrentModule(L.LightningModule):
    """What every dnirnn model shares (see the module docstring); not used on its own.

    Its ``__init__`` declares the options every model takes, once: a subclass's ``__init__``
    takes its own and ``**kwargs``, calls ``super().__init__(**kwargs)`` (jsonargparse reads
    these options through that call: the CLI, the help, the recipes) and then
    ``save_options(locals())``; it redeclares one whose default differs and passes it on by
    name. It reads the options from ``hparams`` (the groups, normalised, as
    ``core_options``, ``synthesizer_options``, ``targets_options``, ``optim_options``) and
    implements the engine hooks: ``zero_state``, ``span_step``, ``eval_forward``,
    ``task_loss``, and ``carried_tensors`` / ``carried_from_tensors`` when its state is not
    a plain ``(h, c)``; and ``train_keys``, the per-update diagnostics it logs.

    Args:
        task: "lm" (token streams), "copy" (episodes) or "recall" (token episodes); linked
            from the data module.
        input_size: vocabulary size (lm, recall) or observation channels (copy); linked.
        output_size: vocabulary size (lm, recall) or target channels (copy); linked.
        hidden_size: LSTM units per layer (``HierarchyModule``: of the fast core).
        num_layers: stacked LSTM layers (``HierarchyModule``: of the fast core).
        boundary: the truncation boundary: "dni" (the synthesizer ``synthesizer``), "tbptt"
            (none), and ``DNIModule``'s "dni_aux" and "oracle" (see ``dnirnn.dni``).
        window: T, the truncation window in steps (``HierarchyModule``: the fast core's).
        windows_per_step: K, windows per ``training_step`` for streams (episodes always run
            all their windows in one step).
        lr: the cores' learning rate.
        eval_chunk: steps per validation/test batch; each runs in forward calls whose logits
            fit ``eval_logits_bytes`` (the result is independent of both).
        core: the core's construction (``CoreOptions``).
        synthesizer: the synthesizer M and its fit (``SynthesizerOptions``; ``dni``).
        targets: what the boundary injects and M regresses (``TargetOptions``).
        optim: the core's optimizer, schedule and clip (``OptimOptions``).
    """

    # train/<key> -> the attribute of the per-update results averaged over the step (logged
    # on logged steps only). Every result also has ``nats``, ``count`` and ``finite``.
    train_keys: dict[str, str] = {}
    # the keys among those that are means over the boundaries fitted in the step (each
    # result's ``fitted`` counts them), not over the updates: not logged when none was fitted
    fit_keys: set[str] = set()
    # the keys that are means over the windows that updated the core (each result's
    # ``updated``; every window with ``update_every`` 1)
    update_keys: set[str] = set()
    # evaluation's memory bound: each forward call of validation / test is given as many
    # steps as keep its logits (steps x batch x outputs) within this many bytes (``eval_span``)
    eval_logits_bytes: int = 16 * 2**20
    # whether a training step may be shorter than ``chunk`` (a stream's tail, the data's
    # ``train_tail``); a module whose steps must be whole says no, and ``check_task`` stops
    trains_on_tail: bool = False

    def __init__(self, task: str = "lm", input_size: int = 1, output_size: int = 1,
                 hidden_size: int = 256, num_layers: int = 1, boundary: str = "dni",
                 window: int = 8, windows_per_step: int = 8, lr: float = 1e-3,
                 eval_chunk: int = 256, core: CoreOptions = CoreOptions(),
                 synthesizer: SynthesizerOptions = SynthesizerOptions(),
                 targets: TargetOptions = TargetOptions(),
                 optim: OptimOptions = OptimOptions()) -> None:
        super().__init__()
        core, synthesizer = CoreOptions.of(core), SynthesizerOptions.of(synthesizer)
        targets, optim = TargetOptions.of(targets), OptimOptions.of(optim)
        check_flat(locals(), ("window", "windows_per_step", "hidden_size", "num_layers",
                              "eval_chunk", "input_size", "output_size"))
        self.core_options, self.synthesizer_options = core, synthesizer
        self.targets_options, self.optim_options = targets, optim
        self.save_hyperparameters(as_hparams(locals()))
        self.automatic_optimization = False
        self.task: LanguageModelTask | CopyTask | RecallTask | None = None
        self.carried: Any = None  # the recurrent state carried between steps
        self.data_position = 0  # the next training position (see dnirnn.tasks)
        self.steps_done = 0
        self._eval: dict[str, Any] = {}
        self.last_train_error: Tensor | None = None  # read by the curriculum callback
        self.last_finite: Tensor | None = None
        self._grad_hooks: list[Any] | None = None

    def save_options(self, own: dict[str, Any]) -> None:
        """The hparams (the run's config, the checkpoint's): the options above, then the
        subclass's own, ``own`` (its ``__init__``'s ``locals()``, taken first thing after
        ``super().__init__``: the ``kwargs`` passed on are left out)."""
        own = {k: v for k, v in as_hparams(own).items() if k != "kwargs" and k not in
               self.hparams}
        self.save_hyperparameters({**self.hparams, **own})

    # ---- engine hooks -------------------------------------------------------------------

    def zero_state(self, batch: int) -> Any:
        raise NotImplementedError

    def span_step(self, batch: Batch) -> Callable[[], tuple[Any, Any]]:
        """The engine's training step on one span of data from ``self.carried``, ready to
        call (a ``functools.partial`` of the engine's span function: no frame of the module
        between ``training_step`` and the engine). Calling it trains and returns the
        per-update results (each with ``nats``, ``count``, ``finite`` and the attributes
        named in ``train_keys``) and the state after the span."""
        raise NotImplementedError

    def eval_forward(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        """The forward pass of evaluation: ``(logits, state)``."""
        raise NotImplementedError

    def task_loss(self, logits: Tensor, window: Window) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def check_task(self, task: Any, world: int) -> None:
        """Pre-flight: raises ``ValueError`` if the model cannot train on ``task`` (a
        subclass extends it, calling this first)."""
        if getattr(task, "train_tail", False) and not self.trains_on_tail:
            raise ValueError(
                f"data.init_args.train_tail=true: {type(self).__name__} trains on whole "
                f"{self.chunk}-step spans only; set data.init_args.train_tail=false")

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
        results, self.carried = self.span_step(batch)()
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
        kept = (f"The last checkpoint, {last}, holds the last good (finite) parameters: "
                f"resume from it with --ckpt_path after the fix." if last else
                "No checkpoint had been written yet: start again after the fix.")
        raise NonFiniteLossError(
            f"training step {step} (trainer.global_step, the 'step' of metrics.csv) produced a "
            f"non-finite loss, gradient, synthetic-gradient target or synthesizer loss; "
            f"training stopped before saving it. {kept} Fixes: lower model.lr, set "
            f"model.optim.clip "
            f"/ model.synthesizer.clip, set model.synthesizer.guard (caps the synthetic "
            f"gradient), or "
            f"check the data."
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
        n = [float(r.fitted) for r in results] if self.fit_keys else []
        fitted = torch.tensor(n).to(results[0].loss) / sum(n) if sum(n) else None
        for key, attr in self.train_keys.items():
            if key in self.fit_keys:
                if fitted is None:  # no synthesizer was fitted this step (TBPTT, or none ready)
                    continue
                metrics[f"train/{key}"] = (stacked(attr) * fitted).sum()
            elif key in self.update_keys and not all(r.updated for r in results):
                u = torch.tensor([float(r.updated) for r in results]).to(results[0].loss)
                metrics[f"train/{key}"] = (stacked(attr) * u).sum() / u.sum()
            else:
                metrics[f"train/{key}"] = stacked(attr).mean()
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
        figures = {"curriculum/level": float(t.level), "curriculum/length": float(t.length),
                   "curriculum/repeats": float(t.repeats),
                   "curriculum/max_level_solved": float(t.max_level_solved),
                   "curriculum/max_length_solved": float(t.max_length_solved)}
        if t.grow == "delay":
            figures.update({"curriculum/delay": float(t.delay),
                            "curriculum/max_delay_solved": float(t.max_delay_solved)})
        self.log_dict(figures, on_step=True, prog_bar=False)
        shown = ("delay", t.delay) if t.grow == "delay" else ("level", t.level)  # (the bar)
        self.log(shown[0], float(shown[1]), prog_bar=True, on_step=True, logger=False)

    # ---- evaluation: the whole stream forward with carried state -------------------------

    def validation_step(self, position: int, batch_idx: int) -> None:
        self._eval_step("valid", int(position))

    def test_step(self, position: int, batch_idx: int) -> None:
        self._eval_step("test", int(position))

    def on_validation_epoch_start(self) -> None:
        self._eval = {}

    def on_test_epoch_start(self) -> None:
        self._eval = {}

    def eval_span(self, batch: int) -> int:
        """Steps per evaluation forward call: as many as keep its logits (``steps x batch x
        output_size`` floats) within ``eval_logits_bytes``, at least one, and a multiple of
        the hierarchy's period ``k`` (its slow core ticks every k steps). The loss's
        log-softmax takes as much again. PTB word (10,000 words, batch 10, float32): 41 steps,
        16 MB, where a whole ``eval_chunk`` of 512 steps held 205 MB."""
        hp = self.hparams
        per_step = batch * hp.output_size * torch.finfo(self.dtype).bits // 8
        k = int(hp.get("k", 1))
        return max(1, self.eval_logits_bytes // (per_step * k)) * k

    def _eval_step(self, split: str, position: int) -> None:
        batch = self.task.batch(split, position, self.hparams.eval_chunk)
        if batch.reset or "state" not in self._eval:
            self._eval["state"] = self.zero_state(batch.x.shape[1])
        span = self.eval_span(batch.x.shape[1])
        for t in range(0, batch.x.shape[0], span):  # (the state carried from call to call)
            x, y = batch.x[t : t + span], batch.y[t : t + span]
            mask = None if batch.mask is None else batch.mask[t : t + span]
            logits, self._eval["state"] = self.eval_forward(x, self._eval["state"])
            _, nats, count = self.task_loss(logits, Window(x, y, mask))
            del logits  # (freed before the next call's)
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
