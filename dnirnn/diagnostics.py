"""Synthetic-gradient diagnostics (in the spirit of Czarnecki et al. 2017, arXiv 1703.00522).

``SyntheticGradientDiagnostics`` is a Lightning callback. Every ``every_n_steps`` training
steps, BEFORE the step updates anything (``on_train_batch_start``), it:

1. fetches the same span of data the step is about to train on
   (``task.batch("train", position, chunk)``: a pure function of the position, for PTB
   streams and for copy episodes alike, so the step gets exactly the same data),
2. starts from the state the step will start from (``pl_module.carried``, or zeros when the
   span starts an episode / epoch),
3. computes the TRUE future gradient ``dL_future / ds_k`` at every boundary k of the span
   with frozen parameters, in one forward and one backward pass
   (``dnirnn.engine.truth.future_gradients`` with λ = 1, beta = 1, no synthesizer: the
   same mechanism that makes the λ-return targets). Episodes: every internal boundary,
   over the whole rest of the episode (the exact future). Streams: the first boundary,
   over the next ``windows`` windows;
4. compares it with the gradient the boundary would inject there.

Logged (straight to the trainer's loggers at ``trainer.global_step``, so they do not depend
on ``log_every_n_steps``):

- at the FIRST boundary (k = 1): ``diag/true_grad_norm``, ``diag/sg_true_cos`` (cosine over
  the flattened ``(B, S)`` tensors), ``diag/sg_true_norm_ratio`` (``||g|| / ||true||``),
  ``diag/sg_norm``, ``diag/future_windows``;
- over all internal boundaries of an episode: ``diag/sg_true_cos_all`` (mean cosine), and
  by phase for copy tasks, ``diag/sg_true_cos_input`` / ``diag/sg_true_cos_answer`` (mean
  over the boundaries in the input phase, where the long-range credit is, and in the answer
  phase; see ``CopyTask.answer_phase``), with ``diag/true_grad_norm_input`` / ``_answer``;
- one JSON line per boundary into ``<run>/diagnostics.jsonl``:
  ``{"step", "level", "k", "phase", "cos", "ratio", "true_norm", "sg_norm"}`` (the per-position
  record that ``dnirnn sweep``'s ``kind: boundary`` plots draw).

``g`` is ``M_phi(s_k)`` (capped by the guard, as the core receives it) for ``dni`` /
``dni_aux``, and the oracle's own injected gradient (its ``oracle_windows`` windows) for
``oracle`` at the first boundary (a check: with ``oracle_windows == windows`` the cosine and
the ratio are 1). For ``dni_aux`` the synthesizer's bootstrapped target also contains the Aux
objective's gradient, while the truth here is the task loss only. With ``sg_scale = beta <
1`` the synthesizer predicts a beta-discounted future, so the ratio is expected below 1.

The synthesizer's own loss ``train/sg_loss`` and the bootstrapped-target norm
``train/target_norm`` are logged by ``DNIModule`` at every logged step.

No effect on training: parameters are frozen (gradients w.r.t. the state only: no parameter
``.grad`` is touched), the core runs in eval mode (no dropout) inside
``torch.random.fork_rng`` (no global RNG is consumed) with cuDNN disabled (cuDNN's RNN
backward needs training mode), and the module's carried state is not modified. A run with
the callback gives bit-identical training losses to one without (tests/test_diagnostics.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from dnirnn.engine.truth import future_gradients
from dnirnn.model import detach_state, unflatten_state


class SyntheticGradientDiagnostics(L.Callback):
    """Logs how well the boundary gradient matches the true future gradient.

    Args:
        every_n_steps: measure at training steps ``0, N, 2N, ...`` (``trainer.global_step``).
        windows: W, windows of look-ahead of the true gradient for streams (episodes use the
            rest of the episode, the exact future).
    """

    def __init__(self, every_n_steps: int = 100, windows: int = 4) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if windows < 1:
            raise ValueError(f"windows must be >= 1, got {windows}")
        self.every_n_steps, self.windows = every_n_steps, windows
        self.last: dict[str, float] = {}  # the last logged values (for tests and inspection)
        self.rows: list[dict[str, Any]] = []  # the last per-boundary rows

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step % self.every_n_steps:
            return
        metrics = self.measure(pl_module, int(batch))
        if not metrics:
            return
        self.last = metrics
        log_dir = trainer.log_dir  # (a collective under DDP: every rank asks)
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.log_metrics(metrics, step=step)
            if log_dir is not None:
                level = getattr(pl_module.task, "level", None)
                path = Path(log_dir) / "diagnostics.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a") as f:
                    for row in self.rows:
                        f.write(json.dumps({"step": step, "level": level, **row}) + "\n")

    @torch.no_grad()
    def measure(self, pl_module: Any, position: int) -> dict[str, float]:
        """The diagnostics of training span ``position`` (empty if the span has a single
        window: no boundary inside it); the per-boundary rows go to ``self.rows``."""
        engine, task = pl_module.engine, pl_module.task
        batch = task.batch("train", position, pl_module.chunk)
        windows = pl_module.windows(batch)
        if len(windows) < 2:
            return {}
        span = windows if task.episodic else windows[: 1 + self.windows]
        carried = pl_module.carried
        if batch.reset or carried is None:
            state = engine.core.zero_state(batch.x.shape[1])
        else:
            state = detach_state(carried)
        devices = [batch.x.device] if batch.x.device.type == "cuda" else []
        was_training = engine.training
        try:
            with torch.random.fork_rng(devices=devices), \
                    torch.backends.cudnn.flags(enabled=False):
                engine.eval()
                truth = future_gradients(engine, span, state)
                boundaries = range(1, len(span)) if task.episodic else range(1, 2)
                rows = [self._row(pl_module, span, truth, k) for k in boundaries]
        finally:
            engine.train(was_training)
        self.rows = rows
        first = rows[0]
        out = {"diag/true_grad_norm": first["true_norm"],
               "diag/future_windows": float(len(span) - 1)}
        if "cos" not in first:
            return out
        out.update({"diag/sg_norm": first["sg_norm"], "diag/sg_true_cos": first["cos"],
                    "diag/sg_true_norm_ratio": first["ratio"]})
        if task.episodic and engine.boundary in ("dni", "dni_aux"):  # g at every boundary
            out["diag/sg_true_cos_all"] = _mean(r["cos"] for r in rows)
            for phase in ("input", "answer"):
                mine = [r for r in rows if r["phase"] == phase]
                if mine:
                    out[f"diag/sg_true_cos_{phase}"] = _mean(r["cos"] for r in mine)
                    out[f"diag/true_grad_norm_{phase}"] = _mean(r["true_norm"] for r in mine)
        return out

    def _row(self, pl_module: Any, span: list, truth: Any, k: int) -> dict[str, Any]:
        """The comparison at boundary k of the span."""
        engine, task = pl_module.engine, pl_module.task
        true, s_k = truth.targets[k], truth.states[k]
        row: dict[str, Any] = {"k": k, "true_norm": float(torch.linalg.vector_norm(true))}
        if hasattr(task, "answer_phase"):
            answer = task.answer_phase(k * pl_module.hparams.window)
            row["phase"] = "answer" if answer else "input"
        if engine.boundary in ("dni", "dni_aux"):
            g = engine.synthetic_gradient(s_k, span[k].context, span[k].position)
        elif engine.boundary == "oracle" and k == 1:
            s = unflatten_state(s_k, engine.core.cfg.num_layers)
            g = engine.oracle_gradient(s, span[k:][: engine.oracle_windows])
        else:
            return row
        sg_norm = torch.linalg.vector_norm(g)
        row["sg_norm"] = float(sg_norm)
        row["cos"] = float(F.cosine_similarity(g.flatten(), true.flatten(), dim=0, eps=1e-30))
        row["ratio"] = float(sg_norm / torch.linalg.vector_norm(true).clamp_min(1e-30))
        return row


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)
