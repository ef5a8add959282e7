r"""A stacked LSTM cut into layer groups: the pieces of ``LSTMCore`` each group holds.

``LSTMCore`` (``dnirnn.model``) runs ``L`` layers in one ``nn.LSTM`` call::

    e_t = E x_t,   h^1_t = LSTM_1(e_t, .),   h^l_t = LSTM_l(h^{l-1}_t, .),   o_t = W h^L_t + b

Cut into ``G`` groups of consecutive layers (``group_bounds``: as equal as can be, the
lower groups taking one more when ``G`` does not divide ``L``), group ``g`` holds layers
``[a_g, a_{g+1})`` in one ``nn.LSTM`` of ``a_{g+1} - a_g`` layers; group 0 also holds the
embedding (input projection) and the last group the readout. Group ``g``'s input sequence is
group ``g - 1``'s output sequence ``h^{a_g}`` (``(T, B, H)``), and its state is the slice of the
stacked state for its layers, ``(h, c)`` each ``(a_{g+1} - a_g, B, H)``. Running the groups one
after another is exactly the stacked model (``nn.LSTM``'s layers are independent LSTMs, each
reading the sequence below); ``split_core`` copies an ``LSTMCore``'s parameters into the
groups, so a decoupled model starts from the same weights as the locked one of the same seed.

Not supported across groups: tied embedding / readout (one parameter in two groups) and
dropout (its masks would be drawn in each process); ``check_splittable`` says so.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dnirnn.model import CoreConfig, LSTMCore, State, zero_state

__all__ = ["LayerGroup", "check_splittable", "group_bounds", "split_core"]


def group_bounds(num_layers: int, groups: int) -> list[int]:
    """``[a_0 = 0, a_1, ..., a_G = L]``: group ``g`` holds layers ``a_g .. a_{g+1} - 1``."""
    if not 1 <= groups <= num_layers:
        raise ValueError(f"model.groups: {groups} layer groups cannot be cut from "
                         f"{num_layers} layers; use 1 <= model.groups <= model.num_layers "
                         f"(got groups={groups}, num_layers={num_layers})")
    base, extra = divmod(num_layers, groups)
    bounds = [0]
    for g in range(groups):
        bounds.append(bounds[-1] + base + (1 if g < extra else 0))
    return bounds


def check_splittable(cfg: CoreConfig) -> None:
    """Raises ``ValueError`` for what a cut between processes cannot hold."""
    if cfg.tied:
        raise ValueError("model.core.tied: the embedding (first layer group) and the readout (last "
                         "group) cannot be one parameter across layer groups; set "
                         "model.core.tied=false")
    if cfg.dropout:
        raise ValueError(f"model.core.dropout: decoupled layer groups train without dropout (its "
                         f"masks would be drawn per process); set model.core.dropout=0 (got "
                         f"{cfg.dropout})")


class LayerGroup(nn.Module):
    """Layers ``[first, stop)`` of a stacked core (see the module docstring).

    ``forward(x, state) -> (outputs (T, B, H), state)``: ``x`` is the token ids / features
    ``(T, B[, C])`` for group 0, else the output sequence of the group below ``(T, B, H)``.
    ``logits(outputs)``: the readout, last group only.
    """

    def __init__(self, cfg: CoreConfig, first: int, stop: int) -> None:
        super().__init__()
        self.first, self.stop, self.hidden_size = first, stop, cfg.hidden_size
        self.num_layers = stop - first
        width = cfg.embed_size or cfg.hidden_size
        self.encoder: nn.Module | None = None
        if first == 0:
            self.encoder = (nn.Embedding(cfg.input_size, width) if cfg.embed
                            else nn.Linear(cfg.input_size, width))
        self.lstm = nn.LSTM(width if first == 0 else cfg.hidden_size, cfg.hidden_size,
                            self.num_layers)
        self.readout = (nn.Linear(cfg.hidden_size, cfg.output_size)
                        if stop == cfg.num_layers else None)

    @property
    def state_size(self) -> int:
        """Width of the group's flat state: ``2 * layers * hidden``."""
        return 2 * self.num_layers * self.hidden_size

    def zero_state(self, batch: int) -> State:
        p = self.lstm.weight_hh_l0
        return zero_state(self.num_layers, batch, self.hidden_size, device=p.device,
                          dtype=p.dtype)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        inputs = x if self.encoder is None else self.encoder(x)
        outputs, (h, c) = self.lstm(inputs, state)
        return outputs, (h, c)

    def logits(self, outputs: Tensor) -> Tensor:
        if self.readout is None:
            raise RuntimeError("only the last layer group has the readout")
        return self.readout(outputs)


@torch.no_grad()
def split_core(core: LSTMCore, groups: int) -> list[LayerGroup]:
    """The layer groups of ``core``, holding copies of its parameters (see the docstring)."""
    cfg = core.cfg
    check_splittable(cfg)
    bounds = group_bounds(cfg.num_layers, groups)
    out = []
    for first, stop in zip(bounds[:-1], bounds[1:]):
        group = LayerGroup(cfg, first, stop).to(core.readout.weight)
        if group.encoder is not None:
            group.encoder.load_state_dict(core.encoder.state_dict())
        if group.readout is not None:
            group.readout.load_state_dict(core.readout.state_dict())
        for name, p in group.lstm.named_parameters():  # weight_ih_l0 <- weight_ih_l{first}
            stem, layer = name.rsplit("_l", 1)
            p.copy_(getattr(core.lstm, f"{stem}_l{first + int(layer)}"))
        out.append(group)
    return out
