r"""A process per layer group: the Lightning strategy, how the processes start, and how they
stop when one of them dies.

``LayerParallelStrategy`` (``--trainer.strategy=layer_parallel``) is Lightning's DDP strategy
(the same launch, environment, process group: gloo on CPU, NCCL on GPU, each rank on its own
device) without the ``DistributedDataParallel`` wrapper: the processes train different
parameters and exchange activations and gradients point-to-point
(``dnirnn.decoupled.transport``), so there is nothing to all-reduce or broadcast per step.

Launch. ``dnirnn fit`` runs rank 0 in its own process; ``WorkerLauncher`` starts ranks
1..P-1 as ``python -m dnirnn <the same arguments>`` with Lightning's environment
(``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``LOCAL_RANK``): the arguments are the ones
``dnirnn.cli.running`` was given (``remember_command``), not ``sys.argv``, so a fit started
from Python (a test, a notebook) starts the same workers. Under ``torchrun`` (which sets
``LOCAL_RANK`` itself) nothing is started: every rank is already running.
``release_workers`` (called when the run ends) waits for the workers and restores the
environment variables the launch set, so a later run in the same process starts clean.

Faults. A dead peer is reported by gloo at the next message (``PeerLost``, at once); the
``Watchdog`` covers the stretches without messages (a long validation): rank 0 watches its
workers, a worker its parent. When the other side is gone and this process has not stopped
by itself within ``grace`` seconds, it prints one paragraph and exits with code 1. The last
checkpoint on disk is whole (checkpoints are written atomically), so the run resumes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

from lightning.fabric.strategies.launchers.subprocess_script import _basic_subprocess_cmd
from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

from dnirnn.decoupled.transport import STOPPING, PeerLost, peer_lost

__all__ = ["LayerParallelStrategy", "Watchdog", "WorkerLauncher", "as_peer_lost",
           "release_workers", "remember_command"]

_COMMAND: list[str] | None = None
_WORKERS: list[subprocess.Popen] = []
_ENV_SET: dict[str, str | None] = {}  # variables the launch set, and their values before
_WATCHDOGS: list[Watchdog] = []


def remember_command(args: list[str]) -> None:
    """The arguments of this ``dnirnn fit``, for the workers (``dnirnn.cli.running``)."""
    global _COMMAND
    _COMMAND = list(args)


class Watchdog(threading.Thread):
    """Ends this process when the other side of the run is gone (see the module docstring).

    Args:
        workers: the worker processes (rank 0), or none.
        parent: the parent's pid to watch (a worker), or None.
        grace: seconds this process gets to stop by itself (its own error path) first.
    """

    def __init__(self, workers: list[subprocess.Popen] = (), parent: int | None = None,
                 grace: float = 10.0, period: float = 0.5) -> None:
        super().__init__(daemon=True, name="dnirnn-watchdog")
        self.workers, self.parent = list(workers), parent
        self.grace, self.period = grace, period
        self.done = threading.Event()

    def lost(self) -> str | None:
        for rank, p in enumerate(self.workers, start=1):
            code = p.poll()
            if code not in (None, 0):
                return (f"the process of layer group {rank} (pid {p.pid}) ended with code "
                        f"{code}")
        if self.parent is not None and os.getppid() != self.parent:
            return f"the process of layer group 0 (pid {self.parent}) is gone"
        return None

    def run(self) -> None:
        while not self.done.wait(self.period):
            why = self.lost()
            if why is None:
                continue
            # this process usually stops by itself at its next message (PeerLost)
            if self.done.wait(self.grace * (3 if STOPPING.is_set() else 1)):
                return
            print(f"dnirnn: error: {why}; this process (pid {os.getpid()}) stops too. Each "
                  f"layer group runs in its own process and none can go on without the others. "
                  f"The last checkpoint on disk is whole: resume with --ckpt_path=<run "
                  f"folder>/checkpoints/last.ckpt.", file=sys.stderr, flush=True)
            for p in self.workers:
                if p.poll() is None:
                    p.kill()
            os._exit(1)


class WorkerLauncher(_SubprocessScriptLauncher):
    """Starts ranks 1..P-1 (see the module docstring) and the watchdogs."""

    def launch(self, function, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        self.cluster_environment.validate_settings(num_devices=self.num_processes,
                                                   num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
            _watch(Watchdog(workers=self.procs))
        elif os.environ.get("DNIRNN_PARENT"):
            _watch(Watchdog(parent=int(os.environ["DNIRNN_PARENT"])))
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)

    def _call_children_scripts(self) -> None:
        self._check_can_spawn_children()
        env = self.cluster_environment
        values = {"MASTER_ADDR": env.main_address, "MASTER_PORT": str(env.main_port),
                  "NODE_RANK": str(env.node_rank()), "LOCAL_RANK": str(env.local_rank()),
                  "WORLD_SIZE": str(self.num_processes * self.num_nodes)}
        for k, v in values.items():
            _ENV_SET.setdefault(k, os.environ.get(k))
            os.environ[k] = v
        command = ([sys.executable, "-m", "dnirnn", *_COMMAND] if _COMMAND is not None
                   else list(_basic_subprocess_cmd()))
        self.procs = []
        for local_rank in range(1, self.num_processes):
            child = {**os.environ, "LOCAL_RANK": str(local_rank),
                     "DNIRNN_PARENT": str(os.getpid())}
            self.procs.append(subprocess.Popen(command, env=child))
        _WORKERS.extend(self.procs)


# how gloo (and NCCL) report a peer that is gone, in any collective or point-to-point call
_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Read error",
         "Timed out waiting", "Socket Timeout", "NCCL communicator was aborted")


def as_peer_lost(error: BaseException) -> PeerLost | None:
    """``error`` as the run's one paragraph when it means a layer group's process is gone (a
    collective of Lightning's or dnirnn's, not only the pipeline's messages, may be the first
    to see it); None when this process is no layer-parallel worker or the error is another."""
    if isinstance(error, PeerLost):
        return error
    if not _WATCHDOGS:
        return None
    why = _reason()
    if why is None and not any(s in str(error) for s in _GONE):
        return None
    # a killed process's sockets close before its exit shows (``os.getppid``, ``poll``):
    # give the watchdogs a moment to name the layer group that is gone
    deadline = time.monotonic() + 2.0
    while why is None and time.monotonic() < deadline:
        time.sleep(0.05)
        why = _reason()
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    return peer_lost(rank, f"stopped: {why or 'a layer group stopped answering'}", error)


def _reason() -> str | None:
    """What a watchdog sees gone (a layer group's process, named), or None."""
    return next((w for w in (dog.lost() for dog in _WATCHDOGS) if w), None)


def _watch(dog: Watchdog) -> None:
    _WATCHDOGS.append(dog)
    dog.start()


def release_workers(timeout: float = 60.0) -> None:
    """At the end of a run (``dnirnn.cli.running``): stops the watchdogs, waits for the workers
    (killing any still alive after ``timeout`` seconds) and restores the environment."""
    for dog in _WATCHDOGS:
        dog.done.set()
    _WATCHDOGS.clear()
    deadline = time.monotonic() + timeout
    for p in _WORKERS:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    _WORKERS.clear()
    for k, v in _ENV_SET.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _ENV_SET.clear()
    STOPPING.clear()


class LayerParallelStrategy(DDPStrategy):
    """DDP's launch and process group, one layer group per process, no DDP wrapper."""

    strategy_name = "layer_parallel"

    def _configure_launcher(self) -> None:
        self._launcher = WorkerLauncher(self.cluster_environment, self.num_processes,
                                        self.num_nodes)

    def configure_ddp(self) -> None:
        """The module stays unwrapped: its processes train different parameters."""


if "layer_parallel" not in StrategyRegistry:
    StrategyRegistry.register(
        "layer_parallel", LayerParallelStrategy,
        description="one layer group of a decoupled stack per process (dnirnn.decoupled)")
