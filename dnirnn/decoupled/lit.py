r"""``DecoupledModule``: a stacked LSTM whose layer groups train decoupled (``dnirnn.decoupled``).

Everything but the engine is ``RecurrentModule``'s (``dnirnn.recurrent``): positions-based
data, one ``trainer.global_step`` per ``training_step``, the finiteness check, evaluation of
the whole stream with carried state, the run folder and its checkpoints.

Processes. With ``trainer.devices: 1`` every group runs in this process (the one-process
simulation of the schedule: ``LoopbackTransport``). With ``trainer.devices: G`` (= ``groups``)
and ``trainer.strategy: layer_parallel`` (``dnirnn.decoupled.parallel``) each process is one
group, rank g = group g, on its own device where there are GPUs; messages go by
``torch.distributed`` isend / irecv. Both run ``dnirnn.decoupled.pipeline.run_step`` over the
same ``Schedule(groups, lag=1, delay=interface.delay)``: the same floats (tested).

Every process builds the whole model from the same seed (so a group starts from the weights
the locked model of that seed has) and trains only its own groups; the other groups' copies
are refreshed from their owners (broadcast) before each validation and test, where every
process runs the whole stack over the whole stream (evaluation is not pipelined: its wall
time is one process's). Per training step one all-reduce of a few numbers gives every
process the step's loss, diagnostics and finiteness (the last group has the loss).
Checkpoints are written by rank 0, gathered from every process; resume is exact. These
collectives: ``dnirnn.decoupled.collective``. The core's optimizers are the module's own, not
Lightning's (their states differ per process).

Metrics: ``train/loss``, ``train/bpc`` (or the task's), ``train/grad_norm`` (mean over the
groups' updates), ``train/sg_loss``, ``train/sg_cos``, ``train/target_norm`` (the temporal
synthesizers, mean over their fits / updates), ``train/interface_sg_loss``,
``train/interface_sg_cos`` (the interface synthesizers' fits to the late true gradients),
``train/interface_norm`` (``||ĝ||``) and ``train/interface_target_norm`` (``||G||``).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from dnirnn.decoupled.collective import (
    reduce_sums,
    restore_runners,
    save_groups,
    share_parameters,
    step_sums,
)
from dnirnn.decoupled.layers import Group, group_optimizers
from dnirnn.decoupled.pipeline import GroupRunner, WindowData, run_step
from dnirnn.decoupled.schedule import Schedule
from dnirnn.decoupled.stack import check_splittable, group_bounds, split_core
from dnirnn.decoupled.transport import DistributedTransport, LoopbackTransport
from dnirnn.hierarchy import init_forget_bias
from dnirnn.model import CoreConfig, LSTMCore, State, Window, masked_task_loss, split_windows
from dnirnn.options import (
    ADAM_ONLY,
    SCALE_ONLY,
    InterfaceOptions,
    OptimOptions,
    SynthesizerOptions,
    TargetOptions,
    agree,
    check_flat,
    need,
)
from dnirnn.recurrent import RecurrentModule
from dnirnn.synthesizers import build_synthesizer
from dnirnn.tasks import TASKS, TOKEN_TASKS, Batch, CopyTask

# the module steps its own optimizers (one set per group and process), so Lightning has none
warnings.filterwarnings("ignore", message=r".*configure_optimizers` returned `None`")


class DecoupledModule(RecurrentModule):
    """A stacked LSTM cut into layer groups joined by interface synthesizers.

    Flat: ``RecurrentModule``'s options (as ``DNIModule``'s) and the cut's; the others in
    ``dnirnn.options``' groups.

    Args:
        num_layers: L, stacked layers.
        groups: G, layer groups (1 <= G <= L; consecutive layers, as equal as can be); with
            more than one process, one group per process (``trainer.devices = G``).
        message_timeout: seconds a process waits for a message before it stops with an
            error naming the group it waited for (a dead peer is reported at once).
        interface: ``I_g`` (``InterfaceOptions``; ``context``: "target", the step's target
            token one-hot, or "none"; ``hidden`` null: hidden_size), or null: no interface
            (the groups below the last then get no gradient; an ablation).
        task: "lm" (token streams, PTB) or "recall"; linked from the data module.
        hidden_size: LSTM units per layer (every layer: the messages have this width).
        boundary: each group's truncation boundary: "dni" (its own temporal synthesizer
            ``M_g``, ``synthesizer``) or "tbptt".
        window: T, the truncation window (every group's).
        windows_per_step: K windows per training step for streams (one tick each).
        lr: θ_g's Adam learning rate.
        core: ``embed_size``, ``init_range``, ``forget_bias`` (``CoreOptions``; no dropout,
            no tied weights across a cut).
        synthesizer: ``M_g``, each group's temporal synthesizer (``SynthesizerOptions``;
            ``hidden`` null: the group's state size).
        targets: ``scale``, β of ``M_g`` (``TargetOptions``).
        optim: ``clip``, each group's gradient-norm clip on its own norm (``OptimOptions``).

    ``group_optimizers`` takes one clip for the synthesizers: with ``dni`` and an interface,
    ``synthesizer.clip`` and ``interface.clip`` must agree.
    """

    UNUSED = {"synthesizer": ("positions", "context", "guard", "rls_input", "rls_share"),
              "interface": ("positions", "guard", "rls_input", "rls_share"),
              "targets": SCALE_ONLY, "optim": ADAM_ONLY}

    def __init__(
        self,
        num_layers: int = 2,
        groups: int = 2,
        message_timeout: float = 300.0,
        interface: InterfaceOptions | None = InterfaceOptions(kind="linear", fit="rls",
                                                              context="target"),
        **kwargs: Any,
    ) -> None:
        super().__init__(num_layers=num_layers, **kwargs)
        interface = InterfaceOptions.of(interface)
        self.save_options(locals())
        hp, core = self.hparams, self.core_options
        _validate(hp, self.synthesizer_options, interface, self.targets_options,
                  self.optim_options)
        self.interface_options = interface
        cfg = CoreConfig(hp.input_size, hp.output_size, hp.hidden_size, num_layers,
                         embed=hp.task in TOKEN_TASKS, embed_size=core.embed_size,
                         dropout=core.dropout, tied=core.tied, init_range=core.init_range)
        check_splittable(cfg)
        group_bounds(num_layers, groups)
        lstm = LSTMCore(cfg)  # (the locked model's initialisation, then cut)
        init_forget_bias(lstm.lstm, core.forget_bias)
        built, s, i = [], self.synthesizer_options, interface
        for layers in split_core(lstm, groups):
            synth = face = None
            if hp.boundary == "dni":
                synth = build_synthesizer(layers.state_size, s)
            if i is not None and layers.readout is None:
                face = build_synthesizer(hp.hidden_size, i, context_size=hp.output_size
                                         if i.context == "target" else 0)
            built.append(Group(layers, TASKS[hp.task], 1.0, synthesizer=synth, interface=face,
                               sg_scale=self.targets_options.scale,
                               interface_scale=1.0 if i is None else i.scale,
                               context="none" if i is None else i.context))
        self.groups = nn.ModuleList(built)
        self.schedule = Schedule(groups, 1, 2 if i is None else i.delay)
        self.owned: list[int] = list(range(groups))
        self._runners: list[GroupRunner] | None = None
        self._restore: dict[str, Any] | None = None

    # ---- set-up -----------------------------------------------------------------------

    def check_task(self, task: Any, world: int) -> None:
        super().check_task(task, world)
        if isinstance(task, CopyTask):
            raise ValueError("model: decoupled layer groups train on token streams (PTB) and "
                             "recall episodes; the copy tasks' curriculum is not supported")
        g = self.hparams.groups
        if world not in (1, g):
            raise ValueError(
                f"trainer.devices: {world} processes for {g} layer groups; a parallel run puts "
                f"one layer group in each process: set --trainer.devices={g}, or 1 to run "
                f"every group in one process (the simulation of the same schedule)")

    def check_trainer(self, trainer: Any) -> None:
        from dnirnn.decoupled.parallel import LayerParallelStrategy

        world = trainer.num_devices * trainer.num_nodes
        if world > 1 and not isinstance(trainer.strategy, LayerParallelStrategy):
            raise ValueError(f"trainer.strategy: decoupled layer groups in {world} processes "
                             f"need --trainer.strategy=layer_parallel (a process per group, "
                             f"point-to-point messages), not {type(trainer.strategy).__name__}")

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if dm is None or getattr(dm, "task", None) is None:
            raise RuntimeError("DecoupledModule needs a dnirnn data module")
        self.task = dm.task  # (not sharded: every process sees the whole batch)
        world = self.trainer.world_size
        self.owned = list(range(self.hparams.groups)) if world == 1 else [
            self.trainer.global_rank]
        norm = self.task.loss_norm(self.hparams.window)  # (the groups whole, with its scale)
        self.groups = nn.ModuleList(
            Group(g.layers, g.step_loss, norm, synthesizer=g.synthesizer, interface=g.interface,
                  sg_scale=g.sg_scale, interface_scale=g.interface_scale, context=g.context)
            for g in self.groups)

    def configure_optimizers(self):
        return None  # (each group's optimizers are built by ``_runner_list``)

    def _runner_list(self) -> list[GroupRunner]:
        if self._runners is not None:
            return self._runners
        hp, world = self.hparams, self.trainer.world_size
        s, i = self.synthesizer_options, self.interface_options
        transport = (LoopbackTransport() if world == 1 else
                     DistributedTransport(self.trainer.global_rank, hp.message_timeout))
        self._runners = []
        for g in self.owned:  # (the synthesizers' one clip: see the class docstring)
            opts = group_optimizers(
                self.groups[g], hp.lr, s.lr, self.optim_options.clip,
                i.clip if i is not None and hp.boundary != "dni" else s.clip,
                None if i is None else i.lr)
            self._runners.append(GroupRunner(g, self.groups[g], opts, self.schedule,
                                             transport, warmup=0 if i is None else i.warmup))
        if self._restore is not None:
            restore_runners(self._runners, self._restore)
            self._restore = None
        return self._runners

    # ---- training ---------------------------------------------------------------------

    def zero_state(self, batch: int) -> list[State]:
        return [g.layers.zero_state(batch) for g in self.groups]

    def span_step(self, batch: Batch) -> Callable[[], tuple[dict[str, Tensor], None]]:
        return functools.partial(self._train_span, batch)

    def _train_span(self, batch: Batch) -> tuple[dict[str, Tensor], None]:
        runners = self._runner_list()
        ws = split_windows(batch.x, batch.y, self.hparams.window, batch.mask)
        base = runners[0].pushed
        data = [WindowData(base + i, w, reset=batch.reset and i == 0,
                           end=batch.last and i == len(ws) - 1) for i, w in enumerate(ws)]
        results, fits, ok = run_step(runners, data)
        # (the carried states are the runners')
        return step_sums(results, fits, ok, self.groups[0].layers.lstm.weight_hh_l0), None

    def _log_train(self, sums: dict[str, Tensor]) -> None:
        """One all-reduce of the step's sums, every step (the loss lives in the last group's
        process); then as ``RecurrentModule._log_train``."""
        s = reduce_sums(sums, self.trainer.world_size)
        self.last_finite = s["bad"] == 0
        metrics = self.task.metrics(s["nats"], s["count"])
        self.last_train_error = metrics.get("bits_per_step")
        if not self._logs_this_step():
            return

        def mean(key: str, n: str) -> Tensor:
            return s[key] / s[n].clamp_min(1.0)

        logged = {f"train/{k}": v for k, v in metrics.items() if k != "loss"}
        logged.update({
            "train/grad_norm": mean("grad_norm", "updates"),
            "train/target_norm": mean("target_norm", "updates"),
            "train/sg_loss": mean("sg_loss", "fitted"), "train/sg_cos": mean("sg_cos", "fitted"),
            "train/interface_norm": mean("interface_norm", "interfaced"),
            "train/interface_sg_loss": mean("interface_sg_loss", "interface_fits"),
            "train/interface_sg_cos": mean("interface_sg_cos", "interface_fits"),
            "train/interface_target_norm": mean("interface_target_norm", "interface_fits"),
        })
        self.log_dict(logged, on_step=True, on_epoch=False, prog_bar=False)
        self.log("train/loss", metrics["loss"], prog_bar=True, on_step=True, on_epoch=False)

    # ---- evaluation: every process runs the whole stack --------------------------------

    def _share_parameters(self) -> None:
        """Every group's layers from the process that trains it, to every process."""
        share_parameters(self.groups, self.trainer.world_size)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._share_parameters()

    def on_validation_start(self) -> None:
        super().on_validation_start()
        self._share_parameters()

    def on_test_start(self) -> None:
        super().on_test_start()
        self._share_parameters()

    def eval_forward(self, x: Tensor, state: list[State]) -> tuple[Tensor, list[State]]:
        new = []
        for group, s in zip(self.groups, state):
            x, s = group.layers(x, s)
            new.append(s)
        return self.groups[-1].layers.logits(x), new

    def task_loss(self, logits: Tensor, window: Window) -> tuple[Tensor, Tensor, Tensor]:
        return masked_task_loss(TASKS[self.hparams.task], self.groups[-1].loss_norm, logits,
                                window)

    # ---- checkpoints: every group's state, gathered on rank 0 --------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        save_groups(checkpoint, self._runners or [], self.groups, self.trainer.world_size,
                    self.trainer.global_rank)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._restore = checkpoint.get("decoupled")
        self._runners = None


