"""The checks before a run writes anything (no run folder yet), each raising with what to
change: the precision fits the device, the data and the trainer fit the model, ``--ckpt_path``
is a readable dnirnn checkpoint of this model, and a resumed fit has steps left to train
(``NothingToTrain`` where it has none) with the options of the run it continues.
"""

from __future__ import annotations

import json
from typing import Any

import lightning as L
from lightning.pytorch.accelerators import CPUAccelerator

from dnirnn.checkpointing import check_checkpoint
from dnirnn.recurrent import RecurrentModule

CKPT_ALIASES = ("last", "best", "hpc", "registry")


def check_devices(trainer: Any) -> None:
    """Raises ``ValueError`` for ``trainer.devices`` of no device (0, "0", an empty list):
    Lightning's own message would be "`Trainer(devices='0')` value is not a valid input"."""
    devices = trainer.get("devices") if hasattr(trainer, "get") else None
    if devices in (0, "0", "", []) or (isinstance(devices, int) and devices < -1):
        raise ValueError(
            f"trainer.devices={devices}: a run needs at least one device. Use "
            f"--trainer.devices=1 (the recipes' setting), N > 1 for N processes (DDP), or "
            f"auto (-1) for every device of the accelerator.")


def check_precision(trainer: L.Trainer, given: Any = None) -> None:
    """Raises ``ValueError`` for a mixed / half precision on the CPU (named as ``given``, as
    the user wrote it: Lightning turns 16-mixed into bf16-mixed on the CPU)."""
    precision = str(trainer.precision)
    if isinstance(trainer.accelerator, CPUAccelerator) and precision not in (
            "32-true", "64-true", "32", "64"):
        raise ValueError(
            f"trainer.precision={given or precision}: on the CPU dnirnn trains in float32 "
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
