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


def test_the_flop_ceiling_counts_what_each_method_adds(prof):
    """TBPTT and full BPTT (one window) set the scale; K - 1 parameter VJPs a window cost
    TBPTT(T, K·T) exactly ``2 lstm / (3 (lstm + readout))`` each; the hybrid adds state-only
    products and the synthesizer; a slower least-squares solve raises the ceiling; the
    oracle is not modelled."""
    H, I, V, T, w = 8, 3, 2, 2, 6
    lengths = [T] * w
    one = {"hidden_size": H, "num_layers": 1, "window": T}
    assert prof.flop_ceiling({**one, "boundary": "tbptt"}, lengths, I, V, 4) == 1.0
    assert prof.flop_ceiling({**one, "boundary": "tbptt"}, [T * w], I, V, 4) == 1.0
    lstm, readout = T * 4 * H * (I + H), T * H * V
    walked = sum(min(3, j) for j in range(w))  # kept windows walked over the episode
    deep = prof.flop_ceiling({**one, "boundary": "tbptt", "depth": 4}, lengths, I, V, 4)
    assert deep == pytest.approx(3 * w * (lstm + readout)
                                 / (3 * w * (lstm + readout) + walked * 2 * lstm))
    ls = {"fit": "rls", "kind": "linear", "positions": 32}
    hybrid = {**one, "boundary": "dni", "depth": 4,
              "targets": {"lam": 1.0, "horizon": 4}, "synthesizer": ls}
    slow = {**hybrid, "synthesizer": {**ls, "rls_solve_every": 10}}
    assert prof.flop_ceiling(hybrid, lengths, I, V, 4) < deep
    assert prof.flop_ceiling(hybrid, lengths, I, V, 4) < prof.flop_ceiling(slow, lengths, I,
                                                                           V, 4) < deep
    assert prof.flop_ceiling({**one, "boundary": "oracle"}, lengths, I, V, 4) is None
