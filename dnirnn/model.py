"""The recurrent core: input projection -> multi-layer ``nn.LSTM`` (cuDNN on GPU) -> readout."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from dnirnn.state import State, zero_state


@dataclass
class CoreConfig:
    """Shape of the recurrent sequence model."""

    input_size: int
    """Vocabulary size if ``embed`` is true (token inputs), else the feature width."""
    output_size: int
    """Readout width: vocabulary size for language models, target channels for copy."""
    hidden_size: int = 256
    """LSTM units per layer."""
    num_layers: int = 1
    """Stacked LSTM layers (one ``nn.LSTM`` call runs them all)."""
    embed: bool = False
    """Token inputs through ``nn.Embedding`` (True) or float features through ``nn.Linear``."""
    embed_size: int | None = None
    """Embedding / input-projection width; defaults to ``hidden_size``."""
    dropout: float = 0.0
    """Dropout on the embedding, between layers, and before the readout."""
    tied: bool = False
    """The readout's weight IS the embedding's (Press & Wolf 2016; word_language_model's
    ``--tied``): token inputs, ``input_size == output_size``, ``embed_size == hidden_size``."""
    init_range: float | None = None
    """Uniform in ``[-init_range, init_range]`` for the embedding (input projection) and
    readout weights, readout bias 0: word_language_model's ``init_weights`` (0.1). None:
    PyTorch's defaults (embedding N(0, 1), Linear's Kaiming uniform). The LSTM keeps PyTorch's
    initialisation either way, as in word_language_model."""

    def __post_init__(self) -> None:
        for name in ("input_size", "output_size", "hidden_size", "num_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.core.dropout must be in [0, 1), got {self.dropout!r}")
        if self.embed_size is not None and self.embed_size < 1:
            raise ValueError(f"model.core.embed_size must be >= 1 or null, got "
                             f"{self.embed_size!r}")
        if self.init_range is not None and not self.init_range > 0:
            raise ValueError(f"model.core.init_range: must be > 0 (word_language_model: 0.1), or "
                             f"null for PyTorch's initialisation (got {self.init_range!r})")
        if self.tied:
            width = self.embed_size or self.hidden_size
            if not self.embed:
                raise ValueError("model.core.tied: tying the embedding to the readout needs "
                                 "token inputs (a language model); set model.core.tied=false")
            if self.input_size != self.output_size:
                raise ValueError(f"model.core.tied: the input vocabulary ({self.input_size}) "
                                 f"and the output vocabulary ({self.output_size}) differ; set "
                                 f"model.core.tied=false")
            if width != self.hidden_size:
                raise ValueError(f"model.core.tied: the tied weight is both the embedding "
                                 f"(embed_size={width}) and the readout (hidden_size="
                                 f"{self.hidden_size} inputs), so they must be equal; set "
                                 f"model.core.embed_size={self.hidden_size} (or null), or "
                                 f"model.core.tied=false")


class LSTMCore(nn.Module):
    """``forward(x, state) -> (logits, outputs, state)``, time-major.

    ``x`` is ``(T, B)`` token ids (``embed=True``) or ``(T, B, input_size)`` features.
    ``logits`` is ``(T, B, output_size)``; ``outputs`` the top layer's ``(T, B, H)`` (read by
    the Aux head); ``state`` the final ``(h, c)``, each ``(L, B, H)``.
    """

    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width = cfg.embed_size or cfg.hidden_size
        self.encoder = (
            nn.Embedding(cfg.input_size, width) if cfg.embed else nn.Linear(cfg.input_size, width)
        )
        self.drop = nn.Dropout(cfg.dropout)
        inter_layer = cfg.dropout if cfg.num_layers > 1 else 0.0
        self.lstm = nn.LSTM(width, cfg.hidden_size, cfg.num_layers, dropout=inter_layer)
        self.readout = nn.Linear(cfg.hidden_size, cfg.output_size)
        if cfg.tied:
            self.readout.weight = self.encoder.weight  # (V, H): one parameter, both uses
        if cfg.init_range is not None:  # (word_language_model's order)
            nn.init.uniform_(self.encoder.weight, -cfg.init_range, cfg.init_range)
            nn.init.zeros_(self.readout.bias)
            nn.init.uniform_(self.readout.weight, -cfg.init_range, cfg.init_range)

    @property
    def state_size(self) -> int:
        """Width of the flat state the synthesizer sees: ``2 * layers * hidden``."""
        return 2 * self.cfg.num_layers * self.cfg.hidden_size

    def zero_state(self, batch: int) -> State:
        p = self.readout.weight
        return zero_state(
            self.cfg.num_layers, batch, self.cfg.hidden_size, device=p.device, dtype=p.dtype
        )

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, Tensor, State]:
        emb = self.drop(self.encoder(x))  # (T, B, E)
        outputs, (h, c) = self.lstm(emb, state)  # (T, B, H), (L, B, H) x2
        logits = self.readout(self.drop(outputs))  # (T, B, O)
        return logits, outputs, (h, c)
