"""The run folder: what a run leaves behind and what it says when it ends.

    runs/<recipe>/version_N/   metrics.csv, hparams.yaml, config.yaml, summary.json,
                               checkpoints/best.ckpt, last.ckpt (+ the last N periodic ones)
        version_N/test_best/   a test (validate) of its best.ckpt: the same files, its score

- ``monitor_for``: the task's headline metric, which picks ``best.ckpt``: the largest level
  solved (copy, repeat copy), validation bits per character (PTB char), perplexity (PTB
  word), bits per scored step (recall).
- ``RunRecord``: tracks the best value of that metric and its step (kept in the checkpoint,
  so a resumed run goes on tracking it), writes ``summary.json`` (``best``, ``last``, the
  checkpoints and their steps) and prints a short summary (``dnirnn.summary``) at the end
  of fit / validate / test, or when interrupted (then it names the checkpoint to resume
  from and its step, or says that nothing can be resumed). The copy tasks' best, the
  largest level solved, is read from the curriculum at every step, so it is the figure of
  the curriculum line.
- ``StepLabels``: the ``step`` of ``metrics.csv`` is the training step, also after a resume.
- ``ValidateAtEnd``: a run stopped by ``max_steps`` before its epoch ends validates at its
  last step (a 50-step PTB run has a ``val/bpc`` and a ``best.ckpt``).
- ``ResumableCSVLogger``: a resumed run writes into its own run folder and keeps the rows
  of ``metrics.csv`` logged before its checkpoint (Lightning's CSV logger deletes the file).
- ``check_writable``: the output folder can be written, checked before anything is
  (``OutputFolderError``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import tempfile
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dnirnn.summary import format_summary

COMPLETED: list[Path] = []  # run folders whose fit ended in this process (``--seeds``)


def monitor_for(datamodule: Any) -> tuple[str, str]:
    """``(metric, "min" | "max")``: the metric that ranks checkpoints of this task."""
    task = getattr(datamodule, "task_name", None)
    if task == "copy":
        grow = getattr(getattr(datamodule, "task", None), "grow", "length")
        return CURRICULUM[grow], "max"
    if task == "lm":
        return ("val/bpc", "min") if getattr(datamodule, "level", "char") == "char" \
            else ("val/ppl", "min")
    return "val/bits_per_step", "min"


class OutputFolderError(ValueError):
    """The output folder cannot be written; found before the run wrote anything."""


def check_writable(root: Path) -> None:
    """Raises ``OutputFolderError`` if files cannot be created under ``root``. Creates
    nothing: the probe file goes into the nearest existing folder and is removed."""
    folder = Path(root).absolute()
    while not folder.exists():
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(folder))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".dnirnn-write-test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OutputFolderError(
            f"the output folder {root} (trainer.default_root_dir) cannot be written: "
            f"{e.filename or folder}: {e.strerror or e}. Nothing was written and nothing "
            f"needs to be resumed. Choose a folder you can write with "
            f"--trainer.default_root_dir=PATH (or fix its permissions).") from None


def _number(v: Any) -> float | str:
    v = float(v.detach().cpu()) if isinstance(v, torch.Tensor) else float(v)
    return v if math.isfinite(v) else str(v)


def wandb_offline() -> bool:
    """Whether W&B logs offline (Lightning sets ``WANDB_MODE=dryrun`` for ``offline=True``)."""
    return os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun")


def wandb_has_key() -> bool:
    """Whether W&B can log online: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return False
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def make_loggers(root: Path, project: str = "dnirnn", use_wandb: bool = True,
                 version: int | str | None = None, resume_step: int | None = None,
                 wandb_id: str | None = None) -> list:
    """A local CSV record (first: it names the run folder) and W&B (offline without a key).
    ``version`` / ``resume_step`` / ``wandb_id`` continue an existing run (see cli docstring);
    a str ``version`` is a folder under ``root`` (a validate / test inside the run it scores)."""
    csv = ResumableCSVLogger(str(root), version=version, resume_step=resume_step)
    if not use_wandb:
        return [csv]
    online = wandb_has_key()
    if not online:
        os.environ.setdefault("WANDB_MODE", "offline")
    resume = {"id": wandb_id, "resume": "allow"} if wandb_id else {}
    name = f"{root.name}/{version}" if isinstance(version, str) else root.name  # (a test's)
    wandb = WandbLogger(project=project, save_dir=str(root), name=name, offline=not online,
                        **resume)
    return [csv, wandb]


