"""Synthetic-gradient diagnostics (in the spirit of Czarnecki et al. 2017, arXiv 1703.00522).

``SyntheticGradientDiagnostics`` is a Lightning callback. Every ``every_n_steps`` training
steps, BEFORE the step updates anything (``on_train_batch_start``), it:

1. fetches the same span of data the step is about to train on
   (``task.batch("train", position, chunk)``: a pure function of the position, for PTB
   streams and for copy episodes alike, so the step gets exactly the same data),
2. starts from the state the step will start from (``pl_module.carried``, or zeros when the
   span starts an episode / epoch), forwards the first window without a graph to the first
   boundary state ``s_1``,
3. compares the gradient the boundary would inject at ``s_1`` with the TRUE future gradient
   ``dL_future / ds_1``, computed by BPTT with frozen parameters
   (``engine.oracle_gradient``) over the next ``windows`` windows for streams, or over the
   whole rest of the episode for copy tasks (then it is the exact future gradient).

Logged (straight to the trainer's loggers at ``trainer.global_step``, so they do not depend
on ``log_every_n_steps``):

- ``diag/true_grad_norm``: ``||dL_future/ds_1||`` (every mode; for ``tbptt`` this is what the
  truncation drops),
- ``diag/sg_true_cos``: cosine(g, true) over the flattened ``(B, S)`` tensors,
- ``diag/sg_true_norm_ratio``: ``||g|| / ||true||``,
- ``diag/sg_norm``: ``||g||``, and ``diag/future_windows``: the windows the truth covers.

``g`` is ``M_phi(s_1)`` for ``dni`` / ``dni_aux`` and the oracle's own injected gradient
(its ``oracle_windows`` windows) for ``oracle`` (a check: with ``oracle_windows == windows``
the cosine and the ratio are 1). For ``dni_aux`` the synthesizer's bootstrapped target also
contains the Aux objective's gradient, while the truth here is the task loss only. With
``sg_scale = beta < 1`` the synthesizer predicts a beta-discounted future, so the ratio is
expected below 1.

The synthesizer's own loss ``train/sg_loss`` and the bootstrapped-target norm
``train/target_norm`` are logged by ``DNIModule`` at every logged step.

No effect on training: parameters are frozen (``torch.autograd.grad`` w.r.t. the state only:
no parameter ``.grad`` is touched), the core runs in eval mode (no dropout) inside
``torch.random.fork_rng`` (no global RNG is consumed) with cuDNN disabled (cuDNN's RNN
backward needs training mode), and the module's carried state is not modified. A run with
the callback gives bit-identical training losses to one without (tests/test_diagnostics.py).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from dnirnn.dni import split_windows
from dnirnn.state import detach_state


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
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.log_metrics(metrics, step=step)

    @torch.no_grad()
    def measure(self, pl_module: Any, position: int) -> dict[str, float]:
        """The diagnostics at the first boundary of training span ``position``
        (empty if the span has a single window: no boundary inside it)."""
        engine, task = pl_module.engine, pl_module.task
        batch = task.batch("train", position, pl_module.chunk)
        windows = split_windows(batch.x, batch.y, pl_module.hparams.window, batch.mask)
        if len(windows) < 2:
            return {}
        future = windows[1:] if task.episodic else windows[1 : 1 + self.windows]
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
                _, _, s1 = engine.core(windows[0].x, state)
                true = engine.oracle_gradient(s1, future)
                if engine.boundary in ("dni", "dni_aux"):
                    g = engine.synthetic_gradient(s1, windows[1].context)
                elif engine.boundary == "oracle":
                    g = engine.oracle_gradient(s1, future[: engine.oracle_windows])
                else:
                    g = None
        finally:
            engine.train(was_training)
        true_norm = torch.linalg.vector_norm(true)
        out = {"diag/true_grad_norm": float(true_norm),
               "diag/future_windows": float(len(future))}
        if g is not None:
            sg_norm = torch.linalg.vector_norm(g)
            cos = F.cosine_similarity(g.flatten(), true.flatten(), dim=0, eps=1e-30)
            out["diag/sg_norm"] = float(sg_norm)
            out["diag/sg_true_cos"] = float(cos)
            out["diag/sg_true_norm_ratio"] = float(sg_norm / true_norm.clamp_min(1e-30))
        return out

