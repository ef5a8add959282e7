"""Reproduces Table 1 of the DNI paper (Jaderberg et al. 2016): task x T x {tbptt, dni, dni_aux}.

Cells: copy and repeat_copy at T in {2, 3, 4, 5}, ptb_char at T in {2, 3, 4, 5, 8}, each with
the three boundaries, built from the recipes (recipes/<task>_<mode>.yaml) plus the preset's
overrides. One ``dnirnn fit`` process per cell (``--jobs N`` in parallel, OMP_NUM_THREADS=1
each), with the synthetic-gradient diagnostics callback (dnirnn/diagnostics.py). Resumable: a
cell with ``done.json`` is skipped; a cell with a ``last.ckpt`` but no ``done.json`` resumes
from it (``--fresh`` restarts such cells instead).

Metrics, as the paper: copy / repeat copy: the largest level solved (answer length L*R);
PTB: test BPC at the best validation BPC (periodic validation, a checkpoint at each validation
step; the best one is tested with ``dnirnn test --ckpt_path``).

Writes ``results/table1_<preset>.md`` (our numbers beside the paper's, every cell's command
and wall time) and PNG plots in ``results/table1_<preset>/`` (``scripts/table1_report.py``).
A section of the results file between ``<!-- notes -->`` and ``<!-- /notes -->`` is written by
hand and kept when the file is regenerated.

    python scripts/table1.py --preset cpu --jobs 2             # run (or resume) and report
    python scripts/table1.py --preset cpu --report-only        # table + plots from what ran
    python scripts/table1.py --preset paper --dry-run          # print the commands
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("tbptt", "dni", "dni_aux")
TASKS = ("copy", "repeat_copy", "ptb_char")
WINDOWS = {"copy": (2, 3, 4, 5), "repeat_copy": (2, 3, 4, 5), "ptb_char": (2, 3, 4, 5, 8)}
DIAG = "dnirnn.diagnostics.SyntheticGradientDiagnostics"



@dataclass(frozen=True)
class Preset:
    """Sizes and budgets of a sweep. Budgets are in training steps (copy) and tokens (PTB),
    so contention on the machine changes wall time only, never the results."""

    name: str
    copy_steps: int  # training steps (batches of 32 episodes) per copy / repeat-copy cell
    copy_hidden: int
    ptb_tokens: int  # training tokens per PTB cell (equal across T and modes)
    ptb_hidden: int
    ptb_embed: int | None
    ptb_batch: int
    ptb_chunk: int  # ~steps of data per training step (T * windows_per_step)
    ptb_validations: int  # validations (and checkpoints) per PTB cell
    diag_every_copy: int
    diag_every_ptb: int
    copy_extra: tuple[str, ...] = ()
    ptb_extra: tuple[str, ...] = ()


PRESETS = {
    # 2-core CPU, about an hour with --jobs 2 (see results/table1_cpu.md for measured times).
    "cpu": Preset(
        name="cpu", copy_steps=3000, copy_hidden=128,
        ptb_tokens=1_024_000, ptb_hidden=128, ptb_embed=64, ptb_batch=32, ptb_chunk=40,
        ptb_validations=8, diag_every_copy=100, diag_every_ptb=50,
    ),
    # A GPU: single-layer LSTMs of 1024 (PTB) and 256 (copy) units. The paper's exact sizes
    # and budgets were not at hand; these are our choice at paper scale.
    "paper": Preset(
        name="paper", copy_steps=100_000, copy_hidden=256,
        ptb_tokens=20 * 5_000_000, ptb_hidden=1024, ptb_embed=None, ptb_batch=256,
        ptb_chunk=40, ptb_validations=40, diag_every_copy=1000, diag_every_ptb=500,
        copy_extra=("--data.init_args.steps_per_epoch=1000",),
    ),
}


@dataclass(frozen=True)
class Cell:
    task: str
    window: int
    mode: str
    preset: Preset
    runs: Path
    data_root: str | None = None

    @property
    def name(self) -> str:
        return f"{self.task}_T{self.window}_{self.mode}"

    @property
    def root(self) -> Path:
        return self.runs / self.name

    @property
    def episodic(self) -> bool:
        return self.task != "ptb_char"

    @property
    def windows_per_step(self) -> int:
        return max(1, round(self.preset.ptb_chunk / self.window))

    @property
    def tokens_per_step(self) -> int:
        return self.preset.ptb_batch * self.window * self.windows_per_step

    @property
    def max_steps(self) -> int:
        if self.episodic:
            return self.preset.copy_steps
        n = self.preset.ptb_validations
        per_val = max(1, round(self.preset.ptb_tokens / self.tokens_per_step / n))
        return per_val * n

    @property
    def val_every(self) -> int:
        return self.max_steps // self.preset.ptb_validations

    def model_args(self) -> list[str]:
        """Everything that defines the model and data (shared by fit and test)."""
        p = self.preset
        args = ["--config", f"recipes/{self.task}_{self.mode}.yaml",
                f"--model.window={self.window}"]
        if self.episodic:
            args += [f"--model.hidden_size={p.copy_hidden}", *p.copy_extra]
        else:
            args += [f"--model.hidden_size={p.ptb_hidden}",
                     f"--model.windows_per_step={self.windows_per_step}",
                     f"--data.init_args.batch_size={p.ptb_batch}", *p.ptb_extra]
            if p.ptb_embed is not None:
                args.append(f"--model.embed_size={p.ptb_embed}")
            if self.data_root:
                args.append(f"--data.init_args.root={self.data_root}")
        return args

    def fit_command(self) -> list[str]:
        p = self.preset
        args = ["dnirnn", "fit", *self.model_args(), f"--trainer.max_steps={self.max_steps}",
                f"--trainer.default_root_dir={self.root}",
                "--trainer.enable_progress_bar=false", "--wandb=false",
                f"--trainer.callbacks+={DIAG}"]
        every = p.diag_every_copy if self.episodic else p.diag_every_ptb
        args += [f"--trainer.callbacks.every_n_steps={every}", "--trainer.callbacks.windows=4"]
        if not self.episodic:
            args += [f"--trainer.val_check_interval={self.val_every}",
                     f"--checkpoint_every={self.val_every}", "--trainer.max_epochs=-1",
                     "--trainer.check_val_every_n_epoch=null",
                     "--trainer.log_every_n_steps=10"]
        return args

    def test_command(self, ckpt: Path) -> list[str]:
        return ["dnirnn", "test", *self.model_args(),
                f"--trainer.default_root_dir={self.root / 'test'}",
                "--trainer.enable_progress_bar=false", "--wandb=false", f"--ckpt_path={ckpt}"]


def cells(preset: Preset, runs: Path, data_root: str | None = None,
          tasks: tuple[str, ...] = TASKS) -> list[Cell]:
    return [Cell(task, t, mode, preset, runs, data_root)
            for task in tasks for t in WINDOWS[task] for mode in MODES]


# ---- reading runs -------------------------------------------------------------------------

def versions(root: Path) -> list[Path]:
    return sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


def read_metrics(root: Path) -> dict[str, dict[int, float]]:
    """``{metric: {step: value}}`` over all version folders of a run (a resumed run writes a
    new version; later versions win where steps overlap)."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for v in versions(root):
        path = v / "metrics.csv"
        if not path.exists():
            continue
        with open(path) as f:
            for row in csv.DictReader(f):
                step = int(row["step"])
                for k, val in row.items():
                    if k in ("step", "epoch") or val in ("", None):
                        continue
                    out[k][step] = float(val)
    return dict(out)


