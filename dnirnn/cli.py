"""``dnirnn fit|validate|test --config recipes/X.yaml [--model.window=4 ...]`` (LightningCLI).

The model is any ``RecurrentModule`` (``dnirnn.lit``). A recipe either gives ``model:`` as
plain init args of the default, ``DNIModule`` (every single-level recipe), or names another
class with ``class_path`` / ``init_args`` (``dnirnn.lit_hierarchy.HierarchyModule``). Dotted
overrides work the same for both: ``--model.window=4``.

``--config`` takes a path or a shipped recipe's name (``copy_dni``; ``dnirnn recipes``).
Every run writes to ``trainer.default_root_dir`` (``runs/<recipe>`` in the recipes):

    runs/<recipe>/version_N/   metrics.csv, hparams.yaml, config.yaml, summary.json,
                               checkpoints/best.ckpt, last.ckpt (+ the last N periodic ones)
    runs/<recipe>/wandb/       the W&B run (offline when no API key is configured)

A fit resumed from a checkpoint of ``runs/<recipe>/version_N`` continues in that folder and
the same W&B run (``dnirnn.runs``). ``validate`` / ``test`` need ``--ckpt_path``; on a copy
task they score at the checkpoint's largest solved level (``ScoreAtSolvedLevel``).
``--seeds=0,1,2`` runs one fit per seed and prints their comparison (``dnirnn.compare``).
Checkpoints come every ``--checkpoint_every`` (default 5 min) and at epoch ends, and Ctrl-C /
SIGTERM checkpoint the step they interrupt (``dnirnn.interrupt``). ``--config`` files are
applied first, in their order, then the other options, wherever they are written.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dnirnn.checkpointing import (
    AtomicCheckpointIO,
    CheckpointError,
    CheckpointWriteError,
    check_checkpoint,
    read_checkpoint,
)
from dnirnn.cli_help import RUN_OPTIONS, wants_short_help
from dnirnn.cli_parser import ConciseParser, ConfigError, model_options_help, user_message
from dnirnn.curriculum import ScoreAtSolvedLevel
from dnirnn.data.ptb import DataError
from dnirnn.decoupled.parallel import as_peer_lost, release_workers, remember_command
from dnirnn.interrupt import PeriodicCheckpoint, parse_every
from dnirnn.lit import DNIModule
from dnirnn.malloc import keep_freed_memory
from dnirnn.recipe import RecipeNotFound, configs_first, nulls_in_groups, resolve_config_args
from dnirnn.recurrent import NonFiniteLossError, RecurrentModule
from dnirnn.runs import (
    COMPLETED,
    LEVEL,
    RunRecord,
    StepLabels,
    ValidateAtEnd,
    check_writable,
    make_loggers,
    monitor_for,
    run_folder_of,
)


class BestCheckpoint(ModelCheckpoint):
    """``best.ckpt``: the checkpoint with the best value of the task's metric so far, judged
    at validations. Skips (instead of failing) a validation at which the metric has not been
    logged yet. The copy tasks' level is read from the curriculum itself (the logged value
    is that of the last logged step, before the step's curriculum decision)."""

    def __init__(self, monitor: str, mode: str) -> None:
        super().__init__(monitor=monitor, mode=mode, filename="best", save_top_k=1,
                         auto_insert_metric_name=False, enable_version_counter=False)
        self.saved_step: int | None = None

    def _monitor_candidates(self, trainer: L.Trainer) -> dict:
        candidates = super()._monitor_candidates(trainer)
        task = getattr(trainer.lightning_module, "task", None)
        if self.monitor == LEVEL and task is not None:
            candidates[LEVEL] = torch.tensor(float(task.max_level_solved))
        return candidates

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        if self.monitor in monitor_candidates:
            super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self.saved_step = trainer.global_step

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "saved_step": self.saved_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.saved_step = state.get("saved_step")


