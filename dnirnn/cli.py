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

This module prepares the command that ``dnirnn.main.main`` runs: the arguments before
Lightning reads them (``plan``: recipe names, ``--seeds``), how each run builds ``DNICLI``
(``dnirnn.cli_lightning``; its checks before writing: ``dnirnn.preflight``), and every way a
run ends as a message and an exit code (``running``; docs/errors.md).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dnirnn.checkpointing import CheckpointError, CheckpointWriteError
from dnirnn.cli_help import wants_short_help
from dnirnn.cli_lightning import RUN_ROOTS, ConfigToLoggers
from dnirnn.cli_parser import ConciseParser, ConfigError, user_message
from dnirnn.data.ptb import DataError
from dnirnn.decoupled.parallel import as_peer_lost, release_workers, remember_command
from dnirnn.malloc import keep_freed_memory
from dnirnn.preflight import NothingToTrain
from dnirnn.quiet import SETUP, install_filters
from dnirnn.recipe import RecipeNotFound, configs_first, nulls_in_groups, resolve_config_args
from dnirnn.recurrent import NonFiniteLossError, RecurrentModule

# (MisconfigurationException: Lightning's own, e.g. more devices than the machine has)
USER_ERRORS = (ValueError, DataError, CheckpointError, NonFiniteLossError, ConfigError,
               MisconfigurationException)


def fail(message: str, code: int = 2) -> None:
    """Ends the command: one paragraph on stderr, exit code ``code``."""
    print(f"dnirnn: error: {message}", file=sys.stderr)
    raise SystemExit(code)


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


MODEL_AND_DATA = dict(model_class=RecurrentModule, datamodule_class=L.LightningDataModule,
                      subclass_mode_model=True, subclass_mode_data=True,
                      save_config_callback=ConfigToLoggers,
                      save_config_kwargs={"overwrite": True}, parser_class=ConciseParser)
"""How every run builds ``DNICLI``: ``DNICLI(**MODEL_AND_DATA, args=...)``."""


def plan(args: list[str]) -> tuple[list[list[str]], bool]:
    """The runs a ``dnirnn fit|validate|test`` command asks for: its arguments as Lightning
    reads them (recipe names resolved, ``--config`` files first), one list per seed of
    ``--seeds=0,1,2`` (none after a short help, printed here), and whether seeds were given
    (their fits are compared at the end). Bad input ends the command
    with exit code 2 and a one-paragraph message on stderr (``DNIRNN_DEBUG=1``: traceback;
    docs/errors.md)."""
    keep_freed_memory()
    # (the seed is in the run's config.yaml; Lightning's "Seed set to N" would come before
    # any one-line error)
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    install_filters()  # (Lightning's tips, and warnings that reach every run: dnirnn.quiet)
    if wants_short_help(args):
        from dnirnn.cli_help import print_help

        print_help(args)
        return [], False
    args = [a for a in args if a != "--help-all"] + (["--help"] if "--help-all" in args else [])
    try:
        args = nulls_in_groups(configs_first(resolve_config_args(args)))
    except RecipeNotFound as e:
        fail(str(e))
    seeds, args = pop_seeds(args)
    if not seeds:
        return [args], False
    if not args or args[0] != "fit":
        fail("--seeds goes with fit: dnirnn fit --config RECIPE --seeds=0,1,2")
    if any(a == "--ckpt_path" or a.startswith("--ckpt_path=") for a in args):
        fail("--seeds starts one new run per seed, --ckpt_path resumes one run: give one of "
             "them (resume each seed's run with its own --ckpt_path). Nothing was written.")
    return [[*args, f"--seed_everything={seed}"] for seed in seeds], True


@contextlib.contextmanager
def running(args: list[str]):
    """Around one fit / validate / test (``dnirnn.main.main``): what every run needs before
    it, and what each way it can end says: exit code 2 and one paragraph for bad input (a
    config, data, a checkpoint), an unwritable or full disk and a non-finite loss; the summary
    and exit code 130 for Ctrl-C (docs/errors.md). A context manager, not a frame on the
    training path."""
    torch.set_float32_matmul_precision("high")
    # LightningCLI warns when given args while sys.argv has some: main() passes them on
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    remember_command(args)  # (the workers of a layer-parallel fit run these arguments)
    SETUP.hold()  # Lightning's lines print once the checks have passed (DNICLI._preflight)
    try:
        yield
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
        SETUP.drop()  # (what an error left held never prints)
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

