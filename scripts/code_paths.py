"""How far a training step travels through dnirnn: the two path lengths of docs/design.md
("One window's path").

- frames: our frames on the stack when the core's ``nn.LSTM`` runs its first training forward,
  from the CLI's entry (``dnirnn.main.main``) down (Lightning's frames are not ours);
- files: the dnirnn modules entered during one training step (the third, so that nothing of
  the first steps' set-up is counted), with their call counts, and among them those entered
  inside a window update (``window_update`` of ``dnirnn.dni``, or the hierarchy's
  ``hierarchy_update``): the files one window crosses.

    OMP_NUM_THREADS=1 python scripts/code_paths.py fit --config copy_dni --model.depth=1 \\
        --trainer.max_steps=4

Any ``dnirnn fit`` arguments; it adds a temporary run folder, no W&B, no sanity validation.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections import Counter

import lightning as L
import torch

import dnirnn
from dnirnn.main import main

ROOT = os.path.dirname(dnirnn.__file__)
WINDOW = {"window_update", "hierarchy_update"}  # (the functions that run one window update)
TRACED_STEP = 3


def ours(path: str) -> bool:
    return path.startswith(ROOT + os.sep)


TRACES: list[Trace] = []  # (the CLI builds the callback from its class path)


class Trace(L.Callback):
    """Records the dnirnn files entered during training step ``TRACED_STEP``."""

    def __init__(self) -> None:
        self.step, self.calls, self.window, self._depth = 0, Counter(), set(), 0
        TRACES.append(self)

    def _profile(self, frame, event, arg):
        if not ours(frame.f_code.co_filename):
            return
        update = frame.f_code.co_name in WINDOW
        if event == "call":
            path = os.path.relpath(frame.f_code.co_filename, ROOT)
            self.calls[path] += 1
            self._depth += update
            if self._depth:
                self.window.add(path)
        elif event == "return":
            self._depth -= update

    def on_train_batch_start(self, *args) -> None:
        self.step += 1
        if self.step == TRACED_STEP:
            sys.setprofile(self._profile)

    def on_train_batch_end(self, *args) -> None:
        if self.step == TRACED_STEP:
            sys.setprofile(None)


def measure(args: list[str]) -> tuple[list[str], Counter, set[str]]:
    """Runs ``dnirnn`` with ``args``; returns our frames above the first training forward
    (``file:function``), the files of the traced step with their call counts, and those a
    window update entered."""
    frames: list[str] = []
    forward = torch.nn.LSTM.forward

    def spy(self, *a, **k):
        if not frames and torch.is_grad_enabled():
            frames.extend(f"{os.path.relpath(f.filename, ROOT)}:{f.name}"
                          for f in traceback.extract_stack()[:-1] if ours(f.filename))
        return forward(self, *a, **k)

    TRACES.clear()
    torch.nn.LSTM.forward = spy
    try:
        with tempfile.TemporaryDirectory() as tmp:
            main([*args, f"--trainer.default_root_dir={tmp}", "--wandb=false",
                  "--trainer.enable_progress_bar=false", "--trainer.num_sanity_val_steps=0",
                  f"--trainer.callbacks+={__name__}.Trace"])
    finally:
        torch.nn.LSTM.forward = forward
    return frames, TRACES[-1].calls, TRACES[-1].window


if __name__ == "__main__":
    frames, calls, window = measure(sys.argv[1:])
    model = [f for f in frames if f.startswith("model.py")]
    above = frames[: len(frames) - len(model)] if model else frames
    print(f"{len(above)} of our frames from the CLI to the core's forward:")
    for f in frames:
        print(f"  {f}")
    print(f"{len(calls)} files in training step {TRACED_STEP}, {len(window)} of them inside a "
          f"window update (calls):")
    for f, n in calls.most_common():
        print(f"  {n:5d}  {f}{'  (window)' if f in window else ''}")
