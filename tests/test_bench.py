"""Smoke test of scripts/bench.py: every variant runs and the JSON has every key (not timed)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPT.parent))  # (its sibling modules: bench_variants, flops)
    spec = importlib.util.spec_from_file_location("dnirnn_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_json_has_every_variant_and_ratio(bench):
    cfg = bench.BenchConfig(vocab=11, hidden=8, batch=4, windows=(2,), span=2, steps=4,
                            warmup=2, reps=1)
    res = json.loads(json.dumps(bench.measure(cfg), allow_nan=False))
    assert set(res["results"]) == {"2"}
    for r in res["results"].values():
        assert set(r["tokens_per_s"]) == set(bench.VARIANTS)
        assert all(_positive(v) for v in r["tokens_per_s"].values())
        for key in ("dni_over_tbptt", "dni_aux_over_tbptt", "dni_linear_over_tbptt",
                    "dni_rls_over_tbptt", "dni_rls_h4_over_tbptt", "dni_rls_h4_block_over_tbptt",
                    "dni_rls_lambda_over_tbptt",
                    "tbptt_over_bare", "bare_over_floor"):
            assert _positive(r["ratios"][key]), key
        assert set(r["ratios"]) == set(bench.RATIOS)
        assert set(r["peak_memory_bytes"]) == set(bench.VARIANTS)
        assert all(v >= 0 for v in r["peak_memory_bytes"].values())
    assert "memory_method" in res and res["config"]["tokens_per_variant_per_rep"] == 4 * 4
    assert bench.format_table(res)


def test_bench_cli_flags(bench):
    cfg, args = bench.config_from_args(["--quick", "--json", "--preset", "paper", "--device",
                                        "cpu"])
    assert args.json and cfg.hidden == 1024 and cfg.batch == 256 and cfg.vocab == 50
    assert cfg.windows == (2, 8, 32) and cfg.reps == 3
    with pytest.raises(ValueError):
        bench.BenchConfig(windows=(3,), span=64)
    cfg, _ = bench.config_from_args(["--quick", "--clock", "cpu"])
    assert cfg.clock == "cpu"
    with pytest.raises(ValueError, match="clock"):
        bench.BenchConfig(device="cuda", clock="cpu")


def test_flop_bound(bench):
    """The ceiling is a fraction that grows with T, and the linear synthesizer's is higher."""
    cfg = bench.BenchConfig()
    bounds = [bench.flop_bound(cfg, t) for t in (2, 8, 32)]
    for b in bounds:
        assert 0 < b["dni"] < b["dni_linear"] < 1
    assert bounds[0]["dni"] < bounds[1]["dni"] < bounds[2]["dni"]
    # hidden 128, vocab 50, synthesizer width 256, T = 8: 3.3M core vs 459k synthesizer MACs
    assert bounds[1]["dni"] == pytest.approx(3_299_328 / (3_299_328 + 458_752))
    # rls: two forwards 2*256*257, float64 statistics 2*(257^2 + 257*256), and the solve
    # 2*(257^3/3 + 2*257^2*256) once per step of 32 sequences x 8 windows
    n, S = 257, 256
    rls = 2 * S * n + 2 * (n * n + n * S) + 2 * (n**3 / 3 + 2 * n * n * S) / (32 * 8)
    assert bounds[1]["dni_rls"] == pytest.approx(3_299_328 / (3_299_328 + rls))
    assert all(0 < b["dni_rls"] < 1 for b in bounds)


def test_profile_prints_an_operator_table(bench):
    cfg = bench.BenchConfig(vocab=11, hidden=8, batch=4, windows=(2,), span=2, steps=4,
                            warmup=2, reps=1)
    table = bench.profile(cfg, "engine_dni")
    assert "== engine_dni, T=2 ==" in table and "Self CPU time total" in table
    assert "aten::" in table
