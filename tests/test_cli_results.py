"""Issue 13, what a researcher meets: results at the end of a run, resume into the same run,
plots and seeds, recipes by name, clear errors, threads. Each test shrinks copy_dni."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dnirnn
import dnirnn.checkpointing
import dnirnn.dni
import dnirnn.lit
import dnirnn.runs
import dnirnn.summary
from dnirnn import compare
from dnirnn.cli import pop_seeds
from dnirnn.curriculum import solved_level
from dnirnn.data import ptb
from dnirnn.main import main as dnirnn_main
from dnirnn.recipe import list_overlays, list_recipes, resolve_config
from dnirnn.runs import make_loggers
from dnirnn.tasks import CopyTask

from .cli_common import ROOT, TINY, exits, fit, rows

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


@pytest.fixture(autouse=True)
def _sandbox(cli_sandbox):
    """Every test here runs in the CLI sandbox (tests/conftest.py)."""


# ---- results at the end of a run ----------------------------------------------------------

LEVEL_UP = ["--trainer.callbacks.init_args.threshold=1000",  # a level solved every 3 steps
            "--trainer.callbacks.init_args.check_every=3"]


def test_summary_has_best_and_last_and_best_ckpt(tmp_path, capsys):
    fit(tmp_path / "r", "--trainer.max_steps=8", "--data.init_args.steps_per_epoch=4")
    s = json.loads((tmp_path / "r/version_0/summary.json").read_text())
    assert s["best"] == {"metric": "curriculum/max_level_solved", "value": 0.0, "step": 0}
    assert s["last"]["step"] == 8 and "val/bits_per_step" in s["last"]["metrics"]
    assert Path(s["checkpoints"]["best"]).name == "best.ckpt"
    assert Path(s["checkpoints"]["best"]).is_file() and Path(s["checkpoints"]["last"]).is_file()
    assert s["checkpoints"]["last_step"] == 8
    out = capsys.readouterr().out
    assert "best curriculum/max_level_solved = 0 at step 0" in out and "run folder:" in out


def test_summary_best_level_is_the_curriculum_level(tmp_path, capsys):
    """The level solved at the last step (after that step's metrics were logged) counts: the
    best line, the curriculum line and best.ckpt agree (they said 1 and 2 before)."""
    fit(tmp_path / "r", "--trainer.max_steps=6", "--data.init_args.steps_per_epoch=4",
        *LEVEL_UP)
    s = json.loads((tmp_path / "r/version_0/summary.json").read_text())
    assert s["curriculum"]["max_level_solved"] == 2
    assert s["best"] == {"metric": "curriculum/max_level_solved", "value": 2.0, "step": 6}
    assert s["checkpoints"]["best_step"] == 6
    best = torch.load(s["checkpoints"]["best"], weights_only=False)
    assert best["global_step"] == 6 and best["dnirnn"]["task"]["max_level_solved"] == 2
    out = capsys.readouterr().out
    assert "best curriculum/max_level_solved = 2 at step 6" in out
    assert "curriculum: max level solved 2, now at length 3 x repeats 1" in out


def test_summary_says_why_the_best_checkpoint_comes_after_the_best_step():
    """The level peaks at a logged step (2040); checkpoints come at validations (2250)."""
    record = {"stage": "fit", "global_step": 3000, "run_dir": "runs/x", "metrics": {},
              "best": {"metric": "curriculum/max_level_solved", "value": 6.0, "step": 2040},
              "checkpoints": {"best": "b.ckpt", "best_step": 2250, "last": "l.ckpt",
                              "last_step": 3000}}
    text = dnirnn.summary.format_summary(record)
    assert "best curriculum/max_level_solved = 6 at step 2040" in text
    assert "best checkpoint: b.ckpt (step 2250, the first checkpoint after the best at step " \
        "2040)" in text
    assert "last checkpoint: l.ckpt (step 3000)" in text
    record["checkpoints"]["best_step"] = 2040
    assert "best checkpoint: b.ckpt (step 2040)\n" in dnirnn.summary.format_summary(record)


def test_run_shorter_than_an_epoch_validates_at_its_last_step(tmp_path):
    fit(tmp_path / "r", "--trainer.max_steps=3", "--data.init_args.steps_per_epoch=100")
    version = tmp_path / "r/version_0"
    assert any(r.get("val/bits_per_step") for r in rows(version))
    s = json.loads((version / "summary.json").read_text())
    assert s["epoch"] == 0.03 and s["global_step"] == 3 and s["best"] is not None


def test_test_without_checkpoint_is_refused(tmp_path, capsys):
    exits(2, "test", "--config", "copy_dni", f"--trainer.default_root_dir={tmp_path / 'r'}")
    assert "test needs --ckpt_path" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_test_summary_names_the_checkpoint_and_its_step(tmp_path):
    fit(tmp_path / "r", "--trainer.max_steps=4", "--data.init_args.steps_per_epoch=4")
    last = tmp_path / "r/version_0/checkpoints/last.ckpt"
    fit(tmp_path / "t", f"--ckpt_path={last}", stage="test")
    s = json.loads((tmp_path / "t/version_0/summary.json").read_text())
    assert s["stage"] == "test" and s["global_step"] == 4 and s["checkpoint"] == str(last)


@pytest.mark.parametrize("stage", ["test", "validate"])
def test_scoring_a_run_writes_inside_that_run_folder(tmp_path, stage):
    """Issue 32 item 4: test / validate of a checkpoint of runs/X/version_0 keep their record
    in version_0/<stage>_<checkpoint>, not in a new version_1 (which plot would then draw as
    a run of its own); the fit's own files are left as they were."""
    fit(tmp_path / "r", "--trainer.max_steps=4", "--data.init_args.steps_per_epoch=4")
    run = tmp_path / "r/version_0"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    fit(tmp_path / "r", f"--ckpt_path={run / 'checkpoints/best.ckpt'}", stage=stage)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["version_0"]
    s = json.loads((run / f"{stage}_best/summary.json").read_text())
    assert s["stage"] == stage and s["run_dir"] == str(run / f"{stage}_best")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert compare.find_runs([str(tmp_path / "r")]) == [run]  # (plot: the fit alone)


def test_test_scores_a_copy_checkpoint_at_its_solved_level(tmp_path, capsys, monkeypatch):
    """A copy checkpoint whose curriculum solved length 2 and was learning length 3 is
    scored at length 2, and the summary says so; one that solved nothing at its level."""
    fit(tmp_path / "r", "--trainer.max_steps=6", "--data.init_args.steps_per_epoch=4",
        *LEVEL_UP)
    last = tmp_path / "r/version_0/checkpoints/last.ckpt"
    real, used = CopyTask.batch, []

    def batch(self, split, *a, **k):
        used.append((split, self.length, self.repeats))
        return real(self, split, *a, **k)

    monkeypatch.setattr(CopyTask, "batch", batch)
    fit(tmp_path / "t", f"--ckpt_path={last}", stage="test")
    assert used and set(used) == {("test", 2, 1)}
    s = json.loads((tmp_path / "t/version_0/summary.json").read_text())
    assert s["scored_at"]["length"] == 2 and s["scored_at"]["repeats"] == 1
    assert s["curriculum"] == {"length": 3, "repeats": 1, "max_level_solved": 2,
                               "max_length_solved": 2, "grow": "length", "delay": 0,
                               "max_delay_solved": 0}
    assert "scored at length 2 x repeats 1: the level of the checkpoint's max_level_solved = 2" \
        in capsys.readouterr().out
    fit(tmp_path / "u", "--trainer.max_steps=2", "--data.init_args.steps_per_epoch=4")
    used.clear()
    fit(tmp_path / "v", f"--ckpt_path={tmp_path / 'u/version_0/checkpoints/last.ckpt'}",
        stage="validate")
    assert set(used) == {("valid", 1, 1)}
    assert "the checkpoint solved no level yet" in capsys.readouterr().out


def test_solved_level_walks_back_the_curriculum():
    task = CopyTask(repeat=True)
    task.length, task.repeats, task.max_level_solved = 4, 2, 9  # (3, 3) solved 9, then (4, 1)
    assert solved_level(task) == (3, 3)
    task.max_level_solved = 4  # e.g. a run that started at length 4: only (4, 1) solved
    assert solved_level(task) == (4, 1)
    task.length, task.repeats, task.max_level_solved = 1, 1, 0
    assert solved_level(task) is None
    copy = CopyTask(repeat=False)
    copy.length, copy.max_level_solved = 7, 6
    assert solved_level(copy) == (6, 1)


def test_resume_continues_the_same_run_folder_and_wandb_id(tmp_path):
    root = tmp_path / "r"
    fit(root, "--trainer.max_steps=4", "--data.init_args.steps_per_epoch=4")
    fit(root, "--trainer.max_steps=8", "--data.init_args.steps_per_epoch=4",
        f"--ckpt_path={root / 'version_0/checkpoints/last.ckpt'}")
    assert [p.name for p in root.glob("version_*")] == ["version_0"]
    steps = [int(r["step"]) for r in rows(root / "version_0") if r.get("train/loss")]
    # one curve: both parts in one file, increasing, none twice. (Lightning logs the steps of
    # a run resumed from an epoch-end checkpoint one higher: 0-3, then 5-8.)
    assert len(steps) == 8 and steps == sorted(set(steps)) and steps[:4] == [0, 1, 2, 3]
    loggers = make_loggers(root, use_wandb=True, version=0, resume_step=4, wandb_id="abc123")
    assert loggers[0].log_dir == str(root / "version_0")
    assert loggers[1]._wandb_init["id"] == "abc123" and loggers[1]._wandb_init["resume"]


def test_last_n_periodic_checkpoints_kept_with_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        fit(tmp_path / "r", "--trainer.max_steps=6", "--data.init_args.steps_per_epoch=100",
            "--checkpoint_every=1", "--keep_checkpoints=2")
    finally:
        os.umask(old)
    ckpts = tmp_path / "r/version_0/checkpoints"
    assert sorted(p.name for p in ckpts.glob("*step=*.ckpt")) == [
        "epoch=0-step=5.ckpt", "epoch=0-step=6.ckpt"]
    assert (ckpts / "last.ckpt").stat().st_mode & 0o777 == 0o644


# ---- plots, comparisons, seeds ---------------------------------------------------------------

def fake_run(folder: Path, seed: int, bpc: list[float], window: int = 8) -> None:
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "train/loss", "val/bpc", "diag/sg_true_cos"])
        for i, v in enumerate(bpc):
            w.writerow([0, 10 * i, 2.0 - 0.1 * i, v, 0.1 * i])
    (folder / "config.yaml").write_text(
        f"seed_everything: {seed}\nmodel:\n  window: {window}\n"
        f"trainer:\n  default_root_dir: {folder.parent}\n")


