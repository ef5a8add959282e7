"""A minimal token <-> id table (no torchtext)."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from typing import Any

import torch


class Vocab:
    """Bijection between string tokens and integer ids.

    Ordering is deterministic: the ``specials`` first (in the order given), then every other
    token in order of first appearance in the building stream. The same stream therefore
    always gives the same ids, independent of hash seeds or dict ordering quirks.

    Attributes:
        itos: id -> token, a list.
        stoi: token -> id, a dict (the inverse of ``itos``).
    """

    def __init__(self, itos: Sequence[str]) -> None:
        self.itos: list[str] = list(itos)
        self.stoi: dict[str, int] = {tok: i for i, tok in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("Vocab tokens must be unique")

    @classmethod
    def build(cls, tokens: Iterable[str], specials: Sequence[str] = ()) -> Vocab:
        """Builds a vocabulary: ``specials`` first, then tokens by first appearance."""
        ordered = dict.fromkeys(specials)
        ordered.update(dict.fromkeys(tokens))
        return cls(list(ordered))

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)})"

    def encode(self, tokens: Iterable[str]) -> torch.Tensor:
        """Maps tokens to ids.

        Args:
            tokens: N tokens, each of which must be in the vocabulary (KeyError otherwise).

        Returns:
            LongTensor of shape (N,).
        """
        ids = array("q", map(self.stoi.__getitem__, tokens))  # (no list of int objects)
        if not ids:
            return torch.zeros(0, dtype=torch.long)
        return torch.frombuffer(ids, dtype=torch.long)  # (shares the array's memory)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> list[str]:
        """Maps ids (any iterable of ints, or a 1-D tensor) back to tokens."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        return [self.itos[int(i)] for i in ids]

    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state for checkpoints: ``{"itos": [...]}``."""
        return {"itos": list(self.itos)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Vocab:
        """Inverse of :meth:`state_dict`."""
        return cls(state["itos"])
