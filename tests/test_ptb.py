"""Penn Treebank: loader statistics against the data README, the char transform, batchify,
checksum verification and the (offline, file://) download path. No network access."""

import hashlib
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from dnirnn.data import ptb, ptb_corpus
from dnirnn.data.ptb import DataError, ensure_ptb
from dnirnn.data.ptb_corpus import batchify, load_corpus, word2char
from dnirnn.data.vocab import Vocab

from . import ptb_files

WORD_EOS = {"train": 929_589, "valid": 73_760, "test": 82_430}
CHAR_EOS = {"train": 5_017_482, "valid": 393_042, "test": 442_423}
UNDERSCORES = {"train": 845_453, "valid": 67_020, "test": 74_908}
LINES = {"train": 42_068, "valid": 3_370, "test": 3_761}
CHAR_SHA256 = {
    "train": "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9",
    "valid": "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8",
    "test": "1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe",
}


DATA_ROOT = ptb_files.PTB_ROOT  # the toolkit's lookup, then ../shared/data/ptb
needs_data = pytest.mark.skipif(
    DATA_ROOT is None,
    reason=ptb_files.WHERE,
)


@pytest.fixture(scope="module")
def char_corpus():
    return load_corpus(DATA_ROOT, level="char", download=False)


@pytest.fixture(scope="module")
def word_corpus():
    return load_corpus(DATA_ROOT, level="word", download=False)


