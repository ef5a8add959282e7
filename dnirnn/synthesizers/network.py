"""The network synthesizer ``M_phi``, fitted by gradient descent (Adam: the paper's way).

``Synthesizer(state_size)`` maps the flat state ``(B, S)`` (optionally concatenated with a
conditioning context ``(B, C)``, cDNI) to a synthetic gradient ``(B, S)``.

- ``kind="linear"``: ``g = W s + b``: the form Czarnecki et al. (2017) analyse.
- ``kind="mlp"``: ``hidden_layers`` ReLU layers of ``hidden_size`` units, then a linear layer.

``positions = P > 1`` holds P independent maps, one per boundary index within an episode
(boundary ``k`` uses map ``min(k, P - 1)``), so that boundaries with different futures (the
input phase of a copy task, the answer phase, the episode end) do not leak into each other.

The LAST layer of every map is zero-initialised (weights and bias), so a fresh synthesizer
outputs exactly zero and DNI starts as plain truncated BPTT.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dnirnn.options import KINDS
from dnirnn.synthesizers.interface import features

SYNTHESIZER_KINDS = KINDS  # (declared with the options: dnirnn.options)


def _map(width: int, state_size: int, kind: str, hidden_size: int, layers: int) -> nn.Module:
    body: list[nn.Module] = []
    if kind == "mlp":
        for _ in range(layers):
            body += [nn.Linear(width, hidden_size), nn.ReLU()]
            width = hidden_size
    last = nn.Linear(width, state_size)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*body, last)


class Synthesizer(nn.Module):
    """Args:
        state_size: S, the flat state's width (input and output).
        kind: "linear" or "mlp".
        hidden_size, hidden_layers: the mlp's hidden width and depth.
        context_size: C, width of the cDNI context appended to the input (0: none).
        positions: P, independent maps, one per boundary index (1: one shared map).
    """

    fit = "adam"  # fitted by an optimizer on L_SG (see dnirnn.synthesizers.interface)

    def __init__(
        self,
        state_size: int,
        kind: str = "mlp",
        hidden_size: int = 512,
        hidden_layers: int = 1,
        context_size: int = 0,
        positions: int = 1,
    ) -> None:
        super().__init__()
        if kind not in SYNTHESIZER_KINDS:
            raise ValueError(
                f"synthesizer kind must be one of {SYNTHESIZER_KINDS}, got {kind!r}"
            )
        if kind == "mlp" and (hidden_layers < 1 or hidden_size < 1):
            raise ValueError(
                "an 'mlp' synthesizer needs hidden_layers >= 1 and hidden_size >= 1, "
                f"got hidden_layers={hidden_layers}, hidden_size={hidden_size}"
            )
        if context_size < 0:
            raise ValueError(f"synthesizer context_size must be >= 0, got {context_size}")
        if positions < 1:
            raise ValueError(f"synthesizer positions must be >= 1, got {positions}")
        self.kind, self.state_size, self.context_size = kind, state_size, context_size
        self.positions = positions
        width = state_size + context_size
        self.maps = nn.ModuleList(
            _map(width, state_size, kind, hidden_size, hidden_layers) for _ in range(positions)
        )

    def forward(
        self, state_flat: Tensor, context: Tensor | None = None, position: int = 0
    ) -> Tensor:
        """``(B, S)`` [+ context ``(B, C)``] at boundary index ``position`` -> ``(B, S)``."""
        return self.maps[min(position, self.positions - 1)](features(self, state_flat, context))

    def end_step(self, all_reduce=None) -> Tensor:
        """Fitted window by window by its optimizer: nothing to do at a step's end."""
        return torch.ones((), dtype=torch.bool, device=self.maps[0][-1].weight.device)
