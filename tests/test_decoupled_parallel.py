"""Decoupled layers in 2 CPU processes (gloo), through the CLI (issue 19, items 2-5): the
parallel run equals its one-process simulation; a run stopped and resumed is exact, in 2
processes and with the 2-process checkpoint resumed in 1; a killed process stops the other
within seconds with a clear error; bad input is one line and exit 2. Tiny delayed-recall
episodes (no data files): 3 windows per step, an epoch end inside, 3 layers in 2 groups."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dnirnn.main import main

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

CONFIG = {
    "seed_everything": 0,
    "trainer": {"accelerator": "cpu", "devices": 2, "strategy": "layer_parallel",
                "max_steps": 6, "log_every_n_steps": 1, "enable_progress_bar": False,
                "enable_model_summary": False, "num_sanity_val_steps": 0},
    "data": {"class_path": "dnirnn.datamodules.RecallDataModule",
             "init_args": {"num_symbols": 4, "length": 12, "query_steps": 2,
                           "num_distractors": 3, "batch_size": 4, "steps_per_epoch": 4,
                           "val_batches": 1}},
    "model": {"class_path": "dnirnn.decoupled.lit.DecoupledModule",
              "init_args": {"num_layers": 3, "groups": 2, "hidden_size": 6,
                            "core": {"embed_size": 4}, "window": 4, "eval_chunk": 12,
                            "synthesizer": {"hidden": 6, "lr": 0.01}, "lr": 0.01,
                            "interface": {"kind": "linear", "fit": "rls",
                                          "context": "target", "warmup": 4}}},
}


@pytest.fixture(autouse=True)
def _sandbox(cli_sandbox):
    """Every test here runs in the CLI sandbox (tests/conftest.py)."""


def config(tmp: Path) -> Path:
    path = tmp / "decoupled.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def fit_args(cfg: Path, root: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(cfg), f"--trainer.default_root_dir={root}", "--wandb=false",
            *extra]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def two_processes(args: list[str], cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "dnirnn", *args], env=env(), cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def version(root: Path) -> Path:
    (v,) = root.glob("version_*")
    return v


def losses(root: Path) -> dict[int, float]:
    with open(version(root) / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f)
                if r.get("train/loss")}


def ckpt(root: Path, name: str = "last.ckpt") -> dict:
    (path,) = (version(root) / "checkpoints").glob(name)
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():  # every group, from the process that trains it
        torch.testing.assert_close(v, b["state_dict"][k], rtol=1e-6, atol=1e-7, msg=k)
    for ga, gb in zip(a["decoupled"]["groups"], b["decoupled"]["groups"], strict=True):
        for part in ("core", "synthesizer", "interface"):  # optimizers
            sa, sb = ga["optimizers"][part], gb["optimizers"][part]
            assert (sa is None) == (sb is None)
            for i in (sa or {"state": {}})["state"]:
                for key, t in sa["state"][i].items():
                    torch.testing.assert_close(t, sb["state"][i][key], rtol=1e-6, atol=1e-7)
        ra, rb = ga["runner"], gb["runner"]  # carried state and messages in flight
        assert (ra["pushed"], ra["updates"]) == (rb["pushed"], rb["updates"])
        assert [(k, n) for k, n, _ in ra["inbox"]] == [(k, n) for k, n, _ in rb["inbox"]]
        for (_, _, x), (_, _, y) in zip(ra["inbox"], rb["inbox"]):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
        for x, y in zip(ra["state"], rb["state"]):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


def test_two_processes_equal_one_process_and_resume_exactly(tmp_path):
    """The same schedule in 1 process (loopback) and in 2 (gloo isend / irecv): the same
    parameters, synthesizers (least-squares statistics included), optimizers, carried states
    and messages in flight, and the same loss at every step. Stopped at step 3 (with an
    activation and a gradient in flight) and resumed, in 2 processes or in 1: the same run."""
    cfg = config(tmp_path)
    launch = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
    before = {k: os.environ.get(k) for k in launch}
    main(fit_args(cfg, tmp_path / "par", "--checkpoint_every=3"))  # (rank 0 in this process)
    assert {k: os.environ.get(k) for k in launch} == before  # the launch's variables undone
    main(fit_args(cfg, tmp_path / "sim", "--trainer.devices=1"))
    assert_same_state(ckpt(tmp_path / "par"), ckpt(tmp_path / "sim"))
    full, sim = losses(tmp_path / "par"), losses(tmp_path / "sim")
    assert sorted(full) == list(range(6))
    for step in full:
        assert full[step] == pytest.approx(sim[step], rel=1e-6, abs=1e-7)
    at3 = next((version(tmp_path / "par") / "checkpoints").glob("*step=3.ckpt"))
    groups = torch.load(at3, map_location="cpu", weights_only=False)["decoupled"]["groups"]
    assert [k for k, _, _ in groups[0]["runner"]["inbox"]] == ["B"]  # (delay 2, lag 1)
    assert [k for k, _, _ in groups[1]["runner"]["inbox"]] == ["F"]
    two_processes(fit_args(cfg, tmp_path / "resumed", f"--ckpt_path={at3}"), tmp_path)
    main(fit_args(cfg, tmp_path / "cross", "--trainer.devices=1", f"--ckpt_path={at3}"))
    for run in ("resumed", "cross"):
        again = losses(tmp_path / run)
        assert sorted(again) == [3, 4, 5], run
        for step in again:
            assert again[step] == pytest.approx(full[step], rel=1e-6, abs=1e-7), (run, step)
        assert_same_state(ckpt(tmp_path / run), ckpt(tmp_path / "par"))


def test_an_error_after_a_peer_died_is_its_one_paragraph(tmp_path):
    """A collective (Lightning's, not the pipeline's) may be the first to see a dead peer:
    its error becomes the same one paragraph, naming the group whose process ended."""
    from dnirnn.decoupled.parallel import Watchdog, _watch, as_peer_lost, release_workers

    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(9)"])
    dead.wait()
    assert as_peer_lost(RuntimeError("Connection reset by peer")) is None  # (no such run)
    _watch(Watchdog(workers=[dead], grace=60))
    try:
        lost = as_peer_lost(RuntimeError("[gloo] Read error: Connection reset by peer"))
        assert lost is not None and "layer group 1 (pid" in str(lost) and "code 9" in str(lost)
        assert as_peer_lost(ValueError("unrelated")) is not None  # (the peer is gone anyway)
    finally:
        release_workers()
    assert as_peer_lost(RuntimeError("Connection reset by peer")) is None


def test_the_watchdog_ends_a_process_that_waits_for_nothing(tmp_path):
    """A process busy without messages (a long validation) when its peer dies: the watchdog
    ends it after its grace period, with the one paragraph, exit code 1."""
    script = ("import subprocess, sys, time\n"
              "from dnirnn.decoupled.parallel import Watchdog, _watch\n"
              "dead = subprocess.Popen([sys.executable, '-c', 'raise SystemExit(3)'])\n"
              "_watch(Watchdog(workers=[dead], grace=1.0, period=0.1))\n"
              "time.sleep(120)\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], env=env(), capture_output=True,
                          text=True, timeout=100)
    assert proc.returncode == 1 and time.monotonic() - start < 60
    assert "dnirnn: error: the process of layer group 1" in proc.stderr
    assert "--ckpt_path" in proc.stderr


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_long_run(tmp: Path) -> tuple[subprocess.Popen, int, Path]:
    """A 2-process run that would train for a long time; returns it once it trains (a
    periodic checkpoint is on disk), with the worker's pid and the stderr file."""
    cfg = config(tmp)
    err = tmp / "stderr.txt"
    args = fit_args(cfg, tmp / "run", "--trainer.max_steps=100000",
                    "--data.init_args.steps_per_epoch=100000", "--checkpoint_every=5")
    proc = subprocess.Popen([sys.executable, "-m", "dnirnn", *args], env=env(), cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    deadline = time.monotonic() + 240
    while not list(tmp.glob("run/version_*/checkpoints/*step=5.ckpt")):
        assert proc.poll() is None, err.read_text()[-3000:]
        assert time.monotonic() < deadline, "the run did not start training"
        time.sleep(0.2)
    (worker,) = _children(proc.pid)
    return proc, worker, err


def test_a_killed_worker_stops_the_run_within_seconds(tmp_path):
    proc, worker, err = _start_long_run(tmp_path)
    os.kill(worker, signal.SIGKILL)
    start = time.monotonic()
    try:
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    waited = time.monotonic() - start
    text = err.read_text()
    assert code == 1, text[-3000:]
    assert waited < 15, f"the run took {waited:.1f} s to stop"
    assert "dnirnn: error: layer group 0 " in text and "layer group 1" in text, text[-3000:]
    assert "--ckpt_path" in text and "Traceback" not in text


def test_a_killed_main_process_stops_its_worker_within_seconds(tmp_path):
    proc, worker, err = _start_long_run(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    start = time.monotonic()
    while _alive(worker) and time.monotonic() - start < 60:
        time.sleep(0.2)
    waited = time.monotonic() - start
    if _alive(worker):
        os.kill(worker, signal.SIGKILL)
    assert waited < 15, f"the worker took {waited:.1f} s to stop"
    assert "layer group 0" in err.read_text()


@pytest.mark.parametrize("extra, field", [
    (["--model.init_args.groups=3", "--model.init_args.num_layers=2"], "model.groups"),
    (["--model.init_args.groups=3"], "trainer.devices"),  # 3 groups, 2 processes
    (["--trainer.strategy=ddp"], "trainer.strategy"),
    (["--model.core.dropout=0.1"], "model.core.dropout: decoupled layer groups train without"),
    (["--model.interface.context=phase"], "model.interface.context: must be 'target'"),
    (["--model.interface.delay=0"], "model.interface.delay: must be an integer >= 1"),
    (["--model.boundary=dni", "--model.interface.clip=2.0"], "model.interface.clip: "
     "DecoupledModule builds its synthesizers with one clip"),
    (["--model.targets.lam=1.0"], "model.targets.lam: DecoupledModule does not use it"),
    (["--model.init_args.interface_delay=3"], "renamed model.interface.delay"),
    (["--model.init_args.dropout=0.1"], "renamed model.core.dropout"),
    (["--model.interface=linear"], "--model.interface.kind=linear"),
    (["--trainer.accelerator=gpu", "--trainer.devices=64"], "gpu"),  # more than the machine's
])
def test_bad_input_is_one_line_and_exit_2(extra, field, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(fit_args(config(tmp_path), tmp_path / "run", *extra))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dnirnn: error:") and field in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