def last_checkpoint(root: Path) -> Path | None:
    for v in reversed(versions(root)):
        ckpt = v / "checkpoints" / "last.ckpt"
        if ckpt.exists():
            return ckpt
    return None


def checkpoint_step(path: Path) -> int | None:
    m = re.search(r"step=(\d+)", path.name)
    return int(m.group(1)) if m else None


def best_validation(root: Path) -> tuple[int, float, Path]:
    """The lowest ``val/bpc`` and the checkpoint of its step: ``(steps done, bpc, ckpt)``.

    The validation row of metrics.csv carries the step index of the last training step
    (``trainer.global_step - 1`` at logging); its checkpoint is named ``step=<steps done>``.
    """
    val = read_metrics(root).get("val/bpc")
    if not val:
        raise FileNotFoundError(f"no val/bpc in {root}/version_*/metrics.csv")
    ckpts = {checkpoint_step(p): p for v in versions(root)
             for p in (v / "checkpoints").glob("*step=*.ckpt")}
    best = sorted(val.items(), key=lambda kv: (kv[1], kv[0]))
    for row_step, bpc in best:
        for done in (row_step + 1, row_step):
            if done in ckpts:
                return done, bpc, ckpts[done]
    raise FileNotFoundError(f"no checkpoint at the best validation step in {root}")


def latest_summary(root: Path) -> dict:
    for v in reversed(versions(root)):
        if (v / "summary.json").exists():
            return json.loads((v / "summary.json").read_text())
    raise FileNotFoundError(f"no summary.json under {root}")


# ---- running ------------------------------------------------------------------------------

_print_lock = threading.Lock()


def log(msg: str) -> None:
    with _print_lock:
        print(time.strftime("%H:%M:%S"), msg, flush=True)


def cell_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="offline",
               WANDB_SILENT="true")
    return env


def _exe(cmd: list[str]) -> list[str]:
    return [str(Path(sys.executable).with_name(cmd[0])), *cmd[1:]]


