"""scripts/table1.py: the sweep logic (cells, commands, resume, best validation, report,
plots) on fake runs in tmp_path; no training."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("table1", ROOT / "scripts" / "table1.py")
table1 = importlib.util.module_from_spec(spec)
sys.modules["table1"] = table1
spec.loader.exec_module(table1)
sys.path.insert(0, str(ROOT / "scripts"))  # table1_report imports table1 by name
import table1_report  # noqa: E402


@pytest.fixture(autouse=True)
def in_tmp(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # anything written by accident stays in tmp


def arg(cmd: list[str], name: str) -> str:
    hits = [a.split("=", 1)[1] for a in cmd if a.startswith(f"--{name}=")]
    assert len(hits) == 1, (name, cmd)
    return hits[0]


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_cells_cover_the_paper_table(preset, tmp_path):
    cells = table1.cells(table1.PRESETS[preset], tmp_path / "runs", "/data/ptb")
    assert len(cells) == 39 and len({c.name for c in cells}) == 39
    by = {(c.task, c.window, c.mode) for c in cells}
    for mode in table1.MODES:
        assert {t for task, t, m in by if task == "copy" and m == mode} == {2, 3, 4, 5}
        assert {t for task, t, m in by if task == "repeat_copy" and m == mode} == {2, 3, 4, 5}
        assert {t for task, t, m in by if task == "ptb_char" and m == mode} == {2, 3, 4, 5, 8}
    for c in cells:
        cmd = c.fit_command()
        assert cmd[:2] == ["dnirnn", "fit"]
        assert cmd[cmd.index("--config") + 1] == f"recipes/{c.task}_{c.mode}.yaml"
        assert (ROOT / "recipes" / f"{c.task}_{c.mode}.yaml").exists()
        assert arg(cmd, "model.window") == str(c.window)
        assert arg(cmd, "trainer.default_root_dir") == str(c.root)
        assert arg(cmd, "wandb") == "false"
        assert arg(cmd, "trainer.callbacks+") == table1.DIAG
        if c.task == "ptb_char":
            assert arg(cmd, "data.init_args.root") == "/data/ptb"
            every = int(arg(cmd, "trainer.val_check_interval"))
            assert int(arg(cmd, "checkpoint_every")) == every  # a checkpoint per validation
            assert int(arg(cmd, "trainer.max_steps")) == every * c.preset.ptb_validations


def test_paper_preset_sizes_and_equal_budgets(tmp_path):
    paper = table1.cells(table1.PRESETS["paper"], tmp_path)
    hidden = {c.task: arg(c.fit_command(), "model.hidden_size") for c in paper}
    assert hidden == {"copy": "256", "repeat_copy": "256", "ptb_char": "1024"}
    for preset in ("cpu", "paper"):
        cs = table1.cells(table1.PRESETS[preset], tmp_path)
        ptb = [c for c in cs if c.task == "ptb_char"]
        tokens = [c.max_steps * c.tokens_per_step for c in ptb]
        assert max(tokens) / min(tokens) < 1.1  # equal token budgets across T (rounding only)
        copy_steps = {c.max_steps for c in cs if c.task != "ptb_char"}
        assert len(copy_steps) == 1


def fake_run(root: Path, rows: list[dict], ckpt_steps=(), version=0, summary=None) -> Path:
    v = root / f"version_{version}"
    (v / "checkpoints").mkdir(parents=True)
    keys = sorted({k for r in rows for k in r})
    lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in rows]
    (v / "metrics.csv").write_text("\n".join(lines) + "\n")
    for s in ckpt_steps:
        (v / "checkpoints" / f"epoch=0-step={s}.ckpt").write_text("x")
    (v / "checkpoints" / "last.ckpt").write_text("x")
    if summary is not None:
        (v / "summary.json").write_text(json.dumps(summary))
    return v


def test_best_validation_picks_the_lowest_bpc_and_its_checkpoint(tmp_path):
    root = tmp_path / "cell"
    fake_run(root, [{"step": 9, "train/bpc": 3.0}, {"step": 9, "val/bpc": 2.5},
                    {"step": 19, "val/bpc": 2.1}, {"step": 29, "val/bpc": 2.3}],
             ckpt_steps=(10, 20, 30))
    step, bpc, ckpt = table1.best_validation(root)
    assert (step, bpc, ckpt.name) == (20, 2.1, "epoch=0-step=20.ckpt")
    # a resumed run: a later version holds a better validation and its checkpoint
    fake_run(root, [{"step": 39, "val/bpc": 2.0}], ckpt_steps=(40,), version=1)
    assert table1.best_validation(root)[:2] == (40, 2.0)
    merged = table1.read_metrics(root)["val/bpc"]
    assert merged == {9: 2.5, 19: 2.1, 29: 2.3, 39: 2.0}


def test_run_cell_skips_done_resumes_and_records(tmp_path):
    preset = table1.PRESETS["cpu"]
    copy = table1.Cell("copy", 3, "dni", preset, tmp_path / "runs")
    calls = []

    def runner(cmd, **kw):  # a fake `dnirnn fit`: leaves what a finished run leaves
        calls.append(cmd)
        assert kw["env"]["OMP_NUM_THREADS"] == "1"
        fake_run(copy.root, [{"step": 0, "curriculum/level": 1}], version=len(calls),
                 summary={"global_step": 3000, "curriculum": {"max_level_solved": 5,
                                                               "length": 6, "repeats": 1}})

    # a half-finished cell (last.ckpt, no done.json) resumes from its last checkpoint
    fake_run(copy.root, [{"step": 0, "curriculum/level": 1}], version=0)
    rec = table1.run_cell(copy, runner=runner)
    assert rec["metric"] == 5 and rec["cmd"] == " ".join(copy.fit_command())
    assert calls[0][-1] == f"--ckpt_path={copy.root / 'version_0' / 'checkpoints' / 'last.ckpt'}"
    assert Path(calls[0][0]).name == "dnirnn"
    assert json.loads((copy.root / "done.json").read_text())["metric"] == 5
    # a done cell is skipped
    assert table1.run_cell(copy, runner=runner) == rec and len(calls) == 1


def test_run_cell_ptb_tests_the_best_checkpoint(tmp_path):
    preset = table1.PRESETS["cpu"]
    cell = table1.Cell("ptb_char", 4, "tbptt", preset, tmp_path / "runs", "/d")
    calls = []

    def runner(cmd, **kw):
        calls.append(cmd)
        if cmd[1] == "fit":
            fake_run(cell.root, [{"step": 99, "val/bpc": 2.0}, {"step": 199, "val/bpc": 1.9},
                                 {"step": 299, "val/bpc": 1.95}], ckpt_steps=(100, 200, 300))
        else:
            v = cell.root / "test" / "version_0"
            v.mkdir(parents=True)
            (v / "summary.json").write_text(json.dumps({"metrics": {"test/bpc": 1.85}}))

    rec = table1.run_cell(cell, fresh=True, runner=runner)
    assert [c[1] for c in calls] == ["fit", "test"]
    assert calls[1][-1].endswith("step=200.ckpt") and "--ckpt_path=" in calls[1][-1]
    assert arg(calls[1], "model.window") == "4"  # the test runs the same model
    assert rec["metric"] == 1.85 and rec["best_step"] == 200 and rec["best_val_bpc"] == 1.9
    assert rec["best_tokens"] == 200 * cell.tokens_per_step


def test_report_and_plots_from_fake_runs(tmp_path):
    preset = table1.PRESETS["cpu"]
    cells = table1.cells(preset, tmp_path / "runs")
    results = {}
    for c in cells:
        if c.task == "ptb_char":
            if c.window == 8:
                continue  # a missing cell
            rows = [{"step": 49, "val/bpc": 2.0}, {"step": 99, "val/bpc": 1.8}]
            value = {"tbptt": 1.8, "dni": 1.7, "dni_aux": 1.75}[c.mode]
        else:
            rows = [{"step": 0, "curriculum/level": 1}, {"step": 500, "curriculum/level": 3}]
            value = {"tbptt": 2, "dni": 4, "dni_aux": 4}[c.mode]
        if c.mode != "tbptt":
            rows += [{"step": 0, "diag/sg_true_cos": 0.0}, {"step": 100, "diag/sg_true_cos": 0.4}]
            if c.task == "copy":  # the second half of training: averaged in the report
                rows += [{"step": s, "diag/sg_true_cos": v, "diag/sg_true_norm_ratio": 0.8,
                          "diag/true_grad_norm": 0.1} for s, v in ((2000, 0.4), (2900, 0.6))]
        fake_run(c.root, rows)
        results[c.name] = {"metric": value, "seconds": 10.0, "cmd": "dnirnn fit X",
                           "best_val_bpc": 1.8, "best_step": 100, "best_tokens": 1000,
                           "test_cmd": "dnirnn test Y"}
        (c.root / "done.json").write_text(json.dumps(results[c.name]))
    out = tmp_path / "results" / "table1_cpu.md"
    out.parent.mkdir()
    notes = (table1_report.NOTES_START, table1_report.NOTES_END)
    out.write_text(f"old\n{notes[0]}\nhand-written analysis\n{notes[1]}\n")
    loaded = table1.load_results(cells)
    assert loaded == results
    plots = table1_report.make_plots(cells, out.with_suffix(""))
    assert {p.name for p in plots} == {"copy_curves.png", "repeat_copy_curves.png",
                                      "ptb_char_curves.png", "sg_true_cosine.png"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in plots)
    table1_report.write_report(preset, cells, loaded, out, "python scripts/table1.py --preset cpu",
                        plots)
    text = out.read_text()
    assert "hand-written analysis" in text and "old" not in text.splitlines()[0]
    assert "| copy | ours | 2, 2, 2, 2, – | 4, 4, 4, 4, – | 4, 4, 4, 4, – |" in text
    assert "| copy | paper | 7, 8, 10, 8, – | 16, 14, 18, 18, – | 17, 14, 18, 18, – |" in text
    assert "| ptb_char | ours | 1.800, 1.800, 1.800, 1.800, – |" in text
    assert "**copy**: DNI beats TBPTT at T = 2, 3, 4, 5 (4 of 4" in text
    assert "**ptb_char**: DNI beats TBPTT at T = 2, 3, 4, 5 (4 of 4" in text
    assert "DNI+Aux beats DNI at T = none (0 of 4)" in text
    assert "Missing cells (3)" in text and "ptb_char_T8_dni_aux" in text
    assert "![sg_true_cosine](table1_cpu/sg_true_cosine.png)" in text
    assert "`dnirnn fit X` then `dnirnn test Y`" in text
    assert "| copy | 2 | dni | 0.500 | 0.800 | 1.00e-01 |" in text
    assert "| repeat_copy | 2 | dni |" not in text  # no measurement in its second half


def test_dry_run_prints_one_command_per_cell(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "table1.py"), "--preset",
                          "paper", "--dry-run", "--runs", str(tmp_path / "r")],
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 39 and all(line.startswith("dnirnn fit --config recipes/")
                                    for line in lines)
    assert not (tmp_path / "r").exists()
