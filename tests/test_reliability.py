"""Issue 7, reliability: bad input fails clearly and writes nothing (docs/errors.md, one test
per row), a hard-killed run resumes exactly, checkpoints are written atomically, and a
non-finite step stops the run with the last good checkpoint intact."""

from __future__ import annotations

import csv
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dnirnn.checkpointing
import dnirnn.dni
import dnirnn.lit
from dnirnn.checkpointing import AtomicCheckpointIO, CheckpointError, check_checkpoint
from dnirnn.datamodules import CopyDataModule
from dnirnn.lit import DNIModule
from dnirnn.main import main

from . import ptb_files

ROOT = Path(__file__).resolve().parents[1]
PTB = ptb_files.PTB  # (DNIRNN_DATA, the per-user cache, ../shared/data/ptb)
needs_ptb = pytest.mark.skipif(
    ptb_files.PTB_ROOT is None, reason=ptb_files.WHERE
)
TINY = ["--model.hidden_size=8", "--model.synthesizer.hidden=8", "--model.core.embed_size=8"]
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
COPY = ["--data.init_args.steps_per_epoch=4", "--data.init_args.batch_size=4", *TINY]


@pytest.fixture(autouse=True)
def _sandbox(cli_sandbox):
    """Every test here runs in the CLI sandbox (tests/conftest.py)."""


def base(recipe: str, root: Path) -> list[str]:
    return ["fit", "--config", str(ROOT / "recipes" / f"{recipe}.yaml"),
            f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", "--wandb=false"]


def fit(recipe: str, root: Path, *extra: str) -> Path:
    main(base(recipe, root) + list(extra))
    return sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))[-1]


def fails(capsys, recipe: str, root: Path, *extra: str) -> str:
    """Runs the CLI expecting bad input: exit code 2, a message, no traceback, no run folder."""
    with pytest.raises(SystemExit) as info:
        main(base(recipe, root) + list(extra))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "dnirnn: error:" in err and "Traceback" not in err
    assert not root.exists(), f"a run folder was written: {list(root.rglob('*'))}"
    return err


def csv_rows(version: Path) -> list[dict[str, str]]:
    with open(version / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def losses(version: Path) -> dict[int, float]:
    with open(version / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f)
                if r.get("train/loss")}


# ---- 1. bad input: one test per row of docs/errors.md -------------------------------------

@pytest.mark.parametrize("override,names", [
    ("--model.window=0", "model.window"),
    ("--model.windows_per_step=0", "model.windows_per_step"),
    ("--model.targets.scale=-1", "model.targets.scale"),
    ("--model.boundary=bogus", "model.boundary"),
    ("--model.synthesizer.kind=bogus", "model.synthesizer"),
    ("--model.lr=0", "model.lr"),
    ("--model.core.dropout=1.5", "model.core.dropout"),
    ("--data.init_args.batch_size=0", "data.batch_size"),
])
def test_invalid_config_value(capsys, tmp_path, override, names):
    err = fails(capsys, "copy_dni", tmp_path / "run", *COPY, override)
    assert names in err and "must" in err


def test_batch_not_divisible_over_processes():
    dm = CopyDataModule(batch_size=5)
    with pytest.raises(ValueError, match=r"data.batch_size.*multiple of trainer.devices"):
        dm.check("fit", None, world=2)


@needs_ptb
def test_batch_larger_than_stream(capsys, tmp_path):
    err = fails(capsys, "ptb_char_tbptt", tmp_path / "run", f"--data.init_args.root={PTB}",
                "--data.init_args.eval_batch_size=1000000", *TINY)
    assert "data.batch_size / eval_batch_size" in err and "lower the batch size" in err


@needs_ptb
def test_window_span_larger_than_stream(capsys, tmp_path):
    err = fails(capsys, "ptb_char_tbptt", tmp_path / "run", f"--data.init_args.root={PTB}",
                "--data.init_args.batch_size=20000", "--model.window=100",
                "--model.windows_per_step=100", *TINY)
    assert "window * windows_per_step" in err and "lower them" in err


@pytest.mark.parametrize("download", ["false", "true"])
def test_missing_data_folder_offline(capsys, tmp_path, monkeypatch, download):
    """Offline (the download refused here: no network in tests), the error names the file
    and the fix, and the failed download leaves no folder behind, nor a run folder."""
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    missing = tmp_path / "nowhere" / "ptb"
    err = fails(capsys, "ptb_char_tbptt", tmp_path / "run", f"--data.init_args.root={missing}",
                f"--data.init_args.download={download}", *TINY)
    assert str(missing / "ptb.train.txt") in err and "DNIRNN_DATA" in err
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "run").exists()