def _copy_files(dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ptb.FILENAMES.values():
        shutil.copyfile(DATA_ROOT / name, dst / name)
    return dst


def _offline(*args, **kwargs):
    raise urllib.error.URLError("network is unreachable (test)")


def _ptb_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------------------
# Statistics from the loader (README figures)
# --------------------------------------------------------------------------------------


@needs_data
def test_word_level_statistics(word_corpus):
    assert word_corpus.level == "word"
    assert len(word_corpus.vocab) == 10_000
    eos = word_corpus.vocab.stoi["<eos>"]
    for split, n in WORD_EOS.items():
        stream = word_corpus.split(split)
        assert stream.dtype == torch.long and stream.shape == (n,)
        assert int((stream == eos).sum()) == LINES[split]
    assert stream[-1] == eos
    unk = word_corpus.vocab.stoi["<unk>"]
    assert [int((word_corpus.split(s) == unk).sum()) for s in ptb.SPLITS] == [
        45_020,
        3_485,
        4_794,
    ]
    assert "N" in word_corpus.vocab


@needs_data
def test_char_level_statistics(char_corpus):
    vocab = char_corpus.vocab
    assert char_corpus.level == "char"
    assert len(vocab) == 50
    symbols = set(vocab.itos) - {"<eos>"}
    expected = set("#$&'*-./0123456789<>N\\_") | set("abcdefghijklmnopqrstuvwxyz")
    assert symbols == expected
    for split, n in CHAR_EOS.items():
        stream = char_corpus.split(split)
        assert stream.shape == (n,)
        assert int((stream == vocab.stoi["_"]).sum()) == UNDERSCORES[split]
        assert int((stream == vocab.stoi["<eos>"]).sum()) == LINES[split]
    # the first line of ptb.char.train.txt starts "a e r _ b a n k n o t e _"
    assert "".join(vocab.decode(char_corpus.train[:13])) == "aer_banknote_"


@needs_data
def test_stream_stats_match_readme():
    for split in ptb.SPLITS:
        stats = ptb_corpus.stream_stats(ptb.read_split(DATA_ROOT, split))
        assert stats["lines"] == LINES[split]
        assert stats["words_eos"] == WORD_EOS[split]
        assert stats["chars_eos"] == CHAR_EOS[split]
        assert stats["underscores"] == UNDERSCORES[split]


@needs_data
@pytest.mark.parametrize("split", ptb.SPLITS)
def test_word2char_reproduces_mikolov_char_files(split):
    text = ptb.read_split(DATA_ROOT, split)
    chars = word2char(text).encode("ascii")
    assert hashlib.sha256(chars).hexdigest() == CHAR_SHA256[split]


@needs_data
def test_char_tokens_equal_char_file_symbols():
    # The char-level tokens are the symbols of ptb.char.*.txt with "\n" read as <eos>.
    text = ptb.read_split(DATA_ROOT, "valid")
    symbols = ["<eos>" if s == "\n" else s for s in word2char(text).split(" ")[:-1]]
    assert symbols == list(ptb_corpus.char_tokens(text))


def test_tokenisation_small():
    text = " the cat <unk> \n a N b \n"
    assert list(ptb_corpus.word_tokens(text)) == ["the", "cat", "<unk>", "<eos>", "a", "N", "b",
                                                  "<eos>"]
    assert list(ptb_corpus.char_tokens(text)) == list("the_cat_<unk>") + ["<eos>"] + list(
        "a_N_b") + ["<eos>"]
    assert word2char(text) == "t h e _ c a t _ < u n k > \n a _ N _ b \n "
    with pytest.raises(ValueError, match="level"):
        list(ptb_corpus.tokenize(text, "byte"))


# --------------------------------------------------------------------------------------
# batchify and Vocab
# --------------------------------------------------------------------------------------


def test_batchify_columns_are_contiguous_chunks():
    data = torch.arange(26)
    out = batchify(data, 4)
    assert out.shape == (6, 4) and out.is_contiguous()
    for j in range(4):
        assert torch.equal(out[:, j], torch.arange(6 * j, 6 * j + 6))
    assert torch.equal(out[0], torch.tensor([0, 6, 12, 18]))
    # same as pytorch/examples word_language_model
    nbatch = data.size(0) // 4
    reference = data.narrow(0, 0, nbatch * 4).view(4, -1).t().contiguous()
    assert torch.equal(out, reference)
    assert torch.equal(batchify(data, 1), data[:, None])
    assert batchify(data, 26).shape == (1, 26)


def test_batchify_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        batchify(torch.arange(10), 0)
    with pytest.raises(ValueError, match="shorter than batch_size"):
        batchify(torch.arange(3), 4)
    with pytest.raises(ValueError, match="1-D"):
        batchify(torch.zeros(2, 3, dtype=torch.long), 2)


def test_vocab_roundtrip():
    vocab = Vocab.build(["b", "a", "b", "c"], specials=["<pad>"])
    assert vocab.itos == ["<pad>", "b", "a", "c"]
    assert vocab.stoi == {"<pad>": 0, "b": 1, "a": 2, "c": 3}
    ids = vocab.encode(["a", "c", "b"])
    assert ids.dtype == torch.long and ids.tolist() == [2, 3, 1]
    assert vocab.decode(ids) == ["a", "c", "b"]
    clone = Vocab.from_state_dict(vocab.state_dict())
    assert clone == vocab and len(clone) == 4
    assert isinstance(vocab.state_dict()["itos"], list)
    assert vocab.encode(iter(["c", "c"])).tolist() == [3, 3]  # (a stream: nothing is listed)
    assert vocab.encode([]).shape == (0,)
    with pytest.raises(KeyError):
        vocab.encode(["a", "zebra"])


def test_a_split_with_words_unseen_in_train_names_them():
    vocab = Vocab.build(ptb_corpus.tokenize("a b\n", "word"))
    assert ptb_corpus._encode_split(vocab, "b a\n", "word", "valid").tolist() == [1, 0, 2]
    with pytest.raises(DataError, match=r"valid split has 2 token types missing .*'c', 'd'"):
        ptb_corpus._encode_split(vocab, "a c d c\n", "word", "valid")


# --------------------------------------------------------------------------------------
# Root resolution, verification, download
# --------------------------------------------------------------------------------------


def test_resolve_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("DNIRNN_DATA", str(tmp_path / "env"))
    assert ptb.resolve_root(tmp_path / "arg") == tmp_path / "arg"
    assert ptb.resolve_root(None) == tmp_path / "env"
    monkeypatch.delenv("DNIRNN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ptb.resolve_root(None) == tmp_path / "xdg" / "dnirnn" / "ptb"


@needs_data
def test_verified_files_pass(tmp_path):
    root = _copy_files(tmp_path / "ok")
    assert ensure_ptb(root, download=False) == root


@needs_data
def test_checksum_mismatch_raises(monkeypatch, tmp_path):
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    root = _copy_files(tmp_path / "bad")
    path = root / "ptb.valid.txt"
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(DataError) as info:
        ensure_ptb(root, download=True)
    message = str(info.value)
    assert str(path) in message
    assert ptb.SHA256["ptb.valid.txt"] in message and actual in message
    assert "Delete" in message and "DNIRNN_DATA" in message


def test_missing_files_offline_raise_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    root = tmp_path / "empty"
    with pytest.raises(DataError) as info:
        ensure_ptb(root)
    message = str(info.value)
    assert str(root / "ptb.train.txt") in message
    assert ptb.URL_TEMPLATES[0].format(split="train") in message
    assert "DNIRNN_DATA" in message
    assert _ptb_files(root) == []  # nothing left behind


def test_missing_files_without_download_raise(tmp_path):
    with pytest.raises(DataError, match="download=False"):
        ensure_ptb(tmp_path, download=False)


def test_env_var_is_used(monkeypatch, tmp_path):
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    monkeypatch.setenv("DNIRNN_DATA", str(tmp_path / "from_env"))
    with pytest.raises(DataError, match="from_env"):
        ensure_ptb(None)


@needs_data
def test_download_from_file_url_lands_verified_files(monkeypatch, tmp_path):
    source = _copy_files(tmp_path / "source")
    monkeypatch.setattr(
        ptb,
        "URL_TEMPLATES",
        (
            (tmp_path / "nowhere").as_uri() + "/ptb.{split}.txt",  # fails: falls back
            source.as_uri() + "/ptb.{split}.txt",
        ),
    )
    root = tmp_path / "root" / "ptb"
    assert ensure_ptb(root) == root
    assert _ptb_files(root) == sorted(ptb.FILENAMES.values())
    for name in ptb.FILENAMES.values():
        assert (root / name).read_bytes() == (source / name).read_bytes()


@needs_data
def test_corrupt_download_leaves_nothing(monkeypatch, tmp_path):
    source = _copy_files(tmp_path / "source")
    with open(source / "ptb.train.txt", "ab") as f:
        f.write(b" extra \n")
    monkeypatch.setattr(ptb, "URL_TEMPLATES", (source.as_uri() + "/ptb.{split}.txt",))
    root = tmp_path / "root"
    with pytest.raises(DataError) as info:
        ensure_ptb(root)
    assert "sha256" in str(info.value) and str(root / "ptb.train.txt") in str(info.value)
    assert _ptb_files(root) == []  # no partial or corrupt file, no temp file


def test_the_ptb_tests_find_the_files_where_the_toolkit_does(tmp_path, monkeypatch):
    """DNIRNN_DATA first, then the per-user cache ($XDG_CACHE_HOME/dnirnn/ptb, where a PTB
    recipe's first run puts them), then ../shared/data/ptb (CI); a folder counts only with
    all three files."""
    def fill(folder):
        folder.mkdir(parents=True)
        for name in ptb.FILENAMES.values():
            (folder / name).write_text("")
        return folder

    monkeypatch.setattr(ptb_files, "SHARED", tmp_path / "shared")
    monkeypatch.delenv("DNIRNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ptb_files.find_ptb() is None
    cache = fill(tmp_path / "xdg" / "dnirnn" / "ptb")
    assert ptb_files.find_ptb() == cache
    monkeypatch.setenv("DNIRNN_DATA", str(tmp_path / "empty"))  # without the files: the cache
    assert ptb_files.find_ptb() == cache
    env = fill(tmp_path / "env")
    monkeypatch.setenv("DNIRNN_DATA", str(env))
    assert ptb_files.find_ptb() == env
    monkeypatch.delenv("DNIRNN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "nothing"))
    shared = fill(tmp_path / "shared")
    assert ptb_files.find_ptb() == shared
