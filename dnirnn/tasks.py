"""Tasks: where the data comes from, what it costs, and what is reported (no Lightning).

A task hands the training loop ``Batch``es by *position*, so that a run can stop anywhere and
resume exactly (the position is saved in the checkpoint):

- ``LanguageModelTask`` (streams, PTB): the training stream is batchified once and kept on
  the device; batch ``p`` of an epoch is the ``chunk``-step slice starting at ``p * chunk``
  (a view). The recurrent state is carried across batches and reset at epoch start.
- ``CopyTask`` (episodes): batch ``p`` is a fresh batch of episodes drawn from a generator
  seeded by ``(seed, p)`` at the current curriculum level; the state is reset every episode.
- ``RecallTask`` (episodes, tokens): delayed recall (``dnirnn.data.recall``), batch ``p``
  drawn from a generator seeded by ``(seed, p)``; fixed length, no curriculum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dnirnn.data import repeat_copy
from dnirnn.data.ptb_corpus import Corpus, batchify
from dnirnn.data.recall import Recall
from dnirnn.model import copy_step_loss, lm_step_loss

LN2 = math.log(2.0)


@dataclass
class Batch:
    """A span of time-major data. ``reset``: start from zero state (epoch/episode start);
    ``last``: nothing follows this span (epoch end for streams), so ``g = 0`` at its end."""

    x: Tensor
    y: Tensor
    mask: Tensor | None
    reset: bool
    last: bool


# each task's per-step loss (the engine's ``StepLoss``), by the name models are given
GROWS = ("length", "delay")  # what the copy curriculum raises (``CopyTask``)
TASKS = {"lm": lm_step_loss, "copy": copy_step_loss, "recall": lm_step_loss}
TOKEN_TASKS = ("lm", "recall")  # token inputs (an embedding); the others read features


class LanguageModelTask:
    """Next-token prediction on a token stream with carried state (PTB char or word level).

    Args:
        corpus: the encoded splits and vocabulary.
        batch_size: training columns (``batchify`` layout).
        eval_batch_size: validation/test columns.
        train_tail: also train on each epoch's tail shorter than a training step's span, as
            one last, shorter step (word_language_model's last ``get_batch`` slice); else it
            is dropped.
    """

    episodic = False

    def __init__(self, corpus: Corpus, batch_size: int, eval_batch_size: int = 10,
                 train_tail: bool = False) -> None:
        self.corpus, self.level = corpus, corpus.level
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.train_tail = train_tail
        self.streams = {
            "train": batchify(corpus.train, batch_size),  # (N, B)
            "valid": batchify(corpus.valid, eval_batch_size),
            "test": batchify(corpus.test, eval_batch_size),
        }
        self.input_size = self.output_size = len(corpus.vocab)
        self.rank, self.world = 0, 1

    def shard(self, rank: int, world: int) -> LanguageModelTask:
        """Data parallel: this process trains on the contiguous block of columns
        ``[rank * B / world, (rank + 1) * B / world)`` of the global ``batchify`` layout
        (``loss_norm`` keeps the global B). Evaluation streams are not sharded."""
        _check_shard(self.batch_size, world)
        b = self.batch_size // world
        full = batchify(self.corpus.train, self.batch_size)
        self.streams["train"] = full[:, rank * b : (rank + 1) * b].contiguous()
        self.rank, self.world = rank, world
        return self

    def to(self, device: torch.device) -> LanguageModelTask:
        self.streams = {k: v.to(device) for k, v in self.streams.items()}
        return self

    def num_batches(self, split: str, chunk: int) -> int:
        """``chunk``-step spans in the split. Evaluation keeps the tail shorter than a chunk
        as a last, shorter span (see ``batch``); training keeps it only with ``train_tail``."""
        n = self.streams[split].shape[0] - 1
        if split == "train" and not self.train_tail:
            if n < chunk:
                raise ValueError(
                    f"the training stream has {n} steps per column, fewer than one training "
                    f"step's span (window * windows_per_step = {chunk}); lower them or "
                    "data.batch_size"
                )
            return n // chunk
        return math.ceil(n / chunk)

    def batch(self, split: str, position: int, chunk: int) -> Batch:
        """Span ``position`` of ``split``: inputs ``(chunk, B)``, targets shifted by one."""
        stream = self.streams[split]
        start = position * chunk
        stop = min(start + chunk, stream.shape[0] - 1)
        last = position == self.num_batches(split, chunk) - 1
        return Batch(stream[start:stop], stream[start + 1 : stop + 1], None, position == 0, last)

    def loss_norm(self, window: int) -> float:
        """The window objective is the mean loss per token of the window: ``window`` is its
        length (a shorter last window of the training tail has its own)."""
        return float(self.batch_size * window)

    def metrics(self, nats: Tensor, count: Tensor) -> dict[str, Tensor]:
        mean = nats / count.clamp_min(1)
        out = {"loss": mean}
        if self.level == "char":
            out["bpc"] = mean / LN2
        else:
            out["ppl"] = mean.exp()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class EpisodicTask:
    """What the episodic tasks share: batch ``p`` of a split is drawn from a generator seeded
    by ``(seed, p, split)`` (so a position always gives the same episodes, and resume is
    exact), sharded by rows under data parallel, with the episode's summed loss averaged over
    the batch as the objective. Subclasses give ``sample`` (and their own state)."""

    episodic = True

    def __init__(self, batch_size: int, seed: int, val_batches: int) -> None:
        _at_least_one(batch_size=batch_size, val_batches=val_batches)
        self.batch_size, self.seed, self.val_batches = batch_size, seed, val_batches
        self.device = torch.device("cpu")
        self.rank, self.world = 0, 1

    def sample(self, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, y, mask)`` of ``batch_size`` episodes, time-major, drawn from ``generator``."""
        raise NotImplementedError

    def shard(self, rank: int, world: int) -> EpisodicTask:
        """Data parallel: every process draws the same global batch of training episodes
        from the ``(seed, position)`` generator and keeps its rows
        ``[rank * B / world, (rank + 1) * B / world)`` (``loss_norm`` keeps the global B).
        Validation and test batches are not sharded."""
        _check_shard(self.batch_size, world)
        self.rank, self.world = rank, world
        return self

    def to(self, device: torch.device) -> EpisodicTask:
        self.device = torch.device(device)
        return self

    def num_batches(self, split: str, chunk: int = 0) -> int:
        return self.val_batches

    def batch(self, split: str, position: int, chunk: int = 0) -> Batch:
        offset = {"train": 0, "valid": 1, "test": 2}[split]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + position * 3 + offset)
        x, y, mask = self.sample(g)
        if split == "train" and self.world > 1:
            b = self.batch_size // self.world
            rows = slice(self.rank * b, (self.rank + 1) * b)
            x, y, mask = x[:, rows], y[:, rows], mask[:, rows]
        dev = self.device
        return Batch(x.to(dev), y.to(dev), mask.to(dev), True, True)

    def loss_norm(self, window: int) -> float:
        """The objective is the episode's summed loss, averaged over the batch."""
        return float(self.batch_size)

    def metrics(self, nats: Tensor, count: Tensor) -> dict[str, Tensor]:
        mean = nats / count.clamp_min(1)
        return {"loss": mean, "bits_per_step": mean / LN2}


