"""scripts/code_paths.py: the frames from the CLI to the core's forward, and the files one
training step enters (the path lengths of docs/design.md, "One window's path")."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from .test_training import TINY

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


def test_the_path_from_the_cli_to_the_forward(cli_sandbox):
    spec = importlib.util.spec_from_file_location("code_paths", ROOT / "scripts/code_paths.py")
    module = sys.modules["code_paths"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    frames, calls, window = module.measure(["fit", "--config", "copy_dni", "--model.depth=1",
                                    "--trainer.max_steps=3", "--data.init_args.batch_size=4",
                                    *TINY])
    assert frames[0] == "main.py:main" and frames[-1] == "model.py:forward"
    assert "dni.py:window_update" in frames and "recurrent.py:training_step" in frames
    # a window update enters the engine's files and the synthesizer's face; the Lightning
    # module's only around it
    assert {"dni.py", "engine/update.py", "engine/kept.py", "model.py",
            "synthesizers/interface.py", "synthesizers/least_squares.py"} <= window
    assert window <= set(calls) and "recurrent.py" in set(calls) - window
