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


def _probe():
    path = ROOT / "scripts" / "sg_capacity.py"
    spec = importlib.util.spec_from_file_location("sg_capacity", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    return probe


def _delay_run(tmp_path):
    """A 3-step copy run with a delay of 5: 4 windows of 2 steps, 3 internal boundaries."""
    from .test_training import fit

    run = tmp_path / "run"
    fit("copy_dni", run, "--trainer.max_steps=3", "--data.init_args.steps_per_epoch=3",
        "--model.hidden_size=8", "--data.init_args.delay=5", "--data.init_args.grow=delay",
        "--model.window=2")
    return run  # (the run folder: the script reads its newest version)


def test_bootstrap_reaching_the_episode_end_is_the_exact_fit(tmp_path, cli_sandbox):
    """With a horizon past the episode's end, every bootstrapped target is the true future
    gradient (nothing is bootstrapped), so the bootstrapped maps ARE the exact fit; with
    H = 1 the targets are not (the next map stands in for the rest of the episode)."""
    import torch

    probe = _probe()
    module, task = probe.load(_delay_run(tmp_path))
    batches = [probe.boundaries(module, task, i) for i in range(3)]
    K = len(batches[0][1])
    assert K >= 4, K
    exact = {k: probe.ridge_fit(torch.cat([probe.lin(rows[k - 1][2]) for rows, _ in batches]),
                                torch.cat([rows[k - 1][3] for rows, _ in batches]), 0.1)
             for k in range(1, K)}
    far = probe.bootstrap_maps(module, batches, K, 0.1)
    for k in range(1, K):
        torch.testing.assert_close(far[k], exact[k], rtol=1e-5, atol=1e-7)
    near = probe.bootstrap_maps(module, batches, 1, 0.1)
    torch.testing.assert_close(near[K - 1], exact[K - 1], rtol=1e-5, atol=1e-7)  # (the last)
    assert not torch.allclose(near[1], exact[1], rtol=1e-3, atol=1e-6)


def test_by_distance_with_the_same_checkpoint_to_fit_is_the_plain_table(
        tmp_path, cli_sandbox, monkeypatch, capsys):
    """``--by distance`` prints a row per fit and the run's own synthesizer, a column per
    distance group, cosines in [-1, 1]; ``--fit-checkpoint`` naming the evaluated checkpoint
    changes no number."""
    probe = _probe()
    run = _delay_run(tmp_path)
    common = [str(run), "--train", "3", "--test", "2", "--ridges", "0.1", "--by",
              "distance", "--bootstrap", "2", "--few", "1"]

    def table(*extra):
        monkeypatch.setattr(sys, "argv", ["sg_capacity.py", *common, *extra])
        probe.main()
        return [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]

    plain = table()
    assert plain[0].startswith("| synthesizer | cos, 0 back | cos, 1-")
    names = [line.split(" | ")[0][2:] for line in plain[1:]]
    assert names == ["exact, 96 pairs, ridge 0.1", "bootstrap 2, 96 pairs, ridge 0.1",
                     "exact, 32 pairs, ridge 0.1", "bootstrap 2, 32 pairs, ridge 0.1",
                     "the run's synthesizer"]
    for line in plain[1:]:
        cosines = [float(v) for v in line.strip("| ").split(" | ")[1:]]
        assert cosines and all(-1 <= c <= 1 for c in cosines), line
    assert table("--fit-checkpoint", "last.ckpt") == plain
