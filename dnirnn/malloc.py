"""Keep freed memory in the process instead of handing it back to the system (glibc).

A training step allocates and frees the same large buffers every step: PTB word's readout
makes ``35 x 20 x 10,000`` float logits (28 MB), their log-softmax and both gradients. By
default glibc serves blocks of that size with ``mmap`` and unmaps them on ``free``, so every
step faults the same pages in again: one epoch of ``ptb_word_wlm`` spent 51 s in the kernel
(15.7 M minor page faults) against 16 s for pytorch/examples' script. With the thresholds
raised, freed blocks stay in the heap and the next step reuses them: 150 steps went from
5.8 s to 0.7 s of system time and 2.0 M to 0.15 M faults, at the same peak memory (README,
"Performance"). The numbers a run computes do not change.

``dnirnn fit|validate|test`` call :func:`keep_freed_memory` first. It does nothing where
the C library is not glibc, or where the user set any ``MALLOC_*`` variable (the user's
settings win), or with ``DNIRNN_MALLOC=system``.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # (glibc's mallopt parameters, <malloc.h>)
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 256 << 20  # blocks below this come from the heap (glibc >= 2.26 takes it;
FALLBACK_MMAP_THRESHOLD = 32 << 20  # older ones cap it at 32 MB on 64-bit machines)
TRIM_THRESHOLD = 1 << 30  # the heap's free top goes back to the system above this


def keep_freed_memory() -> int:
    """Raises glibc's mmap and trim thresholds for this process (see the module's text).
    Returns the mmap threshold set, in bytes, or 0 where nothing was set."""
    if not sys.platform.startswith("linux") or os.environ.get("DNIRNN_MALLOC") == "system":
        return 0
    if any(k.startswith("MALLOC_") for k in os.environ):
        return 0
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl, or no glibc under that name
        return 0
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    for threshold in (MMAP_THRESHOLD, FALLBACK_MMAP_THRESHOLD):
        if mallopt(M_MMAP_THRESHOLD, threshold):
            return threshold if mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) else 0
    return 0