def test_plot_draws_the_runs_and_groups_seeds(tmp_path, capsys):
    for seed, best in ((0, 1.5), (1, 1.7)):
        fake_run(tmp_path / "ptb" / f"version_{seed}", seed, [2.0, best, 1.9])
    fake_run(tmp_path / "other" / "version_0", 0, [2.0, 1.2], window=2)
    out = tmp_path / "cmp.png"
    dnirnn_main(["plot", str(tmp_path / "ptb"), str(tmp_path / "other"), "--out", str(out)])
    text = capsys.readouterr().out
    assert out.stat().st_size > 10_000
    assert "ptb/version_1" in text and "1.7" in text
    assert "1.6 ± 0.1414 (1.5..1.7)" in text and "  2" in text  # one group of two seeds
    assert "other" not in text.split("group")[1]  # window 2 is not a seed of window 8
    titles = [t for t, _ in compare.panels([compare.load_run(tmp_path / "ptb/version_0")])]
    assert any("true future gradient" in t for t in titles)


def test_plot_against_a_logged_series(tmp_path):
    """``x=time/train_s``: every point moves to the run's clock at its step, linear between
    the logged steps; runs that never logged the series are left out."""
    run = compare.Run(tmp_path, {"time/train_s": [(10, 2.0), (30, 10.0)],
                                 "curriculum/max_level_solved": [(20, 3.0), (40, 5.0)]})
    at = compare.along(run, "time/train_s")
    assert [at(10), at(20), at(30), at(5), at(60)] == [2.0, 6.0, 10.0, 1.0, 20.0]
    assert compare.along(run, "nope") is None
    other = compare.Run(tmp_path / "other", {"curriculum/max_level_solved": [(20, 9.0)]})
    out = compare.plot([run, other], tmp_path / "by_time.png", x="time/train_s")
    assert out.stat().st_size > 5_000
    with pytest.raises(ValueError, match="no run logged"):
        compare.plot([other], tmp_path / "none.png", x="time/train_s")


