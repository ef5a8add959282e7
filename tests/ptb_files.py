"""Where the PTB tests find the Penn Treebank files: the toolkit's own lookup, then CI's.

``dnirnn.data.ptb.resolve_root`` (``DNIRNN_DATA``, else the per-user cache
``$XDG_CACHE_HOME/dnirnn/ptb``, where any PTB recipe's first run downloads them), then the
per-user cache even where ``DNIRNN_DATA`` names a folder without them, then
``../shared/data/ptb`` beside the checkout. Only folders holding all three files count; the
tests never download."""

from __future__ import annotations

from pathlib import Path

from dnirnn.data import ptb

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ptb"


def find_ptb() -> Path | None:
    """The first folder holding ``ptb.{train,valid,test}.txt``, or None."""
    for root in (ptb.resolve_root(None), ptb.default_root(), SHARED):
        if all((root / name).is_file() for name in ptb.FILENAMES.values()):
            return root
    return None


PTB_ROOT = find_ptb()
# (a path for the run arguments; the PTB tests skip where PTB_ROOT is None)
PTB = str(PTB_ROOT or "no-ptb-files")
WHERE = ("no PTB files in DNIRNN_DATA, the per-user cache (~/.cache/dnirnn/ptb) or "
         "../shared/data/ptb")