# the copy tasks' headline metric, by what the curriculum raises (``CopyTask.grow``): the
# largest level L·R solved, or the largest delay D solved; read from the task at every step
CURRICULUM = {"length": "curriculum/max_level_solved", "delay": "curriculum/max_delay_solved"}


def curriculum_figure(monitor: str, task: Any) -> float | None:
    """The task's own value of the curriculum metric ``monitor`` (no sync), or None when
    ``monitor`` is not a curriculum metric or there is no task."""
    if monitor not in CURRICULUM.values() or task is None:
        return None
    return float(getattr(task, monitor.split("/")[1]))


class RunRecord(L.Callback):
    """``summary.json`` and the final summary (see the module docstring).

    Args:
        monitor, mode: the headline metric (``monitor_for``).
        best_checkpoint: the ``ModelCheckpoint`` that keeps ``best.ckpt`` (fit only).
        ckpt_path, ckpt_step: the checkpoint a validate / test run scores, and its step.
        periodic: the ``PeriodicCheckpoint`` that keeps ``last.ckpt`` (fit only).
        scored_at: for validate / test of a copy task, the callback that chose the level
            scored (``dnirnn.curriculum.ScoreAtSolvedLevel``).
    """

    def __init__(self, monitor: str, mode: str, best_checkpoint: Any = None,
                 ckpt_path: str | None = None, ckpt_step: int | None = None,
                 periodic: Any = None, scored_at: Any = None) -> None:
        self.monitor, self.mode, self.best_checkpoint = monitor, mode, best_checkpoint
        self.ckpt_path, self.ckpt_step = ckpt_path, ckpt_step
        self.periodic, self.scored_at = periodic, scored_at
        self.best: dict[str, Any] | None = None
        self.validated_at: int | None = None  # the step of the val/* metrics in this process
        self.wandb_id: str | None = None
        self.stopped_by = signal.SIGINT  # the signal that interrupted a fit

    # ---- tracking ---------------------------------------------------------------------

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger) and trainer.is_global_zero:
                self.wandb_id = lg.experiment.id

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._track_level(trainer, pl_module)  # level 0 at step 0, or a resumed run's level

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        self._track_level(trainer, pl_module)

    def _track_level(self, trainer: L.Trainer, pl_module: Any) -> None:
        """The largest level solved, from the curriculum itself (a Python int: no sync), and
        the step at which it was first reached."""
        level = curriculum_figure(self.monitor, getattr(pl_module, "task", None))
        if level is None:
            return
        if self.best is None or level > self.best["value"]:
            self.best = {"metric": self.monitor, "value": level, "step": trainer.global_step}

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.validated_at = trainer.global_step
            self._track(trainer)
        elif trainer.state.fn == "validate":
            self._write(trainer, pl_module, "validate")

    def _track(self, trainer: L.Trainer) -> None:
        if self.monitor in CURRICULUM.values():  # (tracked at every step)
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        old = None if self.best is None else self.best["value"]
        if old is None or (value < old if self.mode == "min" else value > old):
            self.best = {"metric": self.monitor, "value": value, "step": trainer.global_step}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wandb_id": self.wandb_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wandb_id = state.get("best"), state.get("wandb_id")

    # ---- the record ---------------------------------------------------------------------

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._write(trainer, pl_module, "fit")

    def on_test_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._write(trainer, pl_module, "test")

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        if trainer.state.fn != "fit":
            return
        if isinstance(exception, KeyboardInterrupt):
            self.stopped_by = getattr(exception, "signum", signal.SIGINT)
        elif isinstance(exception, SIGTERMException):
            self.stopped_by = signal.SIGTERM
        else:
            return
        self._write(trainer, pl_module, "fit (interrupted)")

    def _write(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if not trainer.is_global_zero or log_dir is None:
            return
        record = self.record(trainer, pl_module, stage, Path(log_dir))
        path = Path(log_dir) / "summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".summary.json.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, path)
        if stage == "fit":
            COMPLETED.append(Path(log_dir))
        print(format_summary(record) + wandb_sync_lines(trainer), flush=True)

    def record(self, trainer: L.Trainer, pl_module: Any, stage: str, log_dir: Path) -> dict:
        metrics = {k: _number(v) for k, v in trainer.callback_metrics.items()}
        fit = stage.startswith("fit")
        step = trainer.global_step if fit else self.ckpt_step or 0
        per_epoch = trainer.num_training_batches if fit else math.inf
        record: dict[str, Any] = {"stage": stage, "global_step": step,
                                  "run_dir": str(log_dir), "metrics": metrics}
        if isinstance(per_epoch, int | float) and 0 < per_epoch < math.inf:
            record["epoch"] = round(step / per_epoch, 4)  # epochs trained, fractional
        record["last"] = {"step": step, "metrics": metrics}
        if fit:  # (train/* is of the last step; val/* of the last validation, maybe earlier)
            record["last"]["validated_at"] = self.validated_at
        task = getattr(pl_module, "task", None)
        if task is not None and task.episodic and hasattr(task, "max_level_solved"):
            scored = getattr(self.scored_at, "checkpoint_level", None)
            record["curriculum"] = scored or task.state_dict()
        if not fit:
            record["checkpoint"] = self.ckpt_path
            if getattr(self.scored_at, "scored", None):
                record["scored_at"] = self.scored_at.scored
            return record
        self._track_level(trainer, pl_module)
        record["best"] = self.best
        last = self.periodic.last_checkpoint() if self.periodic is not None else None
        best = self.best_checkpoint
        record["checkpoints"] = {
            "best": getattr(best, "best_model_path", "") or None,
            "best_step": getattr(best, "saved_step", None),
            "last": last[0] if last else None, "last_step": last[1] if last else None,
            "cadence": self.periodic.describe() if self.periodic is not None else None}
        if stage != "fit":
            record["interrupted_by"] = signal.Signals(self.stopped_by).name
            record["resume"] = {"checkpoint": last[0], "step": last[1]} if last else None
        return record