def _validate(args: dict[str, Any], synthesizer: SynthesizerOptions,
              interface: InterfaceOptions | None, targets: TargetOptions,
              optim: OptimOptions) -> None:
    """The flat options and what the stack takes from the groups (the cut itself: ``stack``;
    the processes against the groups: ``check_task``)."""
    need(args["task"] in ("lm", "recall"), "model.task", args["task"],
         "decoupled layers train on 'lm' (PTB) or 'recall'")
    need(args["boundary"] in ("dni", "tbptt"), "model.boundary", args["boundary"],
         "must be 'dni' or 'tbptt' (each group's truncation boundary)")
    check_flat(args, ("groups",))  # (and the shared)
    need(args["message_timeout"] > 0, "model.message_timeout", args["message_timeout"],
         "must be > 0 (seconds)")
    by = "DecoupledModule"
    for name, group in (("synthesizer", synthesizer), ("targets", targets), ("optim", optim),
                        ("interface", interface)):
        if group is not None:
            group.unused(DecoupledModule.UNUSED[name], by)
    if interface is not None:
        need(interface.context in ("none", "target"), "model.interface.context",
             interface.context, "must be 'target' (the step's target token, one-hot) or 'none'")
        if args["boundary"] == "dni":
            agree({"synthesizer": synthesizer, "interface": interface}, ("clip",), by)
