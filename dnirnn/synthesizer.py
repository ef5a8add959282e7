"""The synthesizer ``M_phi``: predicts the gradient the future sends into the state.

``Synthesizer(state_size)`` maps the flat state ``(B, S)`` (optionally concatenated with a
conditioning context ``(B, C)``, cDNI) to a synthetic gradient ``(B, S)``.

- ``kind="linear"``: ``g = W s + b`` -- the form Czarnecki et al. (2017) analyse.
- ``kind="mlp"``: ``hidden_layers`` ReLU layers of ``hidden_size`` units, then a linear layer.

The LAST layer is zero-initialised (weights and bias), so a fresh synthesizer outputs
exactly zero and DNI starts as plain truncated BPTT.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

SYNTHESIZER_KINDS = ("linear", "mlp")


class Synthesizer(nn.Module):
    def __init__(
        self,
        state_size: int,
        kind: str = "mlp",
        hidden_size: int = 512,
        hidden_layers: int = 1,
        context_size: int = 0,
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
        self.kind, self.state_size, self.context_size = kind, state_size, context_size
        width = state_size + context_size
        layers: list[nn.Module] = []
        if kind == "mlp":
            for _ in range(hidden_layers):
                layers += [nn.Linear(width, hidden_size), nn.ReLU()]
                width = hidden_size
        last = nn.Linear(width, state_size)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def forward(self, state_flat: Tensor, context: Tensor | None = None) -> Tensor:
        """``(B, S)`` [+ context ``(B, C)``] -> synthetic gradient ``(B, S)``."""
        if self.context_size:
            if context is None:
                raise ValueError("this synthesizer was built with context_size > 0: pass context")
            state_flat = torch.cat([state_flat, context.to(state_flat.dtype)], dim=-1)
        return self.net(state_flat)

