"""What a researcher meets when something is wrong: a config typo gets one line and a
suggestion, short help that imports neither torch nor Lightning, refused commands and
settings, a full disk during a checkpoint, Ctrl-C ending with the summary, W&B offline."""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import pytest
import torch

import dnirnn
import dnirnn.checkpointing
import dnirnn.dni
import dnirnn.lit
import dnirnn.runs
import dnirnn.summary
from dnirnn.main import main

from .cli_common import TINY, exits

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


@pytest.fixture(autouse=True)
def _sandbox(cli_sandbox):
    """Every test here runs in the CLI sandbox (tests/conftest.py)."""


# ---- clear errors --------------------------------------------------------------------------

def test_config_typo_gets_one_line_and_a_suggestion(tmp_path, capsys):
    exits(2, "fit", "--config", "copy_dni", "--model.windw=2")
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after pytest's warnings)
    assert err.startswith("dnirnn: error: unknown option --model.windw; did you mean "
                          "--model.window?")
    exits(2, "fit", "--config", "copy_dni", "--model.window=abc")
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("dnirnn: error: model.window: Expected a <class 'int'>")


def test_fit_help_is_short_model_first_with_seeds(capsys):
    main(["fit", "--help"])
    out = capsys.readouterr().out
    assert len(out.splitlines()) < 100  # (jsonargparse's: 593)
    assert "--model.window=8" in out and "--model.boundary=dni" in out
    assert "--seeds=0,1,2" in out and "--checkpoint_every=5min" in out
    assert out.index("--model.") < out.index("--data.") < out.index("--trainer.")
    main(["fit", "--config", "copy_dni", "--config", "dni_paper", "--help"])
    out = capsys.readouterr().out
    assert "--model.window=2 " in out and "--model.synthesizer.fit=adam " in out  # recipes'
    assert "Data: CopyDataModule" in out and "--trainer.max_steps=3000 " in out
    exits(0, "fit", "--help-all")  # the parser's full listing, the model's options included
    out = capsys.readouterr().out
    assert "--trainer.max_steps" in out and "--model.window=8" in out and "--seeds" in out


def test_fit_help_imports_neither_torch_nor_lightning():
    code = ("import sys; from dnirnn.main import main; main(['fit', '--help']); "
            "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_predict_is_not_a_command(capsys):
    exits(2, "predict", "--config", "copy_dni")
    assert "invalid choice" in capsys.readouterr().err


def test_mixed_precision_on_cpu_is_refused(tmp_path, capsys):
    exits(2, "fit", "--config", "copy_dni", f"--trainer.default_root_dir={tmp_path / 'r'}",
          "--trainer.accelerator=cpu", "--trainer.precision=bf16-mixed")
    assert "trainer.precision=bf16-mixed" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_full_disk_during_a_checkpoint(tmp_path, capsys, monkeypatch):
    real, calls = torch.save, []

    def full(obj, f, *a, **k):
        calls.append(1)
        if len(calls) >= 3:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(dnirnn.checkpointing.torch, "save", full)
    exits(2, "fit", "--config", "copy_dni", f"--trainer.default_root_dir={tmp_path / 'r'}",
          *TINY, "--trainer.max_steps=10", "--data.init_args.steps_per_epoch=100",
          "--checkpoint_every=1")
    err = capsys.readouterr().err
    ckpts = tmp_path / "r/version_0/checkpoints"
    assert "no space left on the device" in err and "No space left on device" in err
    assert f"{ckpts / 'last.ckpt'} (step 1) is intact" in err
    assert f"resume with the same command and --ckpt_path={ckpts / 'last.ckpt'}" in err
    assert not list(ckpts.glob(".*.tmp"))  # nothing half-written
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 1


def test_ctrl_c_ends_with_the_summary(tmp_path, capsys, monkeypatch):
    real, calls = dnirnn.dni.window_update, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(dnirnn.dni, "window_update", interrupted)
    exits(130, "fit", "--config", "copy_dni", f"--trainer.default_root_dir={tmp_path / 'r'}",
          *TINY, "--trainer.max_steps=10", "--data.init_args.steps_per_epoch=2")
    s = json.loads((tmp_path / "r/version_0/summary.json").read_text())
    assert s["stage"] == "fit (interrupted)" and s["global_step"] == 3
    assert "dnirnn fit (interrupted): step 3" in capsys.readouterr().out


def test_wandb_offline_covers_lightnings_dryrun(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert dnirnn.runs.wandb_offline()
