"""``dnirnn fit|validate|test --config recipes/X.yaml [--model.window=4 ...]`` (LightningCLI).

The model is any ``RecurrentModule`` (``dnirnn.lit``). A recipe either gives ``model:`` as
plain init args of the default, ``DNIModule`` (every single-level recipe), or names another
class with ``class_path`` / ``init_args`` (``dnirnn.lit_hierarchy.HierarchyModule``). Dotted
overrides work the same for both: ``--model.window=4``.

Every run writes to ``trainer.default_root_dir`` (``runs/<recipe>`` in the recipes):

    runs/<recipe>/version_N/   metrics.csv, hparams.yaml, config.yaml, summary.json,
                               checkpoints/last.ckpt (+ the periodic ones)
    runs/<recipe>/wandb/       the W&B run (offline when no API key is configured)
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from dnirnn.checkpointing import (
    AtomicCheckpointIO,
    CheckpointError,
    check_checkpoint,
    read_checkpoint,
)
from dnirnn.data.ptb import DataError
from dnirnn.lit import NonFiniteLossError, RecurrentModule


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


def make_loggers(root: Path, project: str = "dnirnn", use_wandb: bool = True) -> list:
    """A local CSV record (first: it names the run folder) and W&B (offline without a key)."""
    csv = CSVLogger(save_dir=str(root), name="")
    if not use_wandb:
        return [csv]
    online = wandb_has_key()
    if not online:
        os.environ.setdefault("WANDB_MODE", "offline")
    wandb = WandbLogger(project=project, save_dir=str(root), name=root.name, offline=not online)
    return [csv, wandb]


class RunRecord(L.Callback):
    """Writes ``summary.json`` (final metrics, steps, curriculum) next to ``metrics.csv``, and
    says how to upload an offline W&B run."""

    def _write(self, trainer: L.Trainer, pl_module: RecurrentModule, stage: str) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if not trainer.is_global_zero or log_dir is None:
            return
        metrics = {k: _number(v) for k, v in trainer.callback_metrics.items()}
        record = {"stage": stage, "global_step": trainer.global_step,
                  "epoch": trainer.current_epoch, "metrics": metrics}
        if pl_module.task is not None and pl_module.task.episodic:
            record["curriculum"] = pl_module.task.state_dict()
        path = Path(log_dir) / "summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger) and os.environ.get("WANDB_MODE") == "offline":
                print(f"W&B ran offline (no API key configured). Upload this run with:\n"
                      f"  wandb sync {lg.save_dir}/wandb/offline-run-*")

    def on_fit_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module, "fit")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate":
            self._write(trainer, pl_module, "validate")

    def on_test_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module, "test")


def _number(v: Any) -> float:
    v = float(v.detach().cpu()) if isinstance(v, torch.Tensor) else float(v)
    return v if math.isfinite(v) else str(v)


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
    def add_arguments_to_parser(self, parser) -> None:
        # model: plain init args mean DNIModule; class_path picks another RecurrentModule
        parser.set_defaults({"model": {"class_path": "dnirnn.lit.DNIModule"}})
        for name in ("task_name", "input_size", "output_size"):
            target = "task" if name == "task_name" else name
            parser.link_arguments(f"data.{name}", f"model.init_args.{target}",
                                  apply_on="instantiate")
        parser.add_argument("--checkpoint_every", type=int, default=0,
                            help="also checkpoint every N training steps (0: each epoch only)")
        parser.add_argument("--wandb_project", type=str, default="dnirnn")
        parser.add_argument("--wandb", type=bool, default=True,
                            help="log to W&B as well as the local CSV record")

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        cfg = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_cfg = cfg.get("trainer", {})
        root = Path(trainer_cfg.get("default_root_dir") or "runs/default")
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = make_loggers(root, cfg.get("wandb_project", "dnirnn"),
                                            bool(cfg.get("wandb", True)))
        every = int(cfg.get("checkpoint_every") or 0)
        ckpt = ModelCheckpoint(save_last=True, save_top_k=-1 if every else 1,
                               every_n_train_steps=every or None)
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": [ckpt, RunRecord()]}
        if not trainer_cfg.get("plugins"):
            kwargs["plugins"] = [AtomicCheckpointIO()]  # a kill mid-save keeps last.ckpt whole
        return super().instantiate_trainer(**kwargs)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would load --ckpt_path here (a raw traceback for a bad file) and
        # silently replace the model config given on the command line by the checkpoint's.
        # dnirnn keeps the config as given and checks that the checkpoint fits it (preflight).
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if path and path not in CKPT_ALIASES:
            read_checkpoint(path)

    # Checks before anything is written (no run folder yet): the data fits the config, and
    # --ckpt_path is a readable dnirnn checkpoint of this model.
    def _preflight(self, stage: str) -> None:
        preflight(self.model, self.datamodule, self.trainer, stage,
                  self.config_init[self.subcommand].get("ckpt_path"))

    def before_fit(self) -> None:
        self._preflight("fit")

    def before_validate(self) -> None:
        self._preflight("validate")

    def before_test(self) -> None:
        self._preflight("test")


CKPT_ALIASES = ("last", "best", "hpc", "registry")


def preflight(model: RecurrentModule, datamodule: L.LightningDataModule, trainer: L.Trainer,
              stage: str, ckpt_path: str | None) -> None:
    """Raises ``ValueError`` / ``DataError`` / ``CheckpointError`` on bad input."""
    world = trainer.num_devices * trainer.num_nodes
    if hasattr(datamodule, "check"):
        datamodule.check(stage, model, world)
    if getattr(datamodule, "task", None) is not None and hasattr(model, "check_task"):
        model.check_task(datamodule.task, world)
    if ckpt_path and ckpt_path not in CKPT_ALIASES:
        check_checkpoint(ckpt_path, model)


USER_ERRORS = (ValueError, DataError, CheckpointError, NonFiniteLossError)


def main(args: list[str] | None = None) -> None:
    """Runs the CLI. Bad input (config, data, checkpoint) and a non-finite loss end the run
    with exit code 2 and a one-paragraph message on stderr (``DNIRNN_DEBUG=1``: traceback);
    see docs/errors.md."""
    torch.set_float32_matmul_precision("high")
    try:
        DNICLI(
            RecurrentModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=ConfigToLoggers,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except USER_ERRORS as e:
        if os.environ.get("DNIRNN_DEBUG"):
            raise
        print(f"dnirnn: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        _finish_wandb()
        _teardown_distributed()


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