def wandb_sync_lines(trainer: L.Trainer) -> str:
    """How to upload an offline W&B run, under the summary (empty when W&B was online)."""
    return "".join(f"\n  W&B ran offline (no API key configured); upload with:\n"
                   f"    wandb sync {lg.save_dir}/wandb/offline-run-*"
                   for lg in trainer.loggers
                   if isinstance(lg, WandbLogger) and wandb_offline())


class ValidateAtEnd(L.Callback):
    """Stops the run on its ``max_steps``-th step through ``trainer.should_stop``, which makes
    Lightning validate (and checkpoint) at that step even in the middle of an epoch."""

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class StepLabels(L.Callback):
    """Keeps Lightning's logging step equal to the training step, so that ``metrics.csv``'s
    ``step`` (and the log_every_n_steps cadence) of a resumed run is that of an uninterrupted
    one. Lightning labels rows with its own count of batches, which a resume from a
    checkpoint written at an epoch end or after a validation restores one too high."""

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` (run folders ``version_N``) that, given ``version`` and
    ``resume_step``, continues an existing run folder: the rows of its ``metrics.csv`` logged
    before the checkpoint (``step < resume_step``) are kept, later ones dropped."""

    def __init__(self, save_dir: str, version: int | str | None = None,
                 resume_step: int | None = None) -> None:
        super().__init__(save_dir=save_dir, name="", version=version)
        self._kept: list[dict[str, str]] = []
        path = Path(self.log_dir) / "metrics.csv"
        if resume_step is not None and path.is_file():
            with open(path, newline="") as f:
                self._kept = [r for r in csv.DictReader(f)
                              if r.get("step", "").isdigit() and int(r["step"]) < resume_step]

    @property
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        with warnings.catch_warnings():  # "Previous log files ... will be deleted": kept here
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            exp = super().experiment
        if self._kept and hasattr(exp, "metrics"):
            exp.metrics[:0] = self._kept
            self._kept = []
        return exp


def run_folder_of(ckpt_path: str | os.PathLike[str], root: Path) -> int | None:
    """The version number N if ``ckpt_path`` is ``<root>/version_N/checkpoints/*.ckpt``."""
    p = Path(ckpt_path).absolute()
    version = p.parent.parent
    if p.parent.name != "checkpoints" or version.parent != Path(root).absolute():
        return None
    name = version.name
    return int(name[8:]) if name.startswith("version_") and name[8:].isdigit() else None
