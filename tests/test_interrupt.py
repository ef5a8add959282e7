"""Issue 18, items 2 and 4: an interruption loses nothing that can be kept, says what it kept,
and the run record of a resumed run is that of an uninterrupted one.

The signals are real (``os.kill`` of this process from inside a training step, so the step
they land in is known); the runs are tiny copy_dni fits in this process."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import dnirnn.checkpointing
import dnirnn.interrupt
from dnirnn.interrupt import parse_every
from dnirnn.main import main
from dnirnn.recurrent import RecurrentModule

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
PER_EPOCH = 5
TINY = ["--model.hidden_size=8", "--model.synthesizer.hidden=8", "--data.init_args.batch_size=4",
        f"--data.init_args.steps_per_epoch={PER_EPOCH}", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--wandb=false",
        "--trainer.log_every_n_steps=3",  # not a divisor of the epoch: a shifted cadence shows
        # the curriculum moves every 3 steps: the level is part of the state to resume
        "--trainer.callbacks.init_args.threshold=1000",
        "--trainer.callbacks.init_args.check_every=3"]


@pytest.fixture(autouse=True)
def _sandbox(cli_sandbox):
    """Every test here runs in the CLI sandbox (tests/conftest.py)."""


def fit(root: Path, *extra: str, code: int = 0) -> Path:
    args = ["fit", "--config", "copy_dni", f"--trainer.default_root_dir={root}", *TINY, *extra]
    if code:
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == code
    else:
        main(args)
    return root / "version_0"


def signal_at(monkeypatch, call: int, *signums: int) -> None:
    """Sends ``signums`` to this process at the start of training step ``call`` (0-based)."""
    real, calls = RecurrentModule.training_step, []

    def step(self, *a, **k):
        calls.append(1)
        if len(calls) == call + 1:
            for s in signums:
                os.kill(os.getpid(), s)
        return real(self, *a, **k)

    monkeypatch.setattr(RecurrentModule, "training_step", step)


def rows(version: Path) -> list[dict[str, str]]:
    with open(version / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def step_of(path: Path) -> int:
    return torch.load(path, weights_only=False, map_location="cpu")["global_step"]


def summary(version: Path) -> dict:
    return json.loads((version / "summary.json").read_text())


# ---- the cadence ---------------------------------------------------------------------------

def test_checkpoint_every_takes_steps_or_a_duration():
    assert parse_every(500) == (500, 0) and parse_every("500") == (500, 0)
    assert parse_every("10min") == (0, 600) and parse_every("30s") == (0, 30)
    assert parse_every("2h") == (0, 7200) and parse_every("1.5m") == (0, 90)
    assert parse_every(0) == (0, 0)
    for bad in ("10 parsecs", "-3", "0min", "soon"):
        with pytest.raises(ValueError, match="checkpoint_every: .*--checkpoint_every=10min"):
            parse_every(bad)


def test_default_cadence_is_time_and_steps_cadence_writes_those_steps(tmp_path, capsys):
    version = fit(tmp_path / "d", "--trainer.max_steps=2")
    assert summary(version)["checkpoints"]["cadence"] == "every 5 min"
    overlay = tmp_path / "every4.yaml"  # in a config file, as a YAML int
    overlay.write_text("checkpoint_every: 4\nkeep_checkpoints: 0\n")
    version = fit(tmp_path / "s", "--trainer.max_steps=9", "--config", str(overlay))
    names = sorted(p.name for p in (version / "checkpoints").glob("epoch=*.ckpt"))
    # steps 4 and 8, the epoch end at 5 and the last step, 9 (validated: max_steps)
    assert names == ["epoch=0-step=4.ckpt", "epoch=0-step=5.ckpt", "epoch=1-step=8.ckpt",
                     "epoch=1-step=9.ckpt"]


def test_time_cadence_checkpoints_once_the_period_has_passed(tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 20))  # every call to the clock: 20 s later
    monkeypatch.setattr(dnirnn.interrupt, "clock", lambda: next(clock))
    version = fit(tmp_path / "t", "--trainer.max_steps=4", "--checkpoint_every=30s",
                  "--keep_checkpoints=0", f"--data.init_args.steps_per_epoch={100}")
    steps = sorted(step_of(p) for p in (version / "checkpoints").glob("epoch=*.ckpt"))
    # the clock reads 20 s per step after on_train_start: due at steps 2 and 4 (40, 80 s)
    assert steps == [2, 4]


@pytest.mark.parametrize("extra", [
    [],  # validation at the epoch ends (steps 5, 7: the last one)
    ["--trainer.val_check_interval=5", f"--data.init_args.steps_per_epoch={100}"],  # mid-epoch
])
def test_a_checkpoint_due_at_a_validation_comes_after_it(tmp_path, monkeypatch, extra):
    """Due at a step that is validated (an epoch end, or every val_check_interval steps),
    the checkpoint is written after that validation: a run killed during the validation
    resumes from the previous checkpoint and validates again, instead of resuming past a
    validation that never ended."""
    events = []
    real_val, real_save = RecurrentModule.validation_step, dnirnn.checkpointing.atomic_torch_save

    def validation_step(self, *a, **k):
        events.append(("val", self.trainer.global_step))
        return real_val(self, *a, **k)

    def save(obj, path):
        events.append(("save", obj["global_step"]))
        return real_save(obj, path)

    monkeypatch.setattr(RecurrentModule, "validation_step", validation_step)
    monkeypatch.setattr(dnirnn.checkpointing, "atomic_torch_save", save)
    fit(tmp_path / "r", "--trainer.max_steps=7", f"--checkpoint_every={PER_EPOCH}", *extra)
    at_5 = [e for e in events if e[1] == PER_EPOCH]
    assert at_5[0][0] == "val" and ("save", PER_EPOCH) in at_5
    assert at_5.index(("save", PER_EPOCH)) > max(i for i, e in enumerate(at_5) if e[0] == "val")


# ---- Ctrl-C and SIGTERM ----------------------------------------------------------------------

@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_checkpoints_the_step_it_interrupts(tmp_path, capsys, monkeypatch, signum, code):
    signal_at(monkeypatch, 6, signum)  # during step 7 (mid-epoch: the epoch ends at 5, 10)
    version = fit(tmp_path / "r", "--trainer.max_steps=1000", "--checkpoint_every=1000",
                  code=code)
    last = version / "checkpoints" / "last.ckpt"
    assert step_of(last) == 7
    s = summary(version)
    assert s["stage"] == "fit (interrupted)" and s["global_step"] == 7
    assert s["interrupted_by"] == signal.Signals(signum).name
    assert s["resume"] == {"checkpoint": str(last), "step": 7}
    out, err = capsys.readouterr()
    assert "dnirnn fit (interrupted): step 7" in out
    assert f"resume from step 7: the same command with --ckpt_path={last}" in out
    assert f"stopped by {signal.Signals(signum).name}" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_interrupted_summary_labels_each_last_value_with_its_step(tmp_path, capsys,
                                                                 monkeypatch):
    """Issue 32 item 3: stopped at step 7, the training loss is step 7's, the validation's
    step 5's (the epoch end): each is printed beside its own step, and summary.json says
    when the validation ran."""
    signal_at(monkeypatch, 6, signal.SIGINT)
    version = fit(tmp_path / "r", "--trainer.max_steps=1000", "--checkpoint_every=1000",
                  code=130)
    assert summary(version)["last"]["validated_at"] == PER_EPOCH
    lines = capsys.readouterr().out.splitlines()
    (trained,) = [x for x in lines if x.startswith("  last, at step")]
    (held,) = [x for x in lines if x.startswith("  last validation")]
    assert trained.startswith("  last, at step 7: train/loss = ") and "val/" not in trained
    assert held.startswith(f"  last validation, at step {PER_EPOCH}: val/")
    assert "train/" not in held


def test_ctrl_c_to_a_real_process(tmp_path):
    """As from a terminal: SIGINT to a `python -m dnirnn fit` process in the middle of an
    epoch. It exits 130, and its summary names last.ckpt at the step it stopped at."""
    root = tmp_path / "r"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dnirnn", "fit", "--config", "copy_dni",
         f"--trainer.default_root_dir={root}", "--trainer.max_steps=100000",
         "--checkpoint_every=100000", "--data.init_args.steps_per_epoch=100000", *TINY],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (root / "version_0" / "metrics.csv").is_file():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no metrics.csv within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    last = root / "version_0" / "checkpoints" / "last.ckpt"
    step = step_of(last)
    assert step >= 1 and f"dnirnn fit (interrupted): step {step} " in out
    assert f"resume from step {step}: the same command with --ckpt_path={last}" in out
    assert "SIGINT: finishing the current step" in err


def test_second_ctrl_c_stops_at_once_and_names_the_older_checkpoint(tmp_path, capsys,
                                                                    monkeypatch):
    signal_at(monkeypatch, 6, signal.SIGINT, signal.SIGINT)  # twice, at the start of step 7
    version = fit(tmp_path / "r", "--trainer.max_steps=1000", "--checkpoint_every=1000",
                  code=130)
    s = summary(version)
    assert s["global_step"] == 6 and s["resume"]["step"] == 5  # the epoch-end checkpoint
    assert step_of(Path(s["resume"]["checkpoint"])) == 5
    assert "resume from step 5; the 1 step(s) after it are lost" in capsys.readouterr().out


def test_nothing_to_resume_is_said_plainly(tmp_path, capsys, monkeypatch):
    signal_at(monkeypatch, 2, signal.SIGINT, signal.SIGINT)
    version = fit(tmp_path / "r", "--trainer.max_steps=1000", "--checkpoint_every=1000",
                  code=130)
    assert summary(version)["resume"] is None
    assert not list((version / "checkpoints").glob("*.ckpt"))
    out = capsys.readouterr().out
    assert "nothing can be resumed: no checkpoint was written before the interruption " \
           "(checkpoints come every 1000 steps)" in out


# ---- the run record after a resume -------------------------------------------------------------

@pytest.mark.parametrize("call,signums,resume_step", [
    (6, [signal.SIGINT], 7),  # mid-epoch: the interrupt's own checkpoint
    (9, [signal.SIGINT], 10),  # the last step of an epoch (its validation runs first)
    (11, [signal.SIGINT, signal.SIGINT], 10),  # stopped at once: the epoch-end checkpoint
])
def test_resume_gives_the_uninterrupted_record(tmp_path, monkeypatch, call, signums,
                                              resume_step):
    """Interrupted, then resumed to step 15: metrics.csv has the rows of a run that was never
    interrupted (same steps, same values: train rows every 3 steps, validation at the epoch
    ends), no 'not resumable' warning, and the same summary figures."""
    full = fit(tmp_path / "full", "--trainer.max_steps=15")
    signal_at(monkeypatch, call, *signums)
    part = fit(tmp_path / "part", "--trainer.max_steps=15", code=130)
    monkeypatch.undo()
    last = part / "checkpoints" / "last.ckpt"
    assert step_of(last) == resume_step
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path / "part", "--trainer.max_steps=15", f"--ckpt_path={last}")
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert rows(part) == rows(full)
    train = [int(r["step"]) for r in rows(full) if "train/loss" in r]
    val = [int(r["step"]) for r in rows(full) if "val/loss" in r]
    assert train == [2, 5, 8, 11, 14] and val == [4, 9, 14]  # (the steps' 0-based indices)
    a, b = summary(full), summary(part)
    assert a["best"] == b["best"] and a["curriculum"] == b["curriculum"]
    assert a["last"] == b["last"]
