"""Synthetic gradients that keep up with the core: the issue-11 comparison on Copy / Repeat Copy.

Cells: task x T x seed x variant, each one ``dnirnn fit`` process (OMP_NUM_THREADS=1) built
from ``recipes/<task>_dni.yaml`` (``_tbptt`` for the baseline) with EVERY synthesizer option
given explicitly (so later recipe defaults do not change a cell), the same budget in
training steps, and the per-boundary diagnostics callback (``dnirnn.diagnostics``).

Variants (``VARIANTS``): ``tbptt``; ``dni_paper`` (mlp synthesizer fitted by Adam on the
one-window bootstrapped target, beta 1: the paper); each new option added to the paper's on
its own (``+rls``, ``+positions``, ``+lambda``, ``+guard``); the combinations; ``oracle``
(the true future gradient of the rest of the episode injected at every boundary).

Metric: the largest level solved (``curriculum/max_level_solved``); the diagnostics give
cos(SG, true future gradient) per boundary position and phase (``diagnostics.jsonl``).

    python scripts/synthetic_gradients.py --tasks repeat_copy --windows 2 --seeds 0 \\
        --variants dni_paper,best --jobs 2          # run (resumable: done cells are skipped)
    python scripts/synthetic_gradients.py --report  # results/synthetic_gradients.md + plots
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIAG = "dnirnn.diagnostics.SyntheticGradientDiagnostics"

PAPER = {  # the paper's synthesizer (as recipes/*_dni.yaml shipped before issue 11)
    "synthesizer": "mlp", "synthesizer_fit": "adam", "synthesizer_hidden": 256,
    "synthesizer_layers": 1, "synthesizer_positions": 1, "synthesizer_context": "none",
    "synthesizer_lr": 1e-4, "synthesizer_clip": 10.0, "sg_scale": 1.0, "sg_lambda": "null",
    "sg_guard": "null",
}
RLS = {"synthesizer": "linear", "synthesizer_fit": "rls", "rls_forget": 0.8, "rls_ridge": 0.1}
POS = {"synthesizer_positions": 32}
LAM = {"sg_lambda": 1.0}
GUARD = {"sg_guard": 2.0}

VARIANTS: dict[str, dict | None] = {
    "tbptt": None,
    "dni_paper": {},
    "+rls": RLS,
    "+positions": POS,
    "+lambda": LAM,
    "+guard": GUARD,
    "rls+positions": {**RLS, **POS},
    "rls+positions+lambda": {**RLS, **POS, **LAM},
    "rls+positions+lambda0.5": {**RLS, **POS, "sg_lambda": 0.5},
    "best": {**RLS, **POS, **LAM, **GUARD},
    "best+phase": {**RLS, **POS, **LAM, **GUARD, "synthesizer_context": "phase"},
    # longer least-squares memory: more samples per fit, older ones (scripts/sg_capacity.py)
    "best+forget0.9": {**RLS, **POS, **LAM, **GUARD, "rls_forget": 0.9},
    "best+forget0.95": {**RLS, **POS, **LAM, **GUARD, "rls_forget": 0.95},
    "oracle": None,
}
LABELS = {"tbptt": "TBPTT", "dni_paper": "DNI (paper: Adam mlp)", "oracle": "oracle"}


@dataclass(frozen=True)
class Cell:
    task: str
    window: int
    seed: int
    variant: str
    steps: int
    runs: Path

    @property
    def name(self) -> str:
        return f"{self.task}_T{self.window}_s{self.seed}_{self.variant}"

    @property
    def root(self) -> Path:
        return self.runs / self.name

    def command(self) -> list[str]:
        recipe = "tbptt" if self.variant == "tbptt" else "dni"
        args = ["dnirnn", "fit", "--config", f"recipes/{self.task}_{recipe}.yaml",
                f"--model.window={self.window}", f"--seed_everything={self.seed}",
                f"--data.init_args.seed={self.seed}", f"--trainer.max_steps={self.steps}",
                f"--trainer.default_root_dir={self.root}", "--trainer.enable_progress_bar=false",
                "--wandb=false", f"--trainer.callbacks+={DIAG}",
                "--trainer.callbacks.every_n_steps=50", "--trainer.callbacks.windows=4"]
        if self.variant == "oracle":
            args += ["--model.boundary=oracle", "--model.oracle_windows=1000"]
        elif self.variant != "tbptt":
            args += [f"--model.{k}={v}" for k, v in {**PAPER, **VARIANTS[self.variant]}.items()]
        return args


def run_cell(cell: Cell) -> dict | None:
    """Runs one cell (skipped if done); a failed cell is reported and the sweep goes on."""
    try:
        return _run_cell(cell)
    except subprocess.CalledProcessError as err:
        print(f"FAILED {cell.name} (exit {err.returncode}): see {cell.root / 'fit.log'}",
              flush=True)
        return None


def _run_cell(cell: Cell) -> dict:
    done = cell.root / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    cell.root.mkdir(parents=True, exist_ok=True)
    cmd = cell.command()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="offline",
               WANDB_SILENT="true")
    exe = [str(Path(sys.executable).with_name(cmd[0])), *cmd[1:]]
    start = time.time()
    print(f"start {cell.name}", flush=True)
    with open(cell.root / "fit.log", "w") as out:
        subprocess.run(exe, check=True, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    record = {"cell": cell.name, "cmd": " ".join(cmd), "seconds": round(time.time() - start, 1),
              **summarise(cell.root)}
    done.write_text(json.dumps(record, indent=1) + "\n")
    print(f"done  {cell.name}: level {record['level']} ({record['seconds']} s)", flush=True)
    return record


def version(root: Path) -> Path:
    return sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))[-1]


def summarise(root: Path) -> dict:
    """Level solved and the diagnostics of the second half of training."""
    v = version(root)
    levels, last_step = [], 0
    with open(v / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("curriculum/max_level_solved"):
                levels.append((int(row["step"]), float(row["curriculum/max_level_solved"])))
            last_step = max(last_step, int(row["step"] or 0))
    rows = diag_rows(v)
    half = last_step // 2
    late = [r for r in rows if r["step"] >= half and "cos" in r]
    out = {"level": int(max((lv for _, lv in levels), default=0)), "steps": last_step,
           "levels": levels}
    for phase in ("input", "answer"):
        mine = [r["cos"] for r in late if r.get("phase") == phase]
        out[f"cos_{phase}"] = statistics.fmean(mine) if mine else None
    return out


def diag_rows(v: Path) -> list[dict]:
    path = v / "diagnostics.jsonl"
    return [json.loads(line) for line in path.open()] if path.exists() else []


def cells(args) -> list[Cell]:
    return [Cell(t, w, s, var, args.steps, Path(args.runs))
            for t in args.tasks.split(",") for w in map(int, args.windows.split(","))
            for s in map(int, args.seeds.split(",")) for var in args.variants.split(",")]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="repeat_copy,copy")
    p.add_argument("--windows", default="2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="tbptt,dni_paper,best,oracle")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--runs", default=str(ROOT / "runs" / "synthetic_gradients"))
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--report", action="store_true", help="only write the report and plots")
    p.add_argument("--out", default=str(ROOT / "results" / "synthetic_gradients.md"))
    args = p.parse_args(argv)
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    if not args.report:
        todo = cells(args)
        with ThreadPoolExecutor(args.jobs) as pool:
            for _ in pool.map(run_cell, todo):
                pass
    from sg_report import write_report  # (scripts/sg_report.py: tables and plots)

    write_report(Path(args.runs), Path(args.out))


if __name__ == "__main__":
    main()
