"""What a kept window's graph needs to stay valid and cheap (``dnirnn.engine.kept``):
``ParameterSnapshot`` keeps copies of the parameters the forward used (the core steps in
place after every window), ``native_rnn`` picks PyTorch's native LSTM kernels on the CPU
(where state-only vector-Jacobian products will walk the graph)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import Tensor


@contextlib.contextmanager
def native_rnn(device: torch.device):
    """On the CPU, ``nn.LSTM`` uses PyTorch's native kernels instead of oneDNN's fused RNN
    inside the block (a state-only VJP through oneDNN's fused backward would cost a full
    backward: it computes every weight gradient whether asked or not); elsewhere, nothing
    changes."""
    get = getattr(torch._C, "_get_mkldnn_enabled", None)
    if device.type != "cpu" or get is None or not get():
        yield
        return
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(True)


class ParameterSnapshot:
    """A saved-tensor hook pair that stores copies of parameters instead of the parameters.

    Use ``with torch.autograd.graph.saved_tensors_hooks(*snap.hooks()):`` around a forward
    pass: any saved tensor that shares storage with one of ``params`` is replaced by a copy
    (one copy per distinct tensor, kept in ``copies``), so the graph survives in-place
    optimizer steps. Gradients still flow to the parameters themselves.
    """

    def __init__(self, params: Iterable[Tensor]) -> None:
        self._storages = {p.untyped_storage().data_ptr() for p in params}
        self.copies: dict[tuple, Tensor] = {}

    def _pack(self, t: Tensor) -> Tensor:
        if t.untyped_storage().data_ptr() not in self._storages:
            # (a view, not ``t``: a saved output holding itself would be a reference cycle
            # through its own grad_fn that Python's collector cannot see, and leak the graph)
            return t.detach()
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)
        copy = self.copies.get(key)
        if copy is None:
            copy = self.copies[key] = t.detach().clone()
        return copy

    def hooks(self):
        return self._pack, _identity


def _identity(t: Tensor) -> Tensor:
    return t
