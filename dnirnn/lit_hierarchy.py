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
        interface_synthesizer: mlp
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dnirnn.hierarchy import (
    HierarchyConfig,
    HierarchyOptimizers,
    HierarchyResult,
    HierarchyState,
    TwoTimescaleRNN,
    hierarchy_update,
)
from dnirnn.optim import Optimizers, adam
from dnirnn.recurrent import RecurrentModule
from dnirnn.synthesizers import FITS, SYNTHESIZER_KINDS
from dnirnn.tasks import TASKS, TOKEN_TASKS, Batch, CopyTask
from dnirnn.window import Window, split_windows

# train/<key>: the fast core's keys mean what DNIModule's mean for its single core.
RESULT_KEYS = {
    "sg_loss": "fast_sg_loss", "sg_cos": "fast_sg_cos", "target_norm": "fast_target_norm",
    "grad_norm": "fast_grad_norm", "slow_sg_loss": "slow_sg_loss",
    "slow_sg_cos": "slow_sg_cos", "slow_grad_norm": "slow_grad_norm",
    "interface_sg_loss": "interface_sg_loss", "interface_sg_cos": "interface_sg_cos",
}


class HierarchyModule(RecurrentModule):
    """Trains a fast and a slow LSTM linked by synthetic gradients (``dnirnn.hierarchy``).

    Args:
        task: "lm" (token streams) or "recall" (token episodes); linked from the data module.
            Copy episodes change length with the curriculum and are not supported.
        input_size: vocabulary size; linked from the data module.
        output_size: vocabulary size; linked from the data module.
        hidden_size: fast LSTM units per layer (the message ``u`` has this width).
        num_layers: fast LSTM layers.
        embed_size: embedding width; defaults to hidden_size.
        window: T_f, the fast core's truncation window in steps; a multiple of ``k``.
        windows_per_step: fast windows per ``training_step`` for streams; ``window *
            windows_per_step`` must be whole spans (``k * slow_window`` steps).
        k: tick period: the slow core ticks once every ``k`` steps.
        slow_hidden: slow LSTM units per layer (the top-down input ``m`` has this width).
        slow_layers: slow LSTM layers.
        slow_window: T_s, the slow core's truncation window in ticks; ``k * slow_window`` is a
            multiple of ``window``.
        synthesizer: kind of the fast core's synthesizer ``M_f`` ("linear", "mlp"), or null
            for plain TBPTT of the fast core.
        slow_synthesizer: kind of ``M_s`` (the slow core's), or null.
        interface_synthesizer: kind of ``M_if`` (predicts the slow core's gradient on the
            bottom-up message), or null: the slow level sends no gradient to the fast core.
        synthesizer_hidden: hidden units of the mlp synthesizers.
        synthesizer_fit: how the three synthesizers are fitted: "adam" (each its own Adam,
            the paper) or "rls" (linear maps, exact ridge least squares with forgetting,
            solved once per training step; ``dnirnn.synthesizers.least_squares``).
        rls_forget: ``rls``: weight of a regression pair one training step older.
        rls_ridge: ``rls``: ridge relative to the mean diagonal of the normal matrix.
        sg_scale: beta, the weight of the recurrent synthetic gradients.
        interface_sg_scale: beta_if, the weight of the interface synthetic gradient.
        lr: learning rate of both cores (Adam; one optimizer per core).
        synthesizer_lr: learning rate of the three synthesizers (one Adam each; ``adam``).
        clip: gradient-norm clip of each core (null: none).
        synthesizer_clip: gradient-norm clip of each synthesizer (null: none).
        eval_chunk: steps per validation/test forward call; a multiple of ``k``.
        forget_bias: initial forget-gate bias of both cores (0: PyTorch's init).
    """

    train_keys = RESULT_KEYS

    def __init__(
        self,
        task: str = "lm",
        input_size: int = 1,
        output_size: int = 1,
        hidden_size: int = 256,
        num_layers: int = 1,
        embed_size: int | None = None,
        window: int = 8,
        windows_per_step: int = 8,
        k: int = 4,
        slow_hidden: int = 128,
        slow_layers: int = 1,
        slow_window: int = 16,
        synthesizer: str | None = "mlp",
        slow_synthesizer: str | None = "mlp",
        interface_synthesizer: str | None = "mlp",
        synthesizer_hidden: int = 256,
        synthesizer_fit: str = "adam",
        rls_forget: float = 0.8,
        rls_ridge: float = 0.1,
        sg_scale: float = 1.0,
        interface_sg_scale: float = 1.0,
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
        cfg = HierarchyConfig(
            input_size, output_size, k=k, fast_hidden=hidden_size, fast_layers=num_layers,
            slow_hidden=slow_hidden, slow_layers=slow_layers, embed=True,
            embed_size=embed_size, fast_window=window, slow_window=slow_window,
            fast_synthesizer=synthesizer, slow_synthesizer=slow_synthesizer,
            interface_synthesizer=interface_synthesizer,
            synthesizer_hidden=synthesizer_hidden, synthesizer_fit=synthesizer_fit,
            rls_forget=rls_forget, rls_ridge=rls_ridge, sg_scale=sg_scale,
            interface_sg_scale=interface_sg_scale, forget_bias=forget_bias,
        )
        self.engine = TwoTimescaleRNN(cfg, TASKS[task], 1.0)
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
        self.engine.loss_norm = self.task.loss_norm(self.hparams.window)

    def configure_optimizers(self):
        """One Adam per part (none for a least-squares synthesizer), in the order
        ``_optimizers`` reads them back."""
        hp, net = self.hparams, self.engine
        opts = [adam(net.fast_parameters(), hp.lr), adam(net.slow_parameters(), hp.lr)]
        for synth in self._fitted_by_adam():
            if synth is not None:
                opts.append(adam(synth.parameters(), hp.synthesizer_lr))
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
            hp = self.hparams
            m_f, m_s, m_if = (None if s is None else next(raw) for s in self._fitted_by_adam())
            self._opts = HierarchyOptimizers(
                fast=Optimizers(fast, m_f, hp.clip, hp.synthesizer_clip),
                slow=Optimizers(slow, m_s, hp.clip, hp.synthesizer_clip),
                interface=m_if, interface_clip=hp.synthesizer_clip,
            )
        return self._opts

    # ---- engine hooks -------------------------------------------------------------------

    def zero_state(self, batch: int) -> HierarchyState:
        return self.engine.zero_state(batch)

    def run_windows(self, batch: Batch) -> list[HierarchyResult]:
        opts, state = self._optimizers(), self.carried
        spans = split_windows(batch.x, batch.y, self.span, batch.mask)
        results = []
        for i, span in enumerate(spans):
            res = hierarchy_update(self.engine, opts, span, state,
                                   episode_start=batch.reset and i == 0,
                                   episode_end=batch.last and i == len(spans) - 1)
            state = res.state
            results.append(res)
        results[-1].finite = results[-1].finite & self.engine.end_step()  # rls: the solve
        self.carried = state
        return results

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


def _validate(args: dict[str, Any]) -> None:
    """Config checks with messages that name the field and the fix."""
    def need(ok: bool, field: str, msg: str) -> None:
        if not ok:
            raise ValueError(f"model.{field}: {msg} (got {args[field]!r})")

    need(args["task"] in TOKEN_TASKS, "task", f"must be one of {TOKEN_TASKS} (token inputs)")
    for f in ("synthesizer", "slow_synthesizer", "interface_synthesizer"):
        need(args[f] in (*SYNTHESIZER_KINDS, None), f,
             f"must be one of {SYNTHESIZER_KINDS}, or null for none")
    for f in ("window", "windows_per_step", "hidden_size", "num_layers", "k", "slow_hidden",
              "slow_layers", "slow_window", "eval_chunk", "input_size", "output_size",
              "synthesizer_hidden"):
        need(isinstance(args[f], int) and args[f] >= 1, f, "must be an integer >= 1")
    need(args["embed_size"] is None or args["embed_size"] >= 1, "embed_size",
         "must be >= 1, or null for hidden_size")
    for f in ("sg_scale", "interface_sg_scale"):
        need(args[f] >= 0, f, "must be >= 0")
    need(args["synthesizer_fit"] in FITS, "synthesizer_fit", f"must be one of {FITS}")
    if args["synthesizer_fit"] == "rls":
        for f in ("synthesizer", "slow_synthesizer", "interface_synthesizer"):
            need(args[f] in ("linear", None), f,
                 "synthesizer_fit 'rls' fits linear maps: set it to linear, or null for none")
    need(0 < args["rls_forget"] <= 1, "rls_forget", "must be in (0, 1]")
    need(args["rls_ridge"] > 0, "rls_ridge", "must be > 0")
    for f in ("lr", "synthesizer_lr"):
        need(args[f] > 0, f, "must be > 0")
    for f in ("clip", "synthesizer_clip"):
        need(args[f] is None or args[f] > 0, f, "must be > 0, or null for no clipping")
    k, window, span = args["k"], args["window"], args["k"] * args["slow_window"]
    need(window % k == 0, "window",
         f"the fast window T_f must be a multiple of k={k}, so that no segment of k steps "
         f"straddles two fast windows; set model.window to a multiple of {k}")
    need(span % window == 0, "slow_window",
         f"k * slow_window (= {span} steps) must be a multiple of the fast window "
         f"(model.window={window}), so that a slow window ends on a fast window boundary")
    chunk = window * args["windows_per_step"]
    need(chunk % span == 0, "windows_per_step",
         f"a training step (window * windows_per_step = {chunk} steps) must be whole slow "
         f"windows of k * slow_window = {span} steps; use a multiple of {span // window}")
    need(args["eval_chunk"] % k == 0, "eval_chunk",
         f"must be a multiple of k={k} (evaluation ticks the slow core every k steps)")
