"""``DNICLI``: dnirnn's ``LightningCLI``, which puts one run together from its config.

It drops ``predict``, links the data module's sizes into the model, adds dnirnn's run options
(``dnirnn.cli_help.RUN_OPTIONS``), reads ``--ckpt_path`` once, runs the checks before anything
is written (``dnirnn.preflight``), and builds the trainer: its loggers (a fit resumed from
``runs/<recipe>/version_N`` continues that folder and W&B run), its callbacks
(``BestCheckpoint``, periodic checkpoints, the run record) and atomic checkpoint writes.
``ConfigToLoggers`` logs the full config. ``RUN_ROOTS`` names each run's folder for
``dnirnn.cli``'s messages after a failed write.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from dnirnn.checkpointing import AtomicCheckpointIO, read_checkpoint
from dnirnn.cli_help import RUN_OPTIONS
from dnirnn.cli_parser import model_options_help
from dnirnn.curriculum import ScoreAtSolvedLevel
from dnirnn.interrupt import PeriodicCheckpoint, parse_every
from dnirnn.lit import DNIModule
from dnirnn.no_effect import ignored
from dnirnn.preflight import (
    CKPT_ALIASES,
    check_devices,
    check_precision,
    check_resume,
    preflight,
)
from dnirnn.quiet import SETUP
from dnirnn.runs import (
    RunRecord,
    StepLabels,
    ValidateAtEnd,
    check_writable,
    curriculum_figure,
    make_loggers,
    monitor_for,
    run_folder_of,
)

RUN_ROOTS: list[Path] = []  # the default_root_dir of each run begun in this process


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
        figure = curriculum_figure(self.monitor, task)
        if figure is not None:
            candidates[self.monitor] = torch.tensor(figure)
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
    _args: list[str] = []  # the command's arguments (what was laid over the recipe)

    def parse_arguments(self, parser, args) -> None:
        self._args = list(args or [])
        super().parse_arguments(parser, args)

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
        check_devices(cfg.get("trainer", {}))
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
        """A fit from a checkpoint of ``root/version_N`` continues that folder and W&B run; a
        validate / test of one writes its record inside that run folder, as
        ``version_N/<stage>_<checkpoint>`` (``test_best``), not a new ``version_M``."""
        path = self._cfg().get("ckpt_path")
        if self._ckpt is None:
            return {}
        version = run_folder_of(path, root)
        if version is None:
            return {}
        if self.subcommand != "fit":
            return {"version": f"version_{version}/{self.subcommand}_{Path(path).stem}"}
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
        check_precision(self.trainer, cfg.get("trainer", {}).get("precision"))
        preflight(self.model, self.datamodule, self.trainer, stage, cfg.get("ckpt_path"),
                  self._ckpt)
        root = self._root()
        if stage == "fit" and self._ckpt is not None:
            check_resume(self._ckpt, cfg["ckpt_path"], self.model, self.trainer,
                         run_folder_of(cfg["ckpt_path"], root) is not None)
        check_writable(root)
        if stage == "fit":  # W&B looks for a git root in its folder: it must exist
            root.mkdir(parents=True, exist_ok=True)
        SETUP.release()  # (the checks passed: Lightning's lines held so far print now)
        note = ignored(self._args, dict(self.model.hparams)) if isinstance(
            self.model, DNIModule) else None
        if note and self.trainer.is_global_zero:  # (after the checks: never before an error)
            print(f"dnirnn: warning: {note}", file=sys.stderr, flush=True)

    def before_fit(self) -> None:
        self._preflight("fit")

    def before_validate(self) -> None:
        self._preflight("validate")

    def before_test(self) -> None:
        self._preflight("test")
