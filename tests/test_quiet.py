"""Issue 32 item 9: before a one-line error nothing prints that the user did not ask for
(Lightning's GPU / TPU lines, its tips, its warnings are held until the checks pass, and
dropped on an error); the warnings that reach every run and say nothing about it never
print; ``--trainer.devices=0`` is dnirnn's own one line. Run as a user runs it: a process,
whose stderr is all there is."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

import pytest

from dnirnn.quiet import Held

TINY = ["--model.hidden_size=8", "--data.init_args.batch_size=4", "--wandb=false",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def dnirnn(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("DNIRNN_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "dnirnn", "fit", "--config", "copy_dni",
                           f"--trainer.default_root_dir={tmp_path / 'r'}", *TINY, *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("option,message", [
    ("--trainer.devices=0", "trainer.devices=0: a run needs at least one device. Use "
                            "--trainer.devices=1"),
    # (refused after the trainer is built: Lightning's lines and warnings came before)
    ("--trainer.precision=16-mixed", "trainer.precision=16-mixed: on the CPU"),
])
def test_an_error_is_all_that_prints(tmp_path, option, message):
    out = dnirnn(tmp_path, option)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [out.stderr.strip()], out.stderr
    assert out.stderr.startswith(f"dnirnn: error: {message}")
    assert out.stdout == ""


def test_a_run_prints_lightnings_lines_after_the_checks_but_no_tips_or_noise(tmp_path):
    out = dnirnn(tmp_path, "--trainer.max_steps=1")
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert "GPU available: False" in text  # (released once the checks passed)
    for noise in ("Tip:", "LeafSpec", "`IterableDataset` has `__len__`", "Seed set to"):
        assert noise not in text, noise


def test_held_lines_and_warnings_print_in_order_on_release_and_never_on_drop(capsys):
    logger = logging.getLogger("lightning.pytorch.test_quiet")
    handler = logging.StreamHandler(sys.stdout)
    logging.getLogger("lightning.pytorch").addHandler(handler)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *a, **k: print(f"warning: {message}")
        try:
            _release_and_drop(capsys, logger)
        finally:
            logging.getLogger("lightning.pytorch").removeHandler(handler)


def _release_and_drop(capsys, logger: logging.Logger) -> None:
    for end in ("release", "drop"):
        held = Held()
        held.hold()
        logger.warning(f"first {end}")
        warnings.warn(f"second {end}", UserWarning, stacklevel=1)
        assert capsys.readouterr().out == ""
        getattr(held, end)()
        shown = capsys.readouterr().out
        if end == "release":
            assert shown.index("first release") < shown.index("second release")
        else:
            assert "first" not in shown and "second" not in shown
        logger.warning("after")  # (no longer held)
        assert "after" in capsys.readouterr().out
