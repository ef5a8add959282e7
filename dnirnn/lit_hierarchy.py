r"""``HierarchyModule``: the two-timescale hierarchy (``dnirnn.hierarchy``) in Lightning.

Everything but the engine is ``RecurrentModule``'s (``dnirnn.lit``): positions-based data,
the carried state on the module, one ``trainer.global_step`` per ``training_step``, the
finiteness check, evaluation of the whole stream with carried state, and exact resume (the
checkpoint holds the carried fast AND slow states, the data position, the task state, the
RNG, the optimizers and the least-squares statistics).

A training step takes ``window * windows_per_step`` steps of a stream (or one whole episode)
and cuts it into *spans* of ``k * slow_window`` steps; each span is one ``hierarchy_update``:
its ``k * slow_window / window`` fast window updates, then the slow window update. So
``window`` (T_f) is the fast core's truncation, exactly as ``DNIModule``'s ``window`` is its
single core's, and the slow core sees ``k * slow_window`` steps of true backprop (at one
tick per ``k`` steps). Field names shared with ``DNIModule`` mean the same for the fast core.

Recipe (``recipes/ptb_char_hier_dni.yaml``)::

    model:
      class_path: dnirnn.lit_hierarchy.HierarchyModule
      init_args:
        window: 8            # T_f, fast window (steps)
        k: 4                 # the slow core ticks every k steps
        slow_window: 16      # T_s, slow window (ticks): k * T_s = 64 steps
        hidden_size: 176     # fast core
        slow_hidden: 96      # slow core
        synthesizer: {kind: mlp, hidden: 256}        # M_f (null: TBPTT of the fast core)
        slow_synthesizer: {kind: mlp, hidden: 256}   # M_s
        interface: {kind: mlp, hidden: 256, scale: 0.1}  # M_if
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from dnirnn.hierarchy import (
    HierarchyConfig,
    HierarchyOptimizers,
    HierarchyResult,
    HierarchyState,
    TwoTimescaleRNN,
    train_span,
)
from dnirnn.model import Window, split_windows
from dnirnn.optim import Optimizers, adam
from dnirnn.options import (
    ADAM_ONLY,
    SCALE_ONLY,
    CoreOptions,
    InterfaceOptions,
    OptimOptions,
    SlowSynthesizerOptions,
    SynthesizerOptions,
    TargetOptions,
    check_flat,
    need,
)
from dnirnn.recurrent import RecurrentModule
from dnirnn.tasks import TASKS, TOKEN_TASKS, Batch, CopyTask

# train/<key>: the fast core's keys mean what DNIModule's mean for its single core.
RESULT_KEYS = {
    "sg_loss": "fast_sg_loss", "sg_cos": "fast_sg_cos", "target_norm": "fast_target_norm",
    "grad_norm": "fast_grad_norm", "slow_sg_loss": "slow_sg_loss",
    "slow_sg_cos": "slow_sg_cos", "slow_grad_norm": "slow_grad_norm",
    "interface_sg_loss": "interface_sg_loss", "interface_sg_cos": "interface_sg_cos",
}


class HierarchyModule(RecurrentModule):
    """Trains a fast and a slow LSTM linked by synthetic gradients (``dnirnn.hierarchy``).

    The flat options are ``RecurrentModule``'s (as ``DNIModule``'s, for the fast core) and
    the hierarchy's shape; the others are the groups of ``dnirnn.options``:
    ``--model.interface.scale=0.1``.

    Args:
        k: tick period: the slow core ticks once every ``k`` steps.
        slow_hidden: slow LSTM units per layer (the top-down input ``m`` has this width).
        slow_layers: slow LSTM layers.
        slow_window: T_s, the slow core's truncation window in ticks; ``k * slow_window`` is a
            multiple of ``window``.
        synthesizer: ``M_f``, the fast core's synthesizer (``SynthesizerOptions``; ``dni``).
        slow_synthesizer: ``M_s``, the slow core's (``SlowSynthesizerOptions``), or null.
        interface: ``M_if`` (``InterfaceOptions``: predicts the slow core's gradient on the
            bottom-up message; ``scale`` is β_if), or null: the slow level sends no gradient
            to the fast core.
        task: "lm" (token streams) or "recall" (token episodes); linked from the data module.
            Copy episodes change length with the curriculum and are not supported.
        hidden_size: fast LSTM units per layer (the message ``u`` has this width).
        num_layers: fast LSTM layers.
        boundary: the fast core's truncation boundary: "dni" (its synthesizer ``M_f``,
            ``synthesizer``) or "tbptt" (none: plain TBPTT of the fast core).
        window: T_f, the fast core's truncation window in steps; a multiple of ``k``.
        windows_per_step: fast windows per ``training_step`` for streams; ``window *
            windows_per_step`` must be whole spans (``k * slow_window`` steps).
        lr: learning rate of both cores (Adam; one optimizer per core).
        eval_chunk: steps per validation/test forward call; a multiple of ``k``.
        core: ``embed_size`` and ``forget_bias`` (of both cores) of ``CoreOptions``.
        targets: ``scale``, β of ``M_f`` and ``M_s`` (``TargetOptions``).
        optim: ``clip``, each core's gradient-norm clip (``OptimOptions``).

    Each synthesizer is built from its own group (``HierarchyConfig`` takes the groups as
    they are), with its own Adam (its group's ``lr``) and clip (``clip``), or fitted by least
    squares; each has one position.
    """

    train_keys = RESULT_KEYS
    # what the engine does not take from the groups (each must stay at its default)
    UNUSED = {"core": ("dropout", "tied", "init_range"),
              "synthesizer": ("positions", "context", "layers", "guard", "rls_input",
                              "rls_share"),
              "interface": ("delay", "warmup"),
              "targets": SCALE_ONLY, "optim": ADAM_ONLY}

    def __init__(
        self,
        k: int = 4,
        slow_hidden: int = 128,
        slow_layers: int = 1,
        slow_window: int = 16,
        synthesizer: SynthesizerOptions = SynthesizerOptions(hidden=256),
        slow_synthesizer: SlowSynthesizerOptions | None = SlowSynthesizerOptions(hidden=256),
        interface: InterfaceOptions | None = InterfaceOptions(hidden=256),
        **kwargs: Any,
    ) -> None:
        super().__init__(synthesizer=synthesizer, **kwargs)
        slow_synthesizer = SlowSynthesizerOptions.of(slow_synthesizer)
        interface = InterfaceOptions.of(interface)
        self.save_options(locals())
        hp = self.hparams
        synths = {"synthesizer": self.synthesizer_options if hp.boundary == "dni" else None,
                  "slow_synthesizer": slow_synthesizer,
                  "interface": interface}
        _validate(hp, self.core_options, synths, self.targets_options, self.optim_options)
        self.synths = synths
        m_f, m_s, m_if = synths.values()
        cfg = HierarchyConfig(
            hp.input_size, hp.output_size, k=k, fast_hidden=hp.hidden_size,
            fast_layers=hp.num_layers, slow_hidden=slow_hidden, slow_layers=slow_layers,
            embed=True, embed_size=self.core_options.embed_size, fast_window=hp.window,
            slow_window=slow_window,
            fast_synthesizer=m_f, slow_synthesizer=m_s, interface_synthesizer=m_if,
            sg_scale=self.targets_options.scale,
            interface_sg_scale=1.0 if m_if is None else m_if.scale,
            forget_bias=self.core_options.forget_bias,
        )
        self.engine = TwoTimescaleRNN(cfg, TASKS[hp.task], 1.0)
        self._opts: HierarchyOptimizers | None = None

    @property
    def span(self) -> int:
        """Steps per slow window, ``k * slow_window``: the data of one hierarchy update."""
        return self.engine.cfg.span

    def check_task(self, task: Any, world: int) -> None:
        """The data fits the schedule; raises ValueError naming the field and the fix."""
        super().check_task(task, world)
        if world > 1:
            raise ValueError("trainer.devices / num_nodes: HierarchyModule trains in one "
                             "process (no gradient synchronisation across processes yet); "
                             "set trainer.devices=1")
        if isinstance(task, CopyTask):
            raise ValueError("data: HierarchyModule needs episodes of a fixed length (whole "
                             "slow windows); copy episodes change length with the curriculum. "
                             "Use RecallDataModule or PTBDataModule")
        length = getattr(task, "episode_length", None)
        if length is not None and length % self.span:
            raise ValueError(
                f"data.length / model.k / model.slow_window: an episode ({length} steps) must "
                f"be whole slow windows of k * slow_window = {self.span} steps; set "
                f"data.length to a multiple of {self.span} or change k / slow_window")

    def configure_task(self, world: int) -> None:
        self.check_task(self.task, world)
        e = self.engine  # (its modules, made in __init__; the task's loss scale)
        self.engine = TwoTimescaleRNN(e.cfg, e.step_loss, self.task.loss_norm(self.hparams.window),
                                      parts=e)

    def configure_optimizers(self):
        """One Adam per part (none for a least-squares synthesizer), in the order
        ``_optimizers`` reads them back."""
        hp, net = self.hparams, self.engine
        opts = [adam(net.fast_parameters(), hp.lr), adam(net.slow_parameters(), hp.lr)]
        for synth, options in zip(self._fitted_by_adam(), self.synths.values()):
            if synth is not None:
                opts.append(adam(synth.parameters(), options.lr))
        return opts

    def _fitted_by_adam(self) -> list:
        """``M_f``, ``M_s``, ``M_if`` where an optimizer fits them, else None."""
        net = self.engine
        return [s if s is not None and s.fit == "adam" else None for s in (
            net.fast_synthesizer, net.slow_synthesizer, net.interface_synthesizer)]

    def _optimizers(self) -> HierarchyOptimizers:
        if self._opts is None:
            raw = iter([o.optimizer for o in self.optimizers()])  # the engine steps them
            fast, slow = next(raw), next(raw)
            clip = self.optim_options.clip
            m_f, m_s, m_if = (None if s is None else next(raw) for s in self._fitted_by_adam())
            c_f, c_s, c_if = (None if s is None else s.clip for s in self.synths.values())
            self._opts = HierarchyOptimizers(
                fast=Optimizers(fast, m_f, clip, c_f), slow=Optimizers(slow, m_s, clip, c_s),
                interface=m_if, interface_clip=c_if,
            )
        return self._opts

    # ---- engine hooks -------------------------------------------------------------------

    def zero_state(self, batch: int) -> HierarchyState:
        return self.engine.zero_state(batch)

    def span_step(self, batch: Batch
                  ) -> Callable[[], tuple[list[HierarchyResult], HierarchyState]]:
        return functools.partial(
            train_span, self.engine, self._optimizers(),
            split_windows(batch.x, batch.y, self.span, batch.mask), self.carried,
            reset=batch.reset, last=batch.last)

    def eval_forward(self, x: Tensor, state: HierarchyState) -> tuple[Tensor, HierarchyState]:
        """Whole segments through ``TwoTimescaleRNN.forward``; a tail shorter than ``k`` (only
        the very end of a stream, since ``eval_chunk % k == 0``) runs the fast core with the
        current ``m`` and no tick."""
        net, n = self.engine, x.shape[0] - x.shape[0] % self.hparams.k
        logits = []
        if n:
            out, state = net(x[:n], state)
            logits.append(out)
        if n < x.shape[0]:
            out, fast = net.segment(net.encoder(x[n:]), state.m, state.fast)
            logits.append(net.readout(out))
            state = HierarchyState(fast, state.slow)
        return torch.cat(logits), state

    def task_loss(self, logits: Tensor, window: Window) -> tuple[Tensor, Tensor, Tensor]:
        return self.engine.task_loss(logits, window)

    def carried_tensors(self, carried: HierarchyState) -> list[Tensor]:
        return [*carried.fast, *carried.slow]  # (L_f, B, H_f) x2, (L_s, B, H_s) x2

    def carried_from_tensors(self, tensors: list[Tensor]) -> HierarchyState:
        return HierarchyState(tuple(tensors[:2]), tuple(tensors[2:]))


def _validate(args: dict[str, Any], core: CoreOptions, synths: dict[str, Any],
              targets: TargetOptions, optim: OptimOptions) -> None:
    """The flat options, the schedule, and what the engine takes from the groups; each
    message names the option as typed and the fix."""
    need(args["task"] in TOKEN_TASKS, "model.task", args["task"],
         f"must be one of {TOKEN_TASKS} (token inputs)")
    need(args["boundary"] in ("dni", "tbptt"), "model.boundary", args["boundary"],
         "must be 'dni' (the fast core's synthesizer, model.synthesizer) or 'tbptt'")
    check_flat(args, ("k", "slow_hidden", "slow_layers", "slow_window"))  # (and the shared)
    unused, by = HierarchyModule.UNUSED, "HierarchyModule"
    for group, names in (("core", core), ("targets", targets), ("optim", optim)):
        names.unused(unused[group], by)
    for name, s in synths.items():
        if s is not None:
            s.unused(unused["synthesizer"] + (unused["interface"] if name == "interface"
                                              else ()), by)
    # (model.window against k and slow_window: HierarchyConfig, the engine, checks them)
    k, window, span = args["k"], args["window"], args["k"] * args["slow_window"]
    chunk = window * args["windows_per_step"]
    need(window % k or span % window or chunk % span == 0, "model.windows_per_step",
         args["windows_per_step"],
         f"a training step (window * windows_per_step = {chunk} steps) must be whole slow "
         f"windows of k * slow_window = {span} steps; use a multiple of {span // window}")
    need(args["eval_chunk"] % k == 0, "model.eval_chunk", args["eval_chunk"],
         f"must be a multiple of k={k} (evaluation ticks the slow core every k steps)")
