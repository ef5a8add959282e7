"""Lightning data modules: they build a task (``dnirnn.tasks``) and hand out positions.

The training "loader" yields integer positions, not tensors: the LightningModule fetches the
span from the task, whose data already sits on the device (windows are views). The positions
of an epoch are read from the module when the epoch's iteration starts, so a run resumed
from a mid-epoch checkpoint continues at the exact batch where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from dnirnn.data.ptb_corpus import LEVELS, load_corpus
from dnirnn.tasks import CopyTask, LanguageModelTask, RecallTask

PTB_VOCAB = {"char": 50, "word": 10_000}


class Positions(IterableDataset):
    """Yields the integers of ``positions()``, evaluated afresh at every iteration."""

    def __init__(self, positions: Callable[[], range], length: Callable[[], int]) -> None:
        self.positions, self.length = positions, length

    def __iter__(self) -> Iterator[int]:
        return iter(self.positions())

    def __len__(self) -> int:
        return self.length()


class PositionLoader(DataLoader):
    """The training loader. It resumes exactly, with no state of its own: the positions come
    from the module (``data_position``, saved in the checkpoint's ``dnirnn`` section). Its
    ``state_dict`` / ``load_state_dict`` tell Lightning so (Lightning would otherwise warn on
    every mid-epoch resume that the loader is "not resumable")."""

    def state_dict(self) -> dict[str, str]:
        return {"positions": "from the module's data_position"}

    def load_state_dict(self, state: dict[str, str]) -> None:
        pass


def _loader(dataset: IterableDataset, cls: type[DataLoader] = DataLoader) -> DataLoader:
    # A private generator: creating an iterator then draws no number from the global RNG
    # (which dropout uses), so a resumed run's RNG stream matches the uninterrupted run's.
    return cls(dataset, batch_size=None, num_workers=0, generator=torch.Generator())


class _TaskDataModule(L.LightningDataModule):
    task: LanguageModelTask | CopyTask | RecallTask | None = None

    def _module(self):
        return self.trainer.lightning_module

    def train_dataloader(self) -> DataLoader:
        return _loader(Positions(lambda: self._module().train_positions(), self._epoch_length),
                       PositionLoader)

    def _eval_loader(self, split: str) -> DataLoader:
        def positions() -> range:
            return range(self.task.num_batches(split, self._module().hparams.eval_chunk))

        return _loader(Positions(positions, lambda: len(positions())))

    def check(self, stage: str, model, world: int = 1) -> None:
        """Pre-flight checks, before anything is written: the data loads and fits the model's
        config and the number of processes (raises ValueError / DataError)."""
        self.setup(stage)
        if world > 1 and stage == "fit":
            from dnirnn.tasks import _check_shard

            _check_shard(self.task.batch_size, world)
        if stage == "fit" and not self.task.episodic:
            self.task.num_batches("train", model.chunk)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


class PTBDataModule(_TaskDataModule):
    """Penn Treebank, character or word level, ``batchify`` layout.

    Args:
        level: "char" (50 symbols with <eos>; bits per character) or "word" (10k vocabulary;
            perplexity).
        root: data folder; else env ``DNIRNN_DATA``; else the per-user cache
            (``~/.cache/dnirnn/ptb``, see ``dnirnn.data.ptb.default_root``). Missing files are
            downloaded from the canonical URLs and SHA-256 checked.
        batch_size: training columns.
        eval_batch_size: validation/test columns.
        download: allow downloading missing files.
        train_tail: also train on each epoch's last span shorter than a training step (as
            word_language_model does: its 33-word tail of PTB word at bptt 35), the mean
            loss over its own tokens; else it is dropped. ``DNIModule`` only.
    """

    def __init__(
        self,
        level: str = "char",
        root: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 10,
        download: bool = True,
        train_tail: bool = False,
    ) -> None:
        super().__init__()
        if level not in LEVELS:
            raise ValueError(f"data.level must be one of {LEVELS}, got {level!r}")
        for name, v in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if v < 1:
                raise ValueError(f"data.{name} must be >= 1, got {v}")
        self.level, self.root, self.download = level, root, download
        self.train_tail = train_tail
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.task_name, self.input_size = "lm", PTB_VOCAB[level]
        self.output_size = self.input_size
        self.vocab = None

    def setup(self, stage: str) -> None:
        if self.task is not None:
            return
        corpus = load_corpus(self.root, self.level, download=self.download)
        assert len(corpus.vocab) == self.input_size, len(corpus.vocab)
        for split, n in (("train", len(corpus.train)), ("valid", len(corpus.valid)),
                         ("test", len(corpus.test))):
            size = self.batch_size if split == "train" else self.eval_batch_size
            if n < size + 1:
                raise ValueError(
                    f"data.batch_size / eval_batch_size: the {split} stream has {n} tokens, "
                    f"too few for {size} columns; lower the batch size"
                )
        self.vocab = corpus.vocab
        self.task = LanguageModelTask(corpus, self.batch_size, self.eval_batch_size,
                                      train_tail=self.train_tail)

    def _epoch_length(self) -> int:
        return self.task.num_batches("train", self._module().chunk)


class _EpisodeDataModule(_TaskDataModule):
    """A task of episodes generated on the fly: the module adds ``steps_per_epoch``; the
    episodes' options are the task's own (``CopyTask``, ``RecallTask``), passed on."""

    def __init__(self, steps_per_epoch: int, task: CopyTask | RecallTask, name: str) -> None:
        super().__init__()
        if steps_per_epoch < 1:
            raise ValueError(f"data.steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.steps_per_epoch, self.task, self.task_name = steps_per_epoch, task, name
        self.input_size, self.output_size = task.input_size, task.output_size

    def _epoch_length(self) -> int:
        return self.steps_per_epoch


class CopyDataModule(_EpisodeDataModule):
    """Copy (``repeat=false``) or Repeat Copy (``repeat=true``), generated on the fly; the
    other options are ``CopyTask``'s (``repeat``, ``num_bits``, ``norm_max``, ``batch_size``,
    ``seed``, ``start_length``, ``val_batches``, ``delay``, ``grow``).

    Args:
        steps_per_epoch: training steps per "epoch" (validation and checkpoint cadence).
    """

    def __init__(self, steps_per_epoch: int = 100, **kwargs: Any) -> None:
        super().__init__(steps_per_epoch, CopyTask(**kwargs), "copy")


class RecallDataModule(_EpisodeDataModule):
    """Delayed recall (``dnirnn.data.recall``): a key, a gap of distractors, ``Q`` queries;
    the other options are ``RecallTask``'s (``num_symbols``, ``length``, ``query_steps``,
    ``num_distractors``, ``batch_size``, ``seed``, ``val_batches``).

    Args:
        steps_per_epoch: training steps per "epoch" (validation and checkpoint cadence).
    """

    def __init__(self, steps_per_epoch: int = 100, **kwargs: Any) -> None:
        super().__init__(steps_per_epoch, RecallTask(**kwargs), "recall")