def run_cell(cell: Cell, fresh: bool = False, runner=subprocess.run) -> dict:
    """Runs (or resumes) one cell and returns its record (``done.json``)."""
    done = cell.root / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    cell.root.mkdir(parents=True, exist_ok=True)
    cmd = cell.fit_command()
    ckpt = None if fresh else last_checkpoint(cell.root)
    run_cmd = cmd + ([f"--ckpt_path={ckpt}"] if ckpt else [])
    log(f"start {cell.name}" + (f" (resuming from {ckpt})" if ckpt else ""))
    start = time.time()
    with open(cell.root / "fit.log", "a") as out:
        runner(_exe(run_cmd), check=True, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
               env=cell_env())
    fit_seconds = time.time() - start
    record: dict = {"cell": cell.name, "cmd": " ".join(cmd),
                    "resumed_from": str(ckpt) if ckpt else None,
                    "fit_seconds": round(fit_seconds, 1)}
    if cell.episodic:
        summary = latest_summary(cell.root)
        record["metric"] = summary["curriculum"]["max_level_solved"]
        record["final_curriculum"] = summary["curriculum"]
        record["steps"] = summary["global_step"]
    else:
        step, bpc, best = best_validation(cell.root)
        test = cell.test_command(best)
        t0 = time.time()
        with open(cell.root / "test.log", "a") as out:
            runner(_exe(test), check=True, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                   env=cell_env())
        record["test_seconds"] = round(time.time() - t0, 1)
        record["test_cmd"] = " ".join(test)
        record["best_step"], record["best_val_bpc"] = step, bpc
        record["best_tokens"] = step * cell.tokens_per_step
        record["metric"] = latest_summary(cell.root / "test")["metrics"]["test/bpc"]
        record["steps"] = cell.max_steps
    record["seconds"] = round(time.time() - start, 1)
    done.write_text(json.dumps(record, indent=1) + "\n")
    log(f"done  {cell.name}: {record['metric']} ({record['seconds']} s)")
    return record


def expected_cost(cell: Cell) -> float:
    """Rough relative cost, to start the longest cells first."""
    if cell.episodic:
        return cell.preset.copy_steps * (1.5 if cell.task == "repeat_copy" else 1.0) * (
            1.6 if cell.mode != "tbptt" else 1.0) / 25
    return cell.preset.ptb_tokens / (4000 if cell.mode != "tbptt" else 8000) * (
        4 / (cell.window + 2))


def run_all(all_cells: list[Cell], jobs: int, fresh: bool = False) -> dict[str, dict]:
    order = sorted(all_cells, key=expected_cost, reverse=True)
    results: dict[str, dict] = {}

    def one(cell: Cell) -> None:
        try:
            results[cell.name] = run_cell(cell, fresh)
        except Exception as e:  # keep the other cells going; the report names the missing
            log(f"FAILED {cell.name}: {e!r} (see {cell.root / 'fit.log'})")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, order))
    return results


def load_results(all_cells: list[Cell]) -> dict[str, dict]:
    out = {}
    for c in all_cells:
        done = c.root / "done.json"
        if done.exists():
            out[c.name] = json.loads(done.read_text())
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--jobs", type=int, default=1, help="cells run in parallel")
    p.add_argument("--runs", default=None, help="runs folder (default runs/table1_<preset>)")
    p.add_argument("--out", default=None, help="results file (default results/table1_<preset>.md)")
    p.add_argument("--data-root", default=os.environ.get("DNIRNN_DATA"),
                   help="PTB folder (default: $DNIRNN_DATA, else the recipe's lookup)")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset")
    p.add_argument("--fresh", action="store_true",
                   help="restart unfinished cells instead of resuming from last.ckpt")
    p.add_argument("--dry-run", action="store_true", help="print the cell commands only")
    p.add_argument("--report-only", action="store_true",
                   help="write the table and plots from the finished cells; run nothing")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    runs = Path(args.runs or f"runs/table1_{preset.name}")
    out = Path(args.out or f"results/table1_{preset.name}.md")
    tasks = tuple(t for t in args.tasks.split(",") if t)
    unknown = set(tasks) - set(TASKS)
    if unknown:
        p.error(f"unknown tasks {sorted(unknown)}; choose from {TASKS}")
    all_cells = cells(preset, runs, args.data_root, tasks)
    if args.dry_run:
        for c in all_cells:
            print(" ".join(c.fit_command()))
        return
    if not args.report_only:
        run_all(all_cells, args.jobs, args.fresh)
    from table1_report import make_plots, write_report  # (scripts/table1_report.py)

    results = load_results(all_cells)
    plots = make_plots(all_cells, out.with_suffix(""))
    command = f"python scripts/table1.py --preset {preset.name} --jobs {args.jobs}"
    if args.data_root:
        command += f" --data-root {args.data_root}"
    write_report(preset, all_cells, results, out, command, plots)
    log(f"wrote {out} ({len(results)} of {len(all_cells)} cells) and {len(plots)} plots")


if __name__ == "__main__":
    main()
