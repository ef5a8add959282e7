r"""How messages between layer groups travel: ``torch.distributed`` point-to-point, or a
loopback inside one process. The pipeline (``dnirnn.decoupled.pipeline``) sees one face::

    isend(tensor, src, dst, tag) -> handle     non-blocking; keep ``tensor`` alive until drained
    irecv(buffer, src, dst, tag) -> handle     non-blocking; ``handle.wait()`` fills ``buffer``

``src`` and ``dst`` are layer-group indices; ``tag`` names the message (``message_tag``: its
kind and window), so a receive matches its send whatever the order of posting (gloo
matches tags; NCCL ignores them and matches in order, which the pipeline keeps: per pair of
groups one kind of message, posted and sent in window order).

- ``DistributedTransport``: group g is process rank g (one group per process), messages go
  by ``torch.distributed.isend`` / ``irecv`` (gloo on CPU, NCCL on GPU; the process group is
  Lightning's, ``dnirnn.decoupled.parallel``). A wait that fails (the peer's process died:
  gloo reports the closed connection at once) or exceeds ``timeout`` seconds raises
  ``PeerLost``, naming the group, instead of hanging.
- ``LoopbackTransport``: every group in this process; a send leaves the tensor in a mailbox
  and the wait copies it into the receive buffer, bit for bit as the wire would. A wait for a
  message never sent is a deadlock in one process: it raises at once (a schedule error).
"""

from __future__ import annotations

import threading
from datetime import timedelta

import torch
from torch import Tensor

__all__ = ["STOPPING", "DistributedTransport", "LoopbackTransport", "PeerLost",
           "message_tag", "peer_lost"]

KINDS = {"F": 0, "B": 1}
# set once a PeerLost has been raised: the process is on its way out with a clear message
# (the watchdog of dnirnn.decoupled.parallel then leaves it time to finish)
STOPPING = threading.Event()


def message_tag(kind: str, window: int) -> int:
    """The tag of the message of ``kind`` ("F" activation, "B" gradient) about ``window``."""
    return (2 * window + KINDS[kind]) % (1 << 30)


class PeerLost(RuntimeError):
    """A layer group's process stopped answering (killed, crashed, or far too slow)."""


class _Done:
    def wait(self) -> None:
        pass


class LoopbackTransport:
    """Messages between groups of this process (see the module docstring)."""

    def __init__(self) -> None:
        self.mailbox: dict[tuple[int, int, int], Tensor] = {}

    def isend(self, tensor: Tensor, src: int, dst: int, tag: int) -> _Done:
        key = (src, dst, tag)
        if key in self.mailbox:
            raise RuntimeError(f"message {key} sent twice")
        self.mailbox[key] = tensor
        return _Done()

    def irecv(self, buffer: Tensor, src: int, dst: int, tag: int) -> _LoopbackReceive:
        return _LoopbackReceive(self, buffer, (src, dst, tag))


class _LoopbackReceive:
    def __init__(self, transport: LoopbackTransport, buffer: Tensor,
                 key: tuple[int, int, int]) -> None:
        self.transport, self.buffer, self.key = transport, buffer, key

    def wait(self) -> None:
        tensor = self.transport.mailbox.pop(self.key, None)
        if tensor is None:
            raise RuntimeError(f"layer group {self.key[1]} waits for a message from group "
                               f"{self.key[0]} (tag {self.key[2]}) that was never sent: in one "
                               f"process this wait would never end (a schedule error)")
        self.buffer.copy_(tensor)


class DistributedTransport:
    """Group g is process rank g (see the module docstring).

    Args:
        rank: this process's rank (= its group).
        timeout: seconds a wait may take before ``PeerLost``.
        group: the ``torch.distributed`` process group (None: the default one).
    """

    def __init__(self, rank: int, timeout: float = 300.0, group=None) -> None:
        self.rank, self.timeout, self.group = rank, float(timeout), group

    def isend(self, tensor: Tensor, src: int, dst: int, tag: int) -> _Wire:
        work = self._call(torch.distributed.isend, tensor, dst, tag, "send to")
        return _Wire(self, work, dst, "send to")

    def irecv(self, buffer: Tensor, src: int, dst: int, tag: int) -> _Wire:
        work = self._call(torch.distributed.irecv, buffer, src, tag, "receive from")
        return _Wire(self, work, src, "receive from")

    def _call(self, fn, tensor: Tensor, peer: int, tag: int, what: str):
        try:
            return fn(tensor, peer, group=self.group, tag=tag)
        except RuntimeError as e:
            raise self.lost(peer, what, e) from e

    def lost(self, peer: int, what: str, error: BaseException) -> PeerLost:
        return peer_lost(self.rank, f"could not {what} layer group {peer} (process rank "
                                    f"{peer})", error)


def peer_lost(rank: int, why: str, error: BaseException | None = None) -> PeerLost:
    """The one paragraph of a run that stops because a layer group's process is gone."""
    STOPPING.set()
    reason = str(error).strip().splitlines()[0] if error is not None and str(error) else ""
    return PeerLost(
        f"layer group {rank} {why}{f' ({reason})' if reason else ''}. Each layer group runs in "
        f"its own process; when one stops (killed, out of memory, or an error: see its own "
        f"message), the others stop too rather than wait. The last checkpoint on disk is "
        f"whole: resume with --ckpt_path=<run folder>/checkpoints/last.ckpt.")


class _Wire:
    def __init__(self, transport: DistributedTransport, work, peer: int, what: str) -> None:
        self.transport, self.work, self.peer, self.what = transport, work, peer, what

    def wait(self) -> None:
        try:
            self.work.wait(timeout=timedelta(seconds=self.transport.timeout))
        except RuntimeError as e:
            raise self.transport.lost(self.peer, self.what, e) from e
