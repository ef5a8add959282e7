"""Kept for scripts written against the old layout: see ``dnirnn.synthesizers``."""

from dnirnn.synthesizers.network import SYNTHESIZER_KINDS, Synthesizer

__all__ = ["SYNTHESIZER_KINDS", "Synthesizer"]