@needs_ptb
def test_corrupt_data_file(capsys, tmp_path):
    data = tmp_path / "ptb"
    shutil.copytree(PTB, data)
    path = data / "ptb.valid.txt"
    path.write_bytes(path.read_bytes()[: 1000])  # truncated
    err = fails(capsys, "ptb_char_tbptt", tmp_path / "run", f"--data.init_args.root={data}",
                "--data.init_args.download=false", *TINY)
    assert f"Checksum mismatch for {path}" in err and "Delete it" in err


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("good")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        version = fit("copy_dni", root / "run", "--trainer.max_steps=2", *COPY)
    finally:
        os.chdir(cwd)
    return version / "checkpoints" / "last.ckpt"


def test_checkpoint_missing(capsys, tmp_path):
    err = fails(capsys, "copy_dni", tmp_path / "run", *COPY,
                f"--ckpt_path={tmp_path / 'nope.ckpt'}")
    assert "nope.ckpt does not exist" in err


def test_checkpoint_garbage(capsys, tmp_path):
    bad = tmp_path / "garbage.ckpt"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    err = fails(capsys, "copy_dni", tmp_path / "run", *COPY, f"--ckpt_path={bad}")
    assert f"checkpoint {bad} cannot be read" in err and "truncated, corrupt" in err


def test_checkpoint_truncated(capsys, tmp_path, good_ckpt):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(good_ckpt.read_bytes()[: good_ckpt.stat().st_size // 2])
    err = fails(capsys, "copy_dni", tmp_path / "run", *COPY, f"--ckpt_path={bad}")
    assert f"checkpoint {bad} cannot be read" in err


def test_checkpoint_other_config(capsys, tmp_path, good_ckpt):
    err = fails(capsys, "copy_dni", tmp_path / "run", *COPY, "--model.hidden_size=16",
                f"--ckpt_path={good_ckpt}")
    assert "different model config" in err and "model.hidden_size=8 there, 16 here" in err
    assert "config.yaml" in err


def test_checkpoint_not_dnirnn(capsys, tmp_path, good_ckpt):
    foreign = tmp_path / "foreign.ckpt"
    ckpt = torch.load(good_ckpt, weights_only=False)
    torch.save({"state_dict": ckpt["state_dict"], "epoch": 0}, foreign)
    err = fails(capsys, "copy_dni", tmp_path / "run", *COPY, f"--ckpt_path={foreign}")
    assert "not a dnirnn training checkpoint" in err and "'dnirnn' section" in err
    torch.save({"weights": torch.zeros(3)}, foreign)
    err = fails(capsys, "copy_dni", tmp_path / "run", *COPY, f"--ckpt_path={foreign}")
    assert "not a dnirnn training checkpoint (no 'state_dict')" in err


def test_good_checkpoint_passes_the_check(good_ckpt):
    hp = torch.load(good_ckpt, weights_only=False)["hyper_parameters"]  # the recipe's config
    model = DNIModule(**{k: v for k, v in hp.items() if not k.startswith("_")})
    assert check_checkpoint(good_ckpt, model)["global_step"] == 2
    with pytest.raises(CheckpointError):
        check_checkpoint(good_ckpt, DNIModule(task="copy", input_size=9, output_size=9))


# ---- 2. interruption ---------------------------------------------------------------------

def test_atomic_checkpoint_survives_a_failed_write(tmp_path):
    """A write that dies half-way (here: the file-size limit, like a full disk or a kill
    mid-write) leaves the previous checkpoint whole. Lightning's TorchCheckpointIO opens the
    target for writing directly and leaves it truncated."""
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.ones(10)}, path)
    size = path.stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size * 4, hard))
    try:
        with pytest.raises((OSError, RuntimeError)):  # EFBIG, surfaced by torch's writer
            io.save_checkpoint({"step": 2, "w": torch.ones(100_000)}, path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert torch.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left
    io.save_checkpoint({"step": 3, "w": torch.ones(100_000)}, path)
    assert torch.load(path)["step"] == 3


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    """A real process killed with SIGKILL after a checkpoint resumes from last.ckpt and then
    logs the same loss at every step as a run that was never interrupted."""
    common = [*COPY, "--trainer.log_every_n_steps=1", "--checkpoint_every=2",
              "--trainer.callbacks.init_args.threshold=1000",
              "--trainer.callbacks.init_args.check_every=3"]
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "dnirnn", *base("copy_dni", killed),
           "--trainer.max_steps=100000", *common]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not [p for p in killed.glob("version_*/checkpoints/*step=*.ckpt")
                   if int(p.stem.rsplit("=", 1)[1]) >= 4]:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 90 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    last = next(killed.glob("version_*/checkpoints/last.ckpt"))
    # loadable: written atomically. The kill may land between the step=4 file and last.ckpt.
    at = torch.load(last, weights_only=False)["global_step"]
    assert at >= 2 and at % 2 == 0
    total = at + 5
    resumed = fit("copy_dni", tmp_path / "resumed", f"--ckpt_path={last}",
                  f"--trainer.max_steps={total}", *common)
    full = fit("copy_dni", tmp_path / "full", f"--trainer.max_steps={total}", *common)
    a, b = losses(full), losses(resumed)
    assert sorted(b) == list(range(at, total))
    for step in range(at, total):
        assert a[step] == b[step], f"step {step}: {a[step]} != {b[step]}"
    # resumed into the killed run's own folder: its metrics.csv becomes the uninterrupted one
    again = fit("copy_dni", killed, f"--ckpt_path={last}", f"--trainer.max_steps={total}",
                *common)
    assert again == last.parent.parent
    assert csv_rows(again) == csv_rows(full)


