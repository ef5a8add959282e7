"""dnirnn.malloc: freed buffers stay in the process, so a loop that allocates and frees the
same large buffer stops faulting its pages in again (measured in a fresh process each)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from dnirnn.malloc import MMAP_THRESHOLD

PROBE = textwrap.dedent("""
    import resource, sys
    import torch
    from dnirnn.malloc import keep_freed_memory
    print(keep_freed_memory())
    faults = []
    for _ in range(30):  # a 48 MB buffer: above glibc's own adaptive limit (32 MB)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buf = torch.ones(12 << 20)
        del buf
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(sum(faults[-10:]))
""")


def probe(**env: str) -> tuple[int, int]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k != "DNIRNN_MALLOC"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_buffers_are_reused_not_faulted_in_again() -> None:
    threshold, kept = probe()
    if threshold != MMAP_THRESHOLD:
        pytest.skip("this C library does not take a 256 MB mmap threshold")
    off, system = probe(DNIRNN_MALLOC="system")
    assert off == 0
    assert system >= 10 * 12_000  # every 48 MB buffer faulted in again: 12,288 pages
    assert kept < system / 10, (kept, system)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_users_malloc_settings_win() -> None:
    assert probe(MALLOC_ARENA_MAX="2")[0] == 0
