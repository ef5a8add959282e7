"""The recurrent core and what it works on (docs/design.md §1).

- The state: an LSTM state is the pair ``s = (h, c)``, each ``(layers, batch, hidden)``; the
  synthesizer sees and predicts the flat ``(batch, 2 * layers * hidden)``
  (``flatten_state`` / ``unflatten_state``, exact inverses).
- The core: input projection -> multi-layer ``nn.LSTM`` (cuDNN on GPU) -> readout
  (``CoreConfig``, ``LSTMCore``).
- The window: a truncation window's data (``Window``), how a sequence is cut into windows
  (``split_windows``), its masked loss (``masked_task_loss``) over the task's per-step loss
  (``lm_step_loss``, ``copy_step_loss``) and what one window update returns
  (``WindowResult``), shared by the single core (``dnirnn.dni``), the hierarchy, the
  decoupled stack and the training modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

State = tuple[Tensor, Tensor]  # (h, c), each (L, B, H)


def zero_state(
    layers: int,
    batch: int,
    hidden: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> State:
    """Zeros for ``(h, c)``, each ``(layers, batch, hidden)``."""
    h = torch.zeros(layers, batch, hidden, device=device, dtype=dtype)
    return h, torch.zeros_like(h)


def detach_state(state: State, *, requires_grad: bool = False) -> State:
    """Cuts the graph at ``state`` (the truncation point of TBPTT).

    With ``requires_grad=True`` the returned tensors are fresh leaves, so that after a
    backward pass their ``.grad`` holds the gradient of the window objective with respect
    to the state the window started in: the bootstrapped target of DNI.
    """
    return tuple(s.detach().requires_grad_(requires_grad) for s in state)  # type: ignore[return-value]


def flatten_state(state: State) -> Tensor:
    """``(h, c)`` each ``(L, B, H)``  ->  ``(B, 2*L*H)``, ordered ``[h_1..h_L, c_1..c_L]``.

    One copy (``cat`` of per-sample views; for one layer ``h[0]`` is already ``(B, H)``).
    """
    batch = state[0].shape[1]
    return torch.cat([s.transpose(0, 1).reshape(batch, -1) for s in state], dim=-1)


def unflatten_state(flat: Tensor, layers: int) -> State:
    """``(B, 2*L*H)``  ->  ``(h, c)`` each ``(L, B, H)``; the inverse of ``flatten_state``."""
    both = rearrange(flat, "b (two l h) -> two l b h", two=2, l=layers)
    return both[0], both[1]


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


StepLoss = Callable[[Tensor, Tensor], Tensor]
"""``step_loss(logits (T, B, O), targets) -> (T, B)`` per-step, per-sequence loss in nats."""


@dataclass
class Window:
    """One truncation window, time-major.

    Attributes:
        x: inputs, ``(T, B)`` token ids or ``(T, B, C)`` features.
        y: targets, ``(T, B)`` token ids or ``(T, B, C)`` channels.
        mask: ``(T, B)`` weights of the scored steps, or None (all scored).
        context: ``(B, C)`` conditioning context for the synthesizer at the boundary this
            window STARTS from (cDNI), or None.
        position: the index k of that boundary within its episode (0 for streams).
        norm: the divisor of this window's summed loss where it is not the engine's
            ``loss_norm`` (a stream's shorter last window: the mean over its own tokens),
            else None.
    """

    x: Tensor
    y: Tensor
    mask: Tensor | None = None
    context: Tensor | None = None
    position: int = 0
    norm: float | None = None


@dataclass
class WindowResult:
    """What one window update returns; every field is a detached tensor (no host sync).

    Attributes:
        loss: the window's task objective ``l_k`` (nats / loss_norm).
        nats: summed task loss over scored steps, in nats.
        count: number of scored steps (sum of the mask).
        state: ``s_{k+1}``, detached: carry it into the next window.
        sg_loss: mean ``L_SG`` over the boundaries fitted in this update (0 if none; at
            H > 1 they are the boundaries H - 1 windows back, and at an episode's end all
            that waited).
        aux_loss: the Aux objective (0 unless ``dni_aux``).
        sg_norm: ``||g_{k+1}||``, the synthetic gradient injected at the end boundary.
        target_norm: ``||delta_k||``, the window's own bootstrapped target at its start.
        sg_cos: mean cosine between ``M_phi(s_j)`` (before the fit) and its target ``G_j``
            over the boundaries fitted in this update (0 if none).
        fitted: how many boundaries the synthesizer was fitted to in this update.
        updated: whether the core stepped after this window (``update_every``).
        grad_norm: the core's gradient norm before clipping, of the update this window
            makes (0 if it makes none: ``updated``).
        finite: whether the loss, the core gradients, delta_k and L_SG (hence the fitted
            targets) were all finite.
    """

    loss: Tensor
    nats: Tensor
    count: Tensor
    state: State
    sg_loss: Tensor
    aux_loss: Tensor
    sg_norm: Tensor
    target_norm: Tensor
    sg_cos: Tensor
    grad_norm: Tensor
    finite: Tensor
    fitted: int = 0
    updated: bool = True


# ---- the tasks' per-step losses (each a ``StepLoss``; ``dnirnn.tasks.TASKS`` names them) --


class CrossEntropyNats(torch.autograd.Function):
    """``F.cross_entropy(logits, y, reduction="none")`` for ``(N, V)`` logits, holding less.

    PyTorch's composes a log-softmax, whose ``(N, V)`` output it saves, with an nll whose
    backward makes a dense ``(N, V)`` gradient before the log-softmax's backward makes
    another, and the logits stay alive while the caller holds them. This one saves only the
    logits, and its backward builds ``softmax - onehot``, scaled by the incoming gradient, in
    one ``(N, V)`` buffer. PTB word (``35 x 20`` rows of 10,000): 2 buffers of 28 MB at the
    backward's peak, where there were 4. Equal to PyTorch's to rounding (tests/test_tasks.py).
    Half-precision logits (mixed precision on a GPU) are computed in float32, as PyTorch's
    autocast does for its cross-entropy; their gradient comes back in their own dtype.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, y: Tensor) -> Tensor:
        ctx.dtype = logits.dtype
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        ctx.save_for_backward(logits, y)
        return torch.logsumexp(logits, dim=-1) - logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        logits, y = ctx.saved_tensors
        g = torch.softmax(logits, dim=-1)  # (a new buffer: the saved logits stay untouched)
        g.scatter_add_(-1, y.unsqueeze(-1), torch.full_like(grad, -1.0).unsqueeze(-1))
        return g.mul_(grad.unsqueeze(-1)).to(ctx.dtype), None


