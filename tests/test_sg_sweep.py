"""scripts/synthetic_gradients.py (the issue-11 comparison) and the paper overlay, without
training: every cell names every synthesizer option, and the overlay is the paper's."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
    "synthetic_gradients", ROOT / "scripts" / "synthetic_gradients.py")
sweep = importlib.util.module_from_spec(spec)
sys.modules["synthetic_gradients"] = sweep  # (dataclasses look their module up there)
spec.loader.exec_module(sweep)


def model_args(cmd: list[str]) -> dict[str, str]:
    return dict(a[len("--model."):].split("=", 1) for a in cmd if a.startswith("--model."))


def test_cells_spell_out_every_synthesizer_option(tmp_path):
    """So a later change of the recipes' defaults cannot change what a cell measures."""
    for variant, extra in sweep.VARIANTS.items():
        cmd = sweep.Cell("repeat_copy", 3, 1, variant, 100, tmp_path).command()
        args = model_args(cmd)
        assert args["window"] == "3" and "--seed_everything=1" in cmd
        assert "--data.init_args.seed=1" in cmd and "--trainer.max_steps=100" in cmd
        if variant == "tbptt":
            assert "recipes/repeat_copy_tbptt.yaml" in cmd
        elif variant == "oracle":
            assert args["boundary"] == "oracle"
        else:
            assert set(sweep.PAPER) <= set(args)
            for k, v in {**sweep.PAPER, **extra}.items():
                assert args[k] == str(v)


def test_paper_overlay_is_the_paper_cell():
    overlay = yaml.safe_load((ROOT / "recipes" / "overlays" / "dni_paper.yaml").read_text())
    paper = {k: v for k, v in sweep.PAPER.items()
             if k not in ("synthesizer_hidden", "synthesizer_layers", "synthesizer_clip")}
    as_cli = {k: "null" if v is None else str(v) for k, v in overlay["model"].items()}
    assert as_cli == {k: str(v) for k, v in paper.items()}


def test_report_reads_finished_cells(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    from sg_report import level_table, load

    root = tmp_path / "repeat_copy_T2_s0_best"
    root.mkdir()
    (root / "done.json").write_text('{"cell": "x", "cmd": "c", "seconds": 1, "level": 9,'
                                    ' "levels": [], "cos_input": 0.1, "cos_answer": 0.3}')
    (recs,) = load(tmp_path)
    assert (recs["task"], recs["T"], recs["seed"], recs["variant"]) == (
        "repeat_copy", 2, 0, "best")
    assert "**9** (9)" in "\n".join(level_table([recs]))


def test_copy_recipes_default_to_the_measured_best_synthesizer():
    best = {**sweep.PAPER, **sweep.VARIANTS["best"]}
    for task in ("copy", "repeat_copy"):
        model = yaml.safe_load((ROOT / "recipes" / f"{task}_dni.yaml").read_text())["model"]
        as_cli = {k: "null" if v is None else str(v) for k, v in model.items()}
        for k, v in best.items():
            if k not in ("synthesizer_hidden", "synthesizer_lr", "synthesizer_clip",
                         "synthesizer_layers"):  # (unused by the least-squares fit)
                assert as_cli.get(k, "<default>") == str(v), (task, k)


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