class CopyTask(EpisodicTask):
    """Copy / Repeat Copy with a curriculum (docs/design.md §3).

    The level is ``(length L, repeats R)``; it starts at ``(start_length, 1)`` and ``advance``
    raises it (copy: L+1; repeat copy: R up to L, then L+1). ``max_level_solved`` is the
    answer length ``L * R`` of the largest level whose error fell below the threshold, and
    ``max_length_solved`` the largest pattern length ``L`` solved at any ``R``: the
    dependency a repeat-copy level tests (its first answer comes ``L + 1`` steps, plus any
    delay, after its input), which ``L * R`` hides.

    ``grow="delay"`` makes the curriculum raise the delay D instead (from ``delay``, by one a
    solve) at a fixed level ``(start_length, 1)``: ``max_delay_solved`` is the largest D
    solved (-1 until the first solve), the dependency past any fixed horizon that a method
    carries credit over. Its options are ``CopyDataModule``'s (``data.*``).

    Args:
        repeat: repeat copy (with the repeat-count channel) or plain copy.
        num_bits: pattern width.
        norm_max: the repeat count is presented as R / norm_max.
        batch_size: episodes per training step.
        seed: seeds the episode generator (batch p uses a generator seeded by (seed, p)).
        start_length: the curriculum's first pattern length.
        val_batches: validation batches at the current level.
        delay: D silent steps between the input and the answer (0: the NTM task), so the
            dependencies are longer than the pattern by D (a task past any fixed horizon).
        grow: what the curriculum raises: "length" (L, and R for repeat copy) or "delay"
            (D, by one a solve from ``delay``, at the fixed pattern length ``start_length``;
            ``curriculum/max_delay_solved`` is the largest D solved).
    """

    episodic = True

    def __init__(
        self,
        repeat: bool = False,
        num_bits: int = 8,
        norm_max: int = 10,
        batch_size: int = 32,
        seed: int = 0,
        start_length: int = 1,
        val_batches: int = 2,
        delay: int = 0,
        grow: str = "length",
    ) -> None:
        super().__init__(batch_size, seed, val_batches)
        _at_least_one(num_bits=num_bits, start_length=start_length, norm_max=norm_max)
        if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
            raise ValueError(f"data.delay must be an integer >= 0 (0: no delay), got {delay!r}")
        if grow not in GROWS:
            raise ValueError(f"data.grow must be one of {GROWS} (what the curriculum raises), "
                             f"got {grow!r}")
        self.grow = grow
        self.generator = repeat_copy.RepeatCopy(num_bits=num_bits, repeat=repeat,
                                                norm_max=norm_max, delay=delay)
        self.repeat = repeat
        self.length, self.repeats, self.max_level_solved = start_length, 1, 0
        self.max_length_solved = 0
        self.max_delay_solved = -1
        self.input_size = self.generator.obs_size
        self.output_size = self.generator.target_size

    @property
    def level(self) -> int:
        return repeat_copy.level_size(self.length, self.repeats)

    def answer_phase(self, step: int) -> bool:
        """Whether a boundary after ``step`` steps of an episode at the current level is in
        the answer phase: the pattern (and the count) have been read, so what remains is
        to play the answer back. Input-phase boundaries carry the long-range credit."""
        return step >= self.generator.answer_start(self.length)

    def advance(self) -> None:
        """The current level is solved: record it and move to the next."""
        self.max_level_solved = max(self.max_level_solved, self.level)
        self.max_length_solved = max(self.max_length_solved, self.length)
        self.max_delay_solved = max(self.max_delay_solved, self.delay)
        if self.grow == "delay":
            self.delay += 1
        else:
            self.length, self.repeats = repeat_copy.next_level(self.length, self.repeats,
                                                               self.repeat)

    @property
    def delay(self) -> int:
        """D, the current delay (fixed unless ``grow="delay"``)."""
        return self.generator.delay

    @delay.setter
    def delay(self, value: int) -> None:
        self.generator.delay = int(value)

    def sample(self, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        ep = self.generator.sample(self.batch_size, self.length, self.repeats,
                                   generator=generator)
        return ep.obs, ep.target, ep.mask

    def state_dict(self) -> dict[str, Any]:
        return {"length": self.length, "repeats": self.repeats,
                "max_level_solved": self.max_level_solved,
                "max_length_solved": self.max_length_solved, "grow": self.grow,
                "delay": self.delay, "max_delay_solved": self.max_delay_solved}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.length, self.repeats = int(state["length"]), int(state["repeats"])
        self.max_level_solved = int(state["max_level_solved"])
        # (older checkpoints have neither the length nor the delay solved, nor a moving delay)
        self.max_length_solved = int(state.get("max_length_solved", 0))
        self.delay = state.get("delay", self.delay)
        self.max_delay_solved = int(state.get("max_delay_solved",
                                              self.delay if self.max_level_solved else -1))


class RecallTask(EpisodicTask):
    """Delayed recall (``dnirnn.data.recall``): a key, a gap of distractors, queries. Its
    options are ``RecallDataModule``'s (``data.*``).

    Args:
        num_symbols: ``S``, the keys and output classes (chance: log2(S) bits per query).
        length: ``N``, steps per episode; the key-to-query gap is ``N - query_steps``.
        query_steps: ``Q``, scored steps at the end of the episode.
        num_distractors: ``D``, the distractor tokens between key and queries.
        batch_size: episodes per training step.
        seed: batch ``p`` of a split is drawn from a generator seeded by ``(seed, p, split)``.
        val_batches: validation/test batches (fixed episodes).
    """

    def __init__(
        self,
        num_symbols: int = 8,
        length: int = 64,
        query_steps: int = 8,
        num_distractors: int = 8,
        batch_size: int = 32,
        seed: int = 0,
        val_batches: int = 4,
    ) -> None:
        super().__init__(batch_size, seed, val_batches)
        self.generator = Recall(num_symbols, length, query_steps, num_distractors)
        self.input_size = self.generator.input_size
        self.output_size = self.generator.output_size

    @property
    def episode_length(self) -> int:
        return self.generator.length

    def sample(self, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        ep = self.generator.sample(self.batch_size, generator=generator)
        return ep.x, ep.y, ep.mask

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _at_least_one(**options: int) -> None:
    """The data module's integer ``options`` are >= 1 (the message names ``data.NAME``)."""
    for name, v in options.items():
        if v < 1:
            raise ValueError(f"data.{name} must be >= 1, got {v}")


def _check_shard(batch_size: int, world: int) -> None:
    if world < 1 or batch_size % world:
        raise ValueError(
            f"data.batch_size: {batch_size} training columns/episodes cannot be split evenly "
            f"over {world} processes; use a multiple of trainer.devices * trainer.num_nodes"
        )
