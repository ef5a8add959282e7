"""scripts/episode_cost.py: one variant measured in-process on tiny episodes, its table, and
the level-against-memory plot from a sweep's cells.csv."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cost():
    spec = importlib.util.spec_from_file_location("episode_cost",
                                                  ROOT / "scripts" / "episode_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("variant", ["tbptt_2T", "dni_h2", "dni_paper", "dni_h1",
                                     "dni_h4_block"])
def test_a_variant_is_built_from_its_recipe_and_measured(cost, variant):
    row = cost.measure_one(variant, length=3, batch=4, window=2, steps=3, warmup=1)
    assert row["windows_per_episode"] == (2 if variant == "tbptt_2T" else 4)  # 2L + 2 = 8 steps
    assert row["peak_rss_mb"] >= row["base_rss_mb"] > 0
    assert row["ms_per_step"] > 0 and row["cpu_ms_per_step"] > 0
    assert row["model"]["depth"] == 1 or variant == "tbptt_2T"  # (the one-window update)
    if variant == "dni_h2":
        assert row["model"]["targets.horizon"] == 2 and row["model"]["synthesizer.fit"] == "rls"
    elif variant == "dni_h4_block":
        assert row["model"]["targets.chain"] == "block" and row["model"]["targets.horizon"] == 4
    elif variant == "tbptt_2T":
        assert row["model"]["window"] == 4 and row["model"]["boundary"] == "tbptt"
    else:  # the one-window target, whatever the copy recipe's horizon
        assert row["model"]["targets.lam"] is None and row["model"]["targets.horizon"] is None
    assert "tbptt_2T" in cost.table([{**row, "variant": "tbptt_2T"}])


def test_repeats_are_reported_as_medians(cost):
    reps = [{"variant": "recipe", "length": 40, "ms_per_step": ms, "cpu_ms_per_step": ms / 2,
             "peak_rss_mb": 500.0 + ms, "base_rss_mb": 400.0, "train_mb": 100.0 + ms}
            for ms in (30.0, 10.0, 20.0)]
    row = cost.median_row(reps)
    assert row["ms_per_step"] == 20.0 and row["cpu_ms_per_step"] == 10.0
    assert row["peak_rss_mb"] == 520.0 and row["repeats"] == 3
    assert row["ms_per_step_all"] == [30.0, 10.0, 20.0]
    assert cost.median_row(reps[:1]) == reps[0]


def test_level_against_memory_plot(cost, tmp_path):
    cells = tmp_path / "cells.csv"
    with open(cells, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell", "task", "T", "variant", "seed", "level"])
        for seed, (a, b) in enumerate([(1, 6), (2, 9), (1, 6)]):
            w.writerow([f"c{seed}", "copy", 2, "tbptt", seed, a])
            w.writerow([f"d{seed}", "copy", 2, "dni_h4", seed, b])
    rows = [{"variant": v, "length": 80, "window": 2, "peak_rss_mb": m}
            for v, m in (("tbptt", 400.0), ("dni_h4", 450.0))]
    (tmp_path / "cost.json").write_text(json.dumps(rows))
    out = cost.plot(cells, [tmp_path / "cost.json"], 80, tmp_path / "plot.png")
    assert out.stat().st_size > 1000
