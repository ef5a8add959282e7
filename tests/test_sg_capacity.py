"""scripts/sg_capacity.py (what a synthesizer could reach on a frozen core) on a 3-step run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_capacity_probe_runs_on_a_finished_run(tmp_path, cli_sandbox, monkeypatch, capsys):
    """scripts/sg_capacity.py loads a copy run's last checkpoint and data settings and
    prints one row per fit and one for the run's own synthesizer, with finite cosines."""
    from .test_training import fit

    run = tmp_path / "run"
    fit("copy_dni", run, "--trainer.max_steps=3", "--data.init_args.steps_per_epoch=3",
        "--model.hidden_size=8")
    path = ROOT / "scripts" / "sg_capacity.py"
    spec = importlib.util.spec_from_file_location("sg_capacity", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    monkeypatch.setattr(sys, "argv", ["sg_capacity.py", str(run), "--train", "2", "--test", "1",
                                      "--features", "8", "--ridges", "0.1"])
    probe.main()
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    names = [line.split(" | ")[0][2:] for line in table[1:]]
    assert names == ["linear, ridge 0.1", "features 8, ridge 0.1", "the run's synthesizer"]
    for line in table[1:]:  # "–" where the level has no boundary in that phase
        cosines = [float(v) for v in line.strip("| ").split(" | ")[1:] if v != "–"]
        assert cosines and all(-1 <= c <= 1 for c in cosines), line
