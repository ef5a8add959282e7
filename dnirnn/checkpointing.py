"""Checkpoints that survive a kill, and a check that a checkpoint fits before a run starts.

- ``AtomicCheckpointIO``: every checkpoint (``last.ckpt`` included) is written to a temp file
  in the same folder, flushed and fsync'ed, then ``os.replace``d over the target (and the
  folder fsync'ed). A process killed during a save leaves the previous checkpoint intact
  (and at worst a stray ``.<name>.*.tmp`` file), never a truncated ``last.ckpt``.
  Lightning's own ``TorchCheckpointIO`` opens the target for writing directly. A failed
  write (a full disk) removes its temp file and raises ``CheckpointWriteError`` (an
  ``OSError`` naming the file). Checkpoints get the usual file mode (0644 under umask 022),
  not ``mkstemp``'s 0600.
- ``check_checkpoint``: reads ``--ckpt_path`` on the CPU and compares it with the model
  before anything is written, so that a garbage file, a checkpoint of another config or a
  non-dnirnn checkpoint fail with a message that says which and what to do.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from dnirnn.renamed import old_checkpoint


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and the fix."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the previous one is whole."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temp file beside ``path``, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide checkpoints from others
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch's writer reports ENOSPC as RuntimeError
        code = getattr(e, "errno", None) or (errno.ENOSPC if _full(path.parent, e) else errno.EIO)
        Path(tmp).unlink(missing_ok=True)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointWriteError(code, f"checkpoint {path} ({reason})", str(path)) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _full(folder: Path, e: BaseException) -> bool:
    """Whether a write without an errno (torch's RuntimeError) failed for a full disk: its
    message says so, or the folder's file system has (almost) no space left."""
    if "No space left" in str(e):
        return True
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with an atomic, durable save (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, path)


_FIX = "start afresh without --ckpt_path"


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Loads a dnirnn checkpoint on the CPU.

    Raises:
        CheckpointError: the file is missing, unreadable (garbage, truncated) or not a dnirnn
            checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"ckpt_path: checkpoint {p} does not exist; pass an existing "
                              f"file (e.g. runs/<recipe>/version_N/checkpoints/last.ckpt) or "
                              f"{_FIX}.")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means the same thing
        raise CheckpointError(
            f"ckpt_path: checkpoint {p} cannot be read ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); it is truncated, corrupt or not a "
            f"PyTorch file. Resume from another checkpoint of the run (an "
            f"epoch=*-step=*.ckpt beside it) or {_FIX}."
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "dnirnn" not in ckpt:
        what = "no 'state_dict'" if not isinstance(ckpt, dict) or "state_dict" not in ckpt \
            else "no 'dnirnn' section (data position, carried state, curriculum)"
        raise CheckpointError(
            f"ckpt_path: {p} is not a dnirnn training checkpoint ({what}). Pass a checkpoint "
            f"written by `dnirnn fit` (version_N/checkpoints/last.ckpt), or {_FIX}."
        )
    return ckpt


def check_checkpoint(path: str | os.PathLike[str], model: torch.nn.Module,
                     ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
    """Loads ``path`` on the CPU (unless ``ckpt``, already read from it, is given) and checks it
    can resume ``model``; returns the checkpoint.

    Raises:
        CheckpointError: see ``read_checkpoint``; or the checkpoint was written before the
            model's options were grouped (``dnirnn.renamed.old_checkpoint``); or its tensors
            do not fit this model (another config): the message lists the hyperparameters
            that differ.
    """
    p = Path(path)
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    old = old_checkpoint(p, ckpt.get("hyper_parameters") or {},
                         dict(getattr(model, "hparams", {})))
    if old:  # (its config names options of before the groups: dnirnn.renamed)
        raise CheckpointError(old)
    own, theirs = model.state_dict(), ckpt["state_dict"]
    bad = sorted(set(own) ^ set(theirs))
    bad += [k for k in own if k in theirs and tuple(own[k].shape) != tuple(theirs[k].shape)]
    if bad:
        hp = ckpt.get("hyper_parameters") or {}
        mine = dict(getattr(model, "hparams", {}))
        diff = [f"model.{k}={hp[k]!r} there, {mine[k]!r} here" for k in mine
                if k in hp and hp[k] != mine[k]]
        k = bad[0]
        example = (f"{k}: {tuple(theirs[k].shape)} there, {tuple(own[k].shape)} here"
                   if k in own and k in theirs else f"{k} in only one of them")
        raise CheckpointError(
            f"ckpt_path: {p} was written by a different model config"
            f"{' (' + '; '.join(diff) + ')' if diff else ''}: {len(bad)} tensor(s) do not fit, "
            f"e.g. {example}. Rerun with the checkpoint's config (config.yaml in its run "
            f"folder) or {_FIX}."
        )
    return ckpt
