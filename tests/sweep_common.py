"""The sweep tests' shared pieces: grid files, a grid of blocks and templates, a fake
``python -m dnirnn``, a two-cell grid and a fake finished run folder (tests/test_sweep.py,
tests/test_sweep_report.py, tests/test_plots.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from dnirnn.sweep.grid import load_grid
from dnirnn.sweep.runner import write_json


def grid_file(tmp_path: Path, text: str, name: str = "g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GRID = """
runs: runs
recipe: "{task}_dni"
args: {model.window: "{T}", wandb: false}
callbacks:
  dnirnn.diagnostics.SyntheticGradientDiagnostics: {every_n_steps: 100, windows: 4}
axes:
  variant:
    tbptt: {recipe: "{task}_tbptt"}
    paper: dni_paper
    rls: {overlays: [dni_paper], model.synthesizer.fit: rls, about: "least squares, a, b"}
blocks:
  - axes: {task: [copy], T: [2, 3], variant: [tbptt, paper]}
    seeds: [0, 1]
  - axes: {task: [repeat_copy], T: {4: {model.windows_per_step: 2}}, variant: [rls]}
    callbacks:
      dnirnn.diagnostics.SyntheticGradientDiagnostics: {every_n_steps: 50}
    threads: 2
    test: best
"""


class FakeDnirnn:
    """Records the commands; ``fit`` leaves what a finished run leaves (or fails)."""

    def __init__(self, fail: set[str] = frozenset(), code: int = 2):
        self.calls: list[list[str]] = []
        self.envs: list[dict] = []
        self.fail, self.code = fail, code

    def __call__(self, cmd, log, env, running):
        self.calls.append(cmd)
        self.envs.append(env)
        root = Path(next(a.split("=", 1)[1] for a in cmd
                         if a.startswith("--trainer.default_root_dir=")))
        log.write_text(log.read_text() + "some output\n" if log.exists() else "some output\n")
        if root.name in self.fail:
            with open(log, "a") as f:
                f.write("dnirnn: error: unknown option --model.nope\n")
            return self.code
        run = root / "version_0"
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        for name in ("last.ckpt", "best.ckpt"):
            (run / "checkpoints" / name).write_text("x")
        (run / "summary.json").write_text(json.dumps({"metrics": {"test/bpc": 1.5}}))
        return 0


def two_cells(tmp_path, extra: str = ""):
    g = load_grid(grid_file(tmp_path, f"""
runs: runs
recipe: copy_dni
threads: 3
axes: {{variant: {{a: {{model.window: 2}}, b: {{model.window: 3}}}}}}
{extra}
"""))
    return g.cells


def fake_cell(cell, rows: list[dict], summary: dict | None = None, diag: list[dict] = (),
              test: dict | None = None, seconds: float = 10.0) -> None:
    run = cell.root / "version_0"
    run.mkdir(parents=True)
    keys = sorted({k for r in rows for k in r})
    with open(run / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)
    (run / "summary.json").write_text(json.dumps(summary or {}))
    (run / "diagnostics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in diag))
    if test is not None:
        (cell.root / "test" / "version_0").mkdir(parents=True)
        (cell.root / "test" / "version_0" / "summary.json").write_text(
            json.dumps({"metrics": test}))
    write_json(cell.root / "done.json", {"spec": cell.spec(), "seconds": seconds,
                                         "command": f"dnirnn fit {cell.name}"})