class ConfigToLoggers(SaveConfigCallback):
    """Saves config.yaml in the run folder and logs the FULL config (trainer, data, model) to
    every logger (W&B run config, hparams)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = json.loads(self.parser.dump(self.config, skip_none=False, format="json"))
        model = config.get("model")
        if isinstance(model, dict) and "init_args" in model:  # flat, as the recipes write it:
            config["model"] = {"class_path": model.get("class_path"), **model["init_args"]}
        for lg in trainer.loggers:
            lg.log_hyperparams({"config": config})


class DNICLI(LightningCLI):
    _ckpt: dict[str, Any] | None = None  # the --ckpt_path checkpoint, read once

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        subs = dict(LightningCLI.subcommands())
        subs.pop("predict", None)  # no predict_step: dnirnn scores runs with validate / test
        return subs

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        parser.epilog = model_options_help(DNIModule)
        return parser

    def add_arguments_to_parser(self, parser) -> None:
        # model: plain init args mean DNIModule; class_path picks another RecurrentModule
        parser.set_defaults({"model": {"class_path": "dnirnn.lit.DNIModule"}})
        for name in ("task_name", "input_size", "output_size"):
            target = "task" if name == "task_name" else name
            parser.link_arguments(f"data.{name}", f"model.init_args.{target}",
                                  apply_on="instantiate")
        for name, (kind, default, text) in RUN_OPTIONS.items():  # (dnirnn.cli_help)
            parser.add_argument(f"--{name}", type=kind, default=default, help=text)

    def _cfg(self) -> dict[str, Any]:
        return self.config_init[self.subcommand] if self.subcommand else self.config_init

    def _root(self) -> Path:
        return Path(self._cfg().get("trainer", {}).get("default_root_dir") or "runs/default")

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        cfg, root = self._cfg(), self._root()
        RUN_ROOTS.append(root)
        if cfg.get("trainer", {}).get("logger") in (None, True):
            kwargs["logger"] = make_loggers(root, cfg.get("wandb_project", "dnirnn"),
                                            bool(cfg.get("wandb", True)), **self._resume(root))
        steps, seconds = parse_every(cfg.get("checkpoint_every"))
        keep = int(cfg.get("keep_checkpoints"))
        if keep < 0:
            raise ValueError(f"keep_checkpoints: must be >= 0 (0: keep all), got {keep}")
        ckpt, path = self._ckpt or {}, cfg.get("ckpt_path")
        resumed = (path, int(ckpt["global_step"])) if ckpt and self.subcommand == "fit" else None
        periodic = PeriodicCheckpoint(steps, seconds, keep, resumed)
        best = BestCheckpoint(*monitor_for(self.datamodule))
        scored = ScoreAtSolvedLevel() if self.subcommand in ("validate", "test") else None
        record = RunRecord(best.monitor, best.mode, best, path, ckpt.get("global_step"),
                           periodic, scored)
        callbacks = [periodic, best, StepLabels(), *([scored] if scored else []), record,
                     ValidateAtEnd()]
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": callbacks}
        if not cfg.get("trainer", {}).get("plugins"):
            kwargs["plugins"] = [AtomicCheckpointIO()]  # a kill mid-save keeps last.ckpt whole
        return super().instantiate_trainer(**kwargs)

    def _resume(self, root: Path) -> dict[str, Any]:
        """A fit from a checkpoint of ``root/version_N`` continues that folder and W&B run."""
        path = self._cfg().get("ckpt_path")
        if self.subcommand != "fit" or self._ckpt is None:
            return {}
        version = run_folder_of(path, root)
        if version is None:
            return {}
        states = self._ckpt.get("callbacks") or {}
        record = next((v for k, v in states.items() if "RunRecord" in str(k)), {})
        return {"version": version, "resume_step": int(self._ckpt.get("global_step", 0)),
                "wandb_id": record.get("wandb_id")}

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would load --ckpt_path here (a raw traceback for a bad file) and
        # silently replace the model config given on the command line by the checkpoint's.
        # dnirnn keeps the config as given and checks that the checkpoint fits it (preflight).
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if path and path not in CKPT_ALIASES:
            self._ckpt = read_checkpoint(path)

    # Checks before anything is written (no run folder yet): the data fits the config, and
    # --ckpt_path is a readable dnirnn checkpoint of this model.
    def _preflight(self, stage: str) -> None:
        cfg = self._cfg()
        if stage != "fit" and not cfg.get("ckpt_path") and not cfg.get("allow_untrained"):
            raise ValueError(
                f"{stage} needs --ckpt_path: without it dnirnn would score an untrained model. "
                f"Pass a checkpoint of a run (runs/<recipe>/version_N/checkpoints/best.ckpt or "
                f"last.ckpt), or --allow_untrained=true to score a fresh model on purpose.")
        check_precision(self.trainer)
        preflight(self.model, self.datamodule, self.trainer, stage, cfg.get("ckpt_path"),
                  self._ckpt)
        root = self._root()
        if stage == "fit" and self._ckpt is not None:
            check_resume(self._ckpt, cfg["ckpt_path"], self.model, self.trainer,
                         run_folder_of(cfg["ckpt_path"], root) is not None)
        check_writable(root)
        if stage == "fit":  # W&B looks for a git root in its folder: it must exist
            root.mkdir(parents=True, exist_ok=True)

    def before_fit(self) -> None:
        self._preflight("fit")

    def before_validate(self) -> None:
        self._preflight("validate")

    def before_test(self) -> None:
        self._preflight("test")


CKPT_ALIASES = ("last", "best", "hpc", "registry")


def check_precision(trainer: L.Trainer) -> None:
    """Raises ``ValueError`` for a mixed / half precision on the CPU."""
    precision = str(trainer.precision)
    if isinstance(trainer.accelerator, CPUAccelerator) and precision not in (
            "32-true", "64-true", "32", "64"):
        raise ValueError(
            f"trainer.precision={precision}: on the CPU dnirnn trains in float32 "
            f"(32-true, the default) or float64 (64-true); mixed and half precision need a "
            f"GPU. Drop --trainer.precision, or run on a GPU.")


def preflight(model: RecurrentModule, datamodule: L.LightningDataModule, trainer: L.Trainer,
              stage: str, ckpt_path: str | None, ckpt: dict[str, Any] | None = None) -> None:
    """Raises ``ValueError`` / ``DataError`` / ``CheckpointError`` on bad input."""
    world = trainer.num_devices * trainer.num_nodes
    if hasattr(datamodule, "check"):
        datamodule.check(stage, model, world)
    if getattr(datamodule, "task", None) is not None and hasattr(model, "check_task"):
        model.check_task(datamodule.task, world)
    if hasattr(model, "check_trainer"):  # (decoupled layers: the strategy fits the model)
        model.check_trainer(trainer)
    if ckpt_path and ckpt_path not in CKPT_ALIASES:
        check_checkpoint(ckpt_path, model, ckpt)


class NothingToTrain(Exception):
    """A fit resumed from a checkpoint that is already at its ``max_steps``: the run is left
    as it is (not an error: the message says so, exit 0)."""


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        return {k: v for key, sub in d.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: d}


def check_resume(ckpt: dict[str, Any], path: str, model: Any, trainer: L.Trainer,
                 same_folder: bool) -> None:
    """A fit from ``ckpt`` trains on from its step: a ``max_steps`` below that step is
    refused, one equal to it leaves the finished run as it is (``NothingToTrain``), and, where
    the fit continues the checkpoint's own run folder, model options other than the
    checkpoint's are refused (the folder's record would mix two configs)."""
    step, most = int(ckpt.get("global_step", 0)), trainer.max_steps
    if 0 <= most < step:
        raise ValueError(
            f"--trainer.max_steps={most} is below the step of --ckpt_path {path} ({step}): a "
            f"resumed fit trains on from its checkpoint's step. Give a max_steps above {step} "
            f"to train on; nothing was written.")
    if most == step:
        raise NothingToTrain(
            f"{path} is at step {step}, the run's max_steps: there is nothing to train and "
            f"its run folder is left as it is. To train on, raise --trainer.max_steps above "
            f"{step}; to score it: dnirnn test with the same --config and --ckpt_path={path}")
    if not same_folder:
        return
    saved = _flat(json.loads(json.dumps(ckpt.get("hyper_parameters") or {}, default=str)))
    given = _flat(json.loads(json.dumps(dict(getattr(model, "hparams", {})), default=str)))
    changed = [f"model.{k}: {saved[k]!r} in the checkpoint, {given[k]!r} given"
               for k in sorted(saved) if k in given and given[k] != saved[k]]
    if changed:
        raise ValueError(
            f"--ckpt_path {path} continues its run, but these options differ from the "
            f"checkpoint's: {'; '.join(changed)}. Drop them to resume the run as it was, or "
            f"start a new run (another --trainer.default_root_dir) to train with them; "
            f"nothing was written.")


# (MisconfigurationException: Lightning's own, e.g. more devices than the machine has)
USER_ERRORS = (ValueError, DataError, CheckpointError, NonFiniteLossError, ConfigError,
               MisconfigurationException)


def fail(message: str, code: int = 2) -> None:
    """Ends the command: one paragraph on stderr, exit code ``code``."""
    print(f"dnirnn: error: {message}", file=sys.stderr)
    raise SystemExit(code)


RUN_ROOTS: list[Path] = []  # the default_root_dir of each run begun in this process


def intact_checkpoint(root: Path | None) -> tuple[Path, int | None] | None:
    """The newest checkpoint of the newest run folder under ``root`` and its step."""
    if root is None:
        return None
    ckpts = [p for p in Path(root).glob("version_*/checkpoints/*.ckpt") if p.is_file()]
    if not ckpts:
        return None
    path = max(ckpts, key=lambda p: p.stat().st_mtime_ns)
    try:
        step = int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])
    except Exception:  # (a checkpoint that cannot be read: named without its step)
        step = None
    return path, step


def write_error(e: OSError, root: Path | None = None) -> str:
    """A write that failed during a run: a full disk, or a folder that stopped being
    writable. Checkpoints are atomic, so the newest one on disk is whole: the message names
    it, its step and the resume command."""
    full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or "No space left" in str(e)
    where = e.filename or ""
    what = e.strerror or str(e)
    if isinstance(e, CheckpointWriteError):
        where, what = "", what
    head = (f"no space left on the device while writing {where or what}" if full
            else f"could not write {where or what}" + (f": {what}" if where else ""))
    fix = ("Free space" if full else "Make the run folder writable again (or choose another "
           "--trainer.default_root_dir)")
    ckpt = intact_checkpoint(root)
    if ckpt is None:
        return (f"{head}. No checkpoint of this run was written before it: {fix.lower()}, "
                f"then start again.")
    path, step = ckpt
    at = f" (step {step})" if step is not None else ""
    return (f"{head}. Checkpoints are written whole or not at all: {path}{at} is intact. "
            f"{fix}, then resume with the same command and --ckpt_path={path}.")


def pop_seeds(args: list[str]) -> tuple[list[int], list[str]]:
    """``--seeds=0,1,2`` / ``--seeds 0,1,2``: the seeds and the other arguments."""
    out, seeds, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a == "--seeds" and i + 1 < len(args):
            seeds, i = args[i + 1], i + 1
        elif a.startswith("--seeds="):
            seeds = a.split("=", 1)[1]
        else:
            out.append(a)
        i += 1
    try:
        return ([int(s) for s in seeds.split(",") if s.strip()] if seeds else []), out
    except ValueError:
        fail(f"--seeds takes integers separated by commas, e.g. --seeds=0,1,2 (got {seeds!r})")


def main(args: list[str] | None = None) -> None:
    """Runs the CLI. Bad input (config, data, checkpoint), an unwritable or full disk and a
    non-finite loss end the run with exit code 2 and a one-paragraph message on stderr
    (``DNIRNN_DEBUG=1``: traceback); see docs/errors.md. Ctrl-C ends it with the summary and
    exit code 130. ``--seeds=0,1,2`` runs one fit per seed, then compares them."""
    args = sys.argv[1:] if args is None else list(args)
    keep_freed_memory()
    # (the seed is in the run's config.yaml; Lightning's "Seed set to N" would come before
    # any one-line error)
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    if wants_short_help(args):
        from dnirnn.cli_help import print_help

        return print_help(args)
    args = [a for a in args if a != "--help-all"] + (["--help"] if "--help-all" in args else [])
    try:
        args = nulls_in_groups(configs_first(resolve_config_args(args)))
    except RecipeNotFound as e:
        fail(str(e))
    seeds, args = pop_seeds(args)
    if not seeds:
        return run(args)
    if not args or args[0] != "fit":
        fail("--seeds goes with fit: dnirnn fit --config RECIPE --seeds=0,1,2")
    if any(a == "--ckpt_path" or a.startswith("--ckpt_path=") for a in args):
        fail("--seeds starts one new run per seed, --ckpt_path resumes one run: give one of "
             "them (resume each seed's run with its own --ckpt_path). Nothing was written.")
    start = len(COMPLETED)
    for seed in seeds:
        run([*args, f"--seed_everything={seed}"])
    from dnirnn.compare import print_table

    print_table(COMPLETED[start:])


def run(args: list[str]) -> None:
    """One fit / validate / test (see ``main``)."""
    torch.set_float32_matmul_precision("high")
    # LightningCLI warns when given args while sys.argv has some: main() passes them on
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    remember_command(args)  # (the workers of a layer-parallel fit run these arguments)
    try:
        DNICLI(
            RecurrentModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=ConfigToLoggers,
            save_config_kwargs={"overwrite": True},
            parser_class=ConciseParser,
            args=args,
        )
    except NothingToTrain as e:
        print(f"dnirnn: {e}", flush=True)
    except USER_ERRORS as e:
        if os.environ.get("DNIRNN_DEBUG"):
            raise
        fail(user_message(e))
    except RuntimeError as e:  # a layer group's process died: this one stops, resumable
        lost = as_peer_lost(e)
        if lost is None or os.environ.get("DNIRNN_DEBUG"):
            raise
        fail(str(lost), code=1)
    except OSError as e:  # a read-only or full disk while the run writes
        if os.environ.get("DNIRNN_DEBUG"):
            raise
        fail(write_error(e, RUN_ROOTS[-1] if RUN_ROOTS else None))
    except SIGTERMException:  # (before dnirnn's handler was installed: no step trained)
        print("dnirnn: SIGTERM before training started; nothing to resume.", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None
    except SystemExit as e:  # Lightning ends an interrupted fit with exit(1)
        if isinstance(e.__context__, KeyboardInterrupt):
            signum = getattr(e.__context__, "signum", signal.SIGINT)
            print(f"dnirnn: stopped by {signal.Signals(signum).name}; the summary above names "
                  f"the checkpoint to resume from.", file=sys.stderr)
            raise SystemExit(128 + signum) from None
        raise
    except KeyboardInterrupt:
        print("dnirnn: interrupted before training started; nothing to resume.",
              file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # Lightning's, on Ctrl-C
            signal.signal(signal.SIGINT, signal.default_int_handler)
        _finish_wandb()
        _teardown_distributed()
        release_workers()


def _teardown_distributed() -> None:
    """Destroys the process group (DDP) before the interpreter exits. Left to interpreter
    shutdown, gloo's threads were sometimes destroyed while running: the process then
    aborted ("terminate called without an active exception", exit -6) after a finished run."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _finish_wandb() -> None:
    """Closes the W&B run, so its file is complete and a next run in this process is new."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


if __name__ == "__main__":
    main()
