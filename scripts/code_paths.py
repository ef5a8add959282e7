"""How far a training step travels through dnirnn: the two path lengths of docs/design.md
("One window's path").

- frames: our frames on the stack when the core's ``nn.LSTM`` runs its first training forward,
  from the CLI's entry (``dnirnn.main.main``) down (Lightning's frames are not ours);
- files: the dnirnn modules entered during one training step (the third, so that nothing of
  the first steps' set-up is counted), with their call counts; a window's own files are those
  not marked "per step" (the Lightning module, the data, the curriculum and the run's
  bookkeeping run once a step, not once a window).

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
PER_STEP = {"recurrent.py", "lit.py", "lit_hierarchy.py", "curriculum.py", "interrupt.py",
            "runs.py", "wallclock.py", "diagnostics.py"}
TRACED_STEP = 3


def ours(path: str) -> bool:
    return path.startswith(ROOT + os.sep)


TRACES: list[Trace] = []  # (the CLI builds the callback from its class path)


class Trace(L.Callback):
    """Records the dnirnn files entered during training step ``TRACED_STEP``."""

    def __init__(self) -> None:
        self.step, self.calls = 0, Counter()
        TRACES.append(self)

    def _profile(self, frame, event, arg):
        if event == "call" and ours(frame.f_code.co_filename):
            self.calls[os.path.relpath(frame.f_code.co_filename, ROOT)] += 1

    def on_train_batch_start(self, *args) -> None:
        self.step += 1
        if self.step == TRACED_STEP:
            sys.setprofile(self._profile)

    def on_train_batch_end(self, *args) -> None:
        if self.step == TRACED_STEP:
            sys.setprofile(None)


def measure(args: list[str]) -> tuple[list[str], Counter]:
    """Runs ``dnirnn`` with ``args``; returns our frames above the first training forward
    (``file:function``) and the files of the traced step with their call counts."""
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
    return frames, TRACES[-1].calls


if __name__ == "__main__":
    frames, calls = measure(sys.argv[1:])
    model = [f for f in frames if f.startswith("model.py")]
    above = frames[: len(frames) - len(model)] if model else frames
    print(f"{len(above)} of our frames from the CLI to the core's forward:")
    for f in frames:
        print(f"  {f}")
    window = {f: n for f, n in calls.items() if not (os.path.basename(f) in PER_STEP
                                                     or f.startswith("data" + os.sep))}
    print(f"{len(calls)} files in training step {TRACED_STEP}, {len(window)} of them per "
          f"window (calls):")
    for f, n in calls.most_common():
        print(f"  {n:5d}  {f}{'' if f in window else '  (per step)'}")