def test_seeds_option():
    assert pop_seeds(["fit", "--seeds=0,1,2", "-c", "x"]) == ([0, 1, 2], ["fit", "-c", "x"])
    assert pop_seeds(["fit", "--seeds", "3"]) == ([3], ["fit"])


# ---- outside the repository ---------------------------------------------------------------

def test_recipes_and_overlays_by_name_from_anywhere(tmp_path, capsys):
    """(The cwd is tmp: names, not paths relative to the checkout. From a wheel:
    tests/test_wheel.py.)"""
    recipe, overlay = ROOT / "recipes/copy_dni.yaml", ROOT / "recipes/overlays/dni_paper.yaml"
    for name in ("copy_dni", "copy_dni.yaml", "recipes/copy_dni.yaml"):
        assert resolve_config(name) == str(recipe)
    for name in ("dni_paper", "dni_paper.yaml", "overlays/dni_paper",
                 "recipes/overlays/dni_paper.yaml"):
        assert resolve_config(name) == str(overlay)
    assert len(list_recipes()) == len(list((ROOT / "recipes").glob("*.yaml")))
    assert set(list_overlays()) == {p.stem for p in (ROOT / "recipes/overlays").glob("*.yaml")}
    dnirnn_main(["recipes"])
    out = "\n" + capsys.readouterr().out
    assert 0 <= out.index("\ncopy_dni ") < out.index("Overlays") < out.index("\ndni_paper ")