# ---- 3. non-finite loss --------------------------------------------------------------------

def test_non_finite_step_stops_before_its_checkpoint(capsys, tmp_path, monkeypatch):
    real, calls = dnirnn.dni.window_update, []

    def poisoned(net, opts, window, state, **kw):
        calls.append(1)
        if len(calls) == 13:  # copy at length 1, T=2: 2 windows per step -> step 6
            with torch.no_grad():
                next(net.core.parameters()).fill_(float("nan"))
        return real(net, opts, window, state, **kw)

    monkeypatch.setattr(dnirnn.dni, "window_update", poisoned)
    saved = []  # the CLI's trainer saves through the atomic writer
    real_save = dnirnn.checkpointing.atomic_torch_save
    monkeypatch.setattr(dnirnn.checkpointing, "atomic_torch_save",
                        lambda obj, path: (saved.append(Path(path).name), real_save(obj, path)))
    root = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(base("copy_dni", root) + [*COPY, "--trainer.max_steps=20", "--checkpoint_every=1",
                                       "--data.init_args.start_length=1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "training step 6 " in err and "non-finite" in err and "last.ckpt" in err
    last = next(root.glob("version_*/checkpoints/last.ckpt"))
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["global_step"] == 6  # steps 0..5 were good
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert not list(root.glob("version_*/checkpoints/*step=7.ckpt"))
    assert "last.ckpt" in saved and "epoch=1-step=6.ckpt" in saved


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_a_finished_run_is_left_alone_and_contradicting_options_refused(capsys, tmp_path):
    """Resuming a run at its max_steps trains nothing and writes nothing (a line, exit 0); a
    max_steps below the checkpoint's step, other model options in the same run folder and
    --seeds with --ckpt_path are refused (exit 2); the run folder stays byte for byte."""
    root = tmp_path / "run"
    version = fit("copy_dni", root, "--trainer.max_steps=6", *COPY)
    last = version / "checkpoints" / "last.ckpt"
    before = tree(root)
    main(base("copy_dni", root) + ["--trainer.max_steps=6", f"--ckpt_path={last}", *COPY])
    out = capsys.readouterr().out
    assert "is at step 6, the run's max_steps: there is nothing to train" in out
    assert tree(root) == before
    for extra, message in ((["--trainer.max_steps=3"], "is below the step of --ckpt_path"),
                           (["--trainer.max_steps=8", "--model.window=3"],
                            "model.window: 2 in the checkpoint, 3 given"),
                           (["--trainer.max_steps=8", "--seeds=0,1"], "--seeds starts one")):
        with pytest.raises(SystemExit) as info:
            main(base("copy_dni", root) + [*extra, f"--ckpt_path={last}", *COPY])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "nothing was written" in err.lower(), err
        assert tree(root) == before