def lm_step_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy in nats, ``(T, B, V), (T, B) -> (T, B)`` (``CrossEntropyNats``)."""
    return CrossEntropyNats.apply(logits.flatten(0, 1), y.flatten()).view_as(y)


def copy_step_loss(logits: Tensor, target: Tensor) -> Tensor:
    """The copy tasks' sigmoid cross-entropy in nats, summed over channels, not masked:
    ``(T, B, C), (T, B, C) binary -> (T, B)``."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)


def masked_task_loss(
    step_loss: StepLoss, loss_norm: float, logits: Tensor, window: Window
) -> tuple[Tensor, Tensor, Tensor]:
    """``(l, nats, count)``: the masked summed loss / ``loss_norm`` (or the window's own
    ``norm``), and its metric sums.

    ``nats`` is the masked sum in nats, ``count`` the number of scored steps (the mask's sum).
    """
    per_step = step_loss(logits, window.y)  # (T, B)
    if window.mask is not None:
        per_step = per_step * window.mask
        count = window.mask.sum()
    else:
        # torch.full, not torch.tensor: no host-to-device copy (a sync on CUDA)
        count = torch.full((), float(per_step.numel()), device=per_step.device)
    nats = per_step.sum()
    return nats / (loss_norm if window.norm is None else window.norm), nats, count


def split_windows(
    x: Tensor, y: Tensor, window: int, mask: Tensor | None = None,
    loss_norm: Callable[[int], float] | None = None,
) -> list[Window]:
    """Cuts time-major ``(N, B, ...)`` tensors into windows of ``window`` steps (views).

    The last window is shorter if ``window`` does not divide ``N``; with ``loss_norm`` (the
    task's, of a window's length) it gets ``norm = loss_norm(its length)``.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n = x.shape[0]
    windows = [
        Window(x[i : i + window], y[i : i + window], None if mask is None else mask[i : i + window])
        for i in range(0, n, window)
    ]
    if loss_norm is not None and n % window:
        windows[-1].norm = float(loss_norm(n % window))
    return windows
