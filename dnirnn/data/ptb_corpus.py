"""Penn Treebank as token streams: the verified files (:mod:`dnirnn.data.ptb`) read as word
or character tokens, encoded with the train vocabulary into a :class:`Corpus` of id streams,
and cut into batch columns (:func:`batchify`).

The character level is Mikolov's: :func:`word2char` is the exact transform that gives
``ptb.char.*.txt`` from the word files. Vocabularies are built from the train split only:
10,000 words or 50 characters (both including ``<eos>``); valid and test have no
out-of-vocabulary tokens.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from dnirnn.data.ptb import SPLITS, DataError, ensure_ptb, read_split
from dnirnn.data.vocab import Vocab

__all__ = [
    "EOS",
    "LEVELS",
    "Corpus",
    "batchify",
    "char_tokens",
    "load_corpus",
    "stream_stats",
    "tokenize",
    "word2char",
    "word_tokens",
]

LEVELS: tuple[str, ...] = ("char", "word")
EOS = "<eos>"


# ---------------------------------------------------------------------------------------
# Text -> tokens
# ---------------------------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    """Splits on ``"\\n"`` only; a trailing newline does not start an extra line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def word2char(text: str) -> str:
    """Mikolov's word -> character transform, byte-identical to ``ptb.char.*.txt``.

    Each line becomes ``"_".join(line.split()) + "\\n"``; then every character of the
    result, each ``"\\n"`` included, is written followed by one space.

    Args:
        text: a whole word-level file, read without newline translation.
    """
    s = "".join("_".join(line.split()) + "\n" for line in text.split("\n")[:-1])
    return "".join(ch + " " for ch in s)


def word_tokens(text: str) -> Iterator[str]:
    """Word-level tokens: for each line, ``line.split() + ["<eos>"]``."""
    for line in _lines(text):
        yield from line.split()
        yield EOS


def char_tokens(text: str) -> Iterator[str]:
    """Char-level tokens: for each line, the characters of ``"_".join(line.split())``, then
    ``"<eos>"``. These are the symbols of ``ptb.char.*.txt`` with ``"\\n"`` read as <eos>."""
    for line in _lines(text):
        yield from "_".join(line.split())
        yield EOS


def tokenize(text: str, level: str) -> Iterator[str]:
    """Tokens of ``text`` at ``level`` ("char" or "word")."""
    if level == "char":
        return char_tokens(text)
    if level == "word":
        return word_tokens(text)
    raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


def stream_stats(text: str) -> dict[str, int]:
    """Counts used to check the files against the README figures.

    Returns:
        ``lines``, ``words`` and ``words_eos`` (word level), ``chars`` and ``chars_eos``
        (char level, ``_`` counted as a symbol), ``underscores``.
    """
    lines = _lines(text)
    words = sum(len(line.split()) for line in lines)
    joined = ["_".join(line.split()) for line in lines]
    chars = sum(len(s) for s in joined)
    return {
        "lines": len(lines),
        "words": words,
        "words_eos": words + len(lines),
        "chars": chars,
        "chars_eos": chars + len(lines),
        "underscores": sum(s.count("_") for s in joined),
    }


# ---------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """The three PTB splits as id streams, with the train vocabulary.

    Attributes:
        train: LongTensor (N_train,), token ids with one <eos> per line.
        valid: LongTensor (N_valid,).
        test: LongTensor (N_test,).
        vocab: built from the train split only (order of first appearance).
        level: "char" or "word".
    """

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocab: Vocab
    level: str

    def split(self, name: str) -> torch.Tensor:
        """The stream of split ``name`` ("train", "valid" or "test")."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)


def _encode_split(vocab: Vocab, text: str, level: str, split: str) -> torch.Tensor:
    try:  # (tokens stream from the text into the ids: no list of a million strings)
        return vocab.encode(tokenize(text, level))
    except KeyError:
        unknown = sorted({tok for tok in tokenize(text, level) if tok not in vocab.stoi})
        raise DataError(
            f"PTB {split} split has {len(unknown)} token types missing from the train "
            f"vocabulary (e.g. {unknown[:5]}); the files are not Mikolov's PTB."
        ) from None


def load_corpus(
    root: str | os.PathLike[str] | None = None, level: str = "char", download: bool = True
) -> Corpus:
    """Loads PTB at word or character level (files verified or downloaded first).

    Args:
        root: data folder; see :func:`dnirnn.data.ptb.resolve_root`.
        level: "char" (50 symbols incl. <eos>) or "word" (10,000 incl. <eos>).
        download: fetch missing files.

    Returns:
        A :class:`Corpus` whose vocabulary comes from the train split.

    Raises:
        DataError: see :func:`dnirnn.data.ptb.ensure_ptb`; also if valid/test hold tokens
            unseen in train.
        ValueError: unknown ``level``.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    folder = ensure_ptb(root, download=download)
    texts = {split: read_split(folder, split) for split in SPLITS}
    vocab = Vocab.build(tokenize(texts["train"], level))
    streams = {split: _encode_split(vocab, texts[split], level, split) for split in SPLITS}
    return Corpus(**streams, vocab=vocab, level=level)


def batchify(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cuts a token stream into ``batch_size`` contiguous columns (pytorch/examples layout).

    The remainder that does not fill a whole row is dropped; column j is the j-th
    contiguous chunk of the stream, so each column is an independent stream that a
    recurrent state can be carried along. E.g. the stream ``a..z`` with batch_size 4::

        a b c d e f | g h i j k l | m n o p q r | s t u v w x | (y z dropped)

                  col 0  col 1  col 2  col 3
        row 0  [    a      g      m      s   ]
        row 1  [    b      h      n      t   ]
        row 2  [    c      i      o      u   ]      shape (26 // 4, 4) = (6, 4)
        row 3  [    d      j      p      v   ]
        row 4  [    e      k      q      w   ]
        row 5  [    f      l      r      x   ]

    Windows of T steps are then row slices ``out[i:i+T]`` (time-major, (T, B)).

    Args:
        data: LongTensor (N,), the token stream.
        batch_size: number of columns B.

    Returns:
        Tensor (N // B, B), contiguous, on ``data``'s device.

    Raises:
        ValueError: ``data`` is not 1-D, ``batch_size < 1`` or ``N < batch_size``.
    """
    if data.dim() != 1:
        raise ValueError(f"batchify expects a 1-D token stream, got shape {tuple(data.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if data.numel() < batch_size:
        raise ValueError(f"stream of {data.numel()} tokens is shorter than batch_size={batch_size}")
    rows = data.numel() // batch_size
    data = data.narrow(0, 0, rows * batch_size)
    return data.view(batch_size, -1).t().contiguous()