def test_python_dash_m_and_version():
    out = subprocess.run([sys.executable, "-m", "dnirnn", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == f"dnirnn {dnirnn.__version__}" and dnirnn.__version__[0].isdigit()
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_ptb_default_root_is_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("DNIRNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ptb.resolve_root(None) == tmp_path / "xdg/dnirnn/ptb"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert ptb.resolve_root(None) == Path.home() / ".cache/dnirnn/ptb"
    monkeypatch.setenv("DNIRNN_DATA", str(tmp_path / "env"))
    assert ptb.resolve_root(None) == tmp_path / "env"
    assert ptb.resolve_root(tmp_path / "arg") == tmp_path / "arg"


def test_make_defaults_to_one_thread_and_readme_says_how_to_raise_it():
    assert "export OMP_NUM_THREADS ?= 1" in (ROOT / "Makefile").read_text()
    assert "OMP_NUM_THREADS=" in (ROOT / "README.md").read_text().split("## Running")[0]


def test_wandb_offline_from_the_command_line_has_no_git_root_warning(tmp_path):
    """As a user runs it (a process, W&B offline, not silenced): W&B finds the run folder it
    was given (it warned "git root <run> does not exist" when dnirnn created the folder after
    W&B started), and dnirnn's own "upload with wandb sync" line prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "DNIRNN_"))}
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="1", XDG_CACHE_HOME=str(tmp_path / "cache"),
               **{f"WANDB_{d}_DIR": str(tmp_path / "wandb_home" / d.lower())
                  for d in ("CONFIG", "CACHE", "DATA", "ARTIFACT")})
    proc = subprocess.run(
        [sys.executable, "-m", "dnirnn", "fit", "--config", "copy_dni",
         "--trainer.max_steps=2", "--data.init_args.steps_per_epoch=2",
         "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path / 'run'}",
         "--model.hidden_size=8"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*")), "W&B wrote its run"
    assert "git root" not in proc.stdout + proc.stderr
    assert "wandb sync" in proc.stdout + proc.stderr


def test_a_full_disk_is_named_with_the_intact_checkpoint_and_the_resume_command(
        tmp_path, capsys, monkeypatch):
    """torch's writer reports a full disk as a RuntimeError without an errno: the message
    says "no space left", names the newest intact checkpoint (here a periodic one: no
    last.ckpt yet) with its step, and the command that resumes from it."""
    real, calls = torch.save, []

    def full(obj, f, *a, **k):
        calls.append(1)
        if len(calls) >= 2:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write "
                               "failed")
        return real(obj, f, *a, **k)

    usage = dnirnn.checkpointing.shutil.disk_usage
    monkeypatch.setattr(dnirnn.checkpointing.torch, "save", full)
    monkeypatch.setattr(dnirnn.checkpointing.shutil, "disk_usage",
                        lambda p: usage(p)._replace(free=4096))
    exits(2, "fit", "--config", "copy_dni", f"--trainer.default_root_dir={tmp_path / 'r'}",
          *TINY, "--trainer.max_steps=10", "--data.init_args.steps_per_epoch=100",
          "--checkpoint_every=1", "--keep_checkpoints=3")
    err = capsys.readouterr().err
    ckpts = sorted((tmp_path / "r/version_0/checkpoints").glob("*.ckpt"))
    assert len(ckpts) >= 1 and not list(ckpts[0].parent.glob(".*.tmp"))
    (intact,) = [c for c in ckpts if c.name != "last.ckpt"] or ckpts
    assert "no space left on the device" in err and err.count("could not write") == 0, err
    assert f"{intact} (step 1) is intact" in err and f"--ckpt_path={intact}" in err, err
    assert "summary above" not in err and len(err.strip().splitlines()) == 1
