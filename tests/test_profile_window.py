"""scripts/profile_window.py: the parts of a step add up to the step, each method shows the
parts it runs and no others, and the engine is left unwrapped."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prof():
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("profile_window",
                                                  ROOT / "scripts" / "profile_window.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("variant, runs, idle", [
    ("tbptt", {"forward+backward", "optimizer"},
     {"predict", "targets chain", "deeper backward", "observe"}),
    ("dni_h4", {"forward+backward", "predict", "targets chain", "observe", "solve"},
     {"deeper backward"}),
    # (the recipe's targets are made by its deeper backward: no chain, KeptWindows.shared)
    ("recipe", {"forward+backward", "predict", "deeper backward", "observe", "solve"},
     {"targets chain"}),
    ("tbptt_deep4", {"forward+backward", "deeper backward"},
     {"predict", "targets chain", "observe"}),
])
def test_the_parts_add_up_to_the_step(prof, variant, runs, idle):
    import dnirnn.dni as dni
    from dnirnn.engine import kept

    before = (dni.DNIRNN.window_backward, kept.KeptWindows._chain, dni.step)
    row = prof.measure(variant, length=6, batch=4, window=2, steps=3, warmup=1)
    ms = row["ms"]
    assert sum(ms[p] for p in prof.PARTS) == pytest.approx(ms["total"], rel=0.02, abs=0.05)
    assert all(ms[p] > 0 for p in runs), ms
    assert all(ms[p] == 0 for p in idle), ms
    assert (dni.DNIRNN.window_backward, kept.KeptWindows._chain, dni.step) == before
    assert "| " + variant + " |" in prof.table([row])
