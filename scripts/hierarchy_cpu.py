"""Hierarchy vs single level at equal core parameters and equal fast window, on CPU.

Runs each cell as ``dnirnn fit`` (one process at a time, ``OMP_NUM_THREADS=1``), reads
``metrics.csv`` and the checkpoint, and writes ``results/hierarchy.md``:

    .venv/bin/python scripts/hierarchy_cpu.py [--recall-steps 1500] [--ptb-steps 800]
        [--ptb-root ../shared/data/ptb] [--out results/hierarchy.md]

Cells: delayed recall (``recipes/recall_{tbptt,dni,hier_dni}.yaml``, plus the hierarchy with
no interface synthesizer) and PTB char (``recipes/ptb_char_{tbptt,dni,hier_dni}.yaml``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DNIRNN = [sys.executable, "-m", "dnirnn.cli"]


def run(recipe: str, root: Path, extra: list[str]) -> tuple[Path, float, list[str]]:
    """One ``dnirnn fit``; returns its version folder, wall seconds and the command."""
    args = ["fit", "--config", f"recipes/{recipe}.yaml", f"--trainer.default_root_dir={root}",
            "--wandb=false", "--trainer.enable_progress_bar=false", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    start = time.monotonic()
    proc = subprocess.run(DNIRNN + args, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode:
        raise RuntimeError(f"{recipe} failed:\n{proc.stderr[-3000:]}")
    version = sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))[-1]
    return version, wall, ["dnirnn", *args]


def val_curve(version: Path, key: str) -> list[tuple[int, float]]:
    with open(version / "metrics.csv") as f:
        return [(int(r["step"]) + 1, float(r[key])) for r in csv.DictReader(f) if r.get(key)]


def param_counts(version: Path) -> tuple[int, int]:
    """(core, synthesizers): parameters in the checkpoint's state dict."""
    sd = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu",
                    weights_only=False)["state_dict"]
    synth = sum(v.numel() for k, v in sd.items() if "synthesizer" in k)
    return sum(v.numel() for v in sd.values()) - synth, synth


def cells(args: argparse.Namespace) -> list[tuple[str, str, str, list[str], str]]:
    """(task, label, recipe, overrides, metric key)."""
    r = [f"--trainer.max_steps={args.recall_steps}"]
    p = [f"--trainer.max_steps={args.ptb_steps}", f"--trainer.val_check_interval={args.ptb_steps}",
         f"--trainer.limit_val_batches={args.ptb_val_batches}",
         f"--data.init_args.root={args.ptb_root}"]
    bits, bpc = "val/bits_per_step", "val/bpc"
    return [
        ("recall", "single, tbptt", "recall_tbptt", r, bits),
        ("recall", "single, dni", "recall_dni", r, bits),
        ("recall", "hierarchy, dni", "recall_hier_dni", r, bits),
        ("recall", "hierarchy, dni, no interface synthesizer", "recall_hier_dni",
         [*r, "--model.init_args.interface_synthesizer=null"], bits),
        ("recall", "single, tbptt, forget_bias 0", "recall_tbptt", [*r, "--model.forget_bias=0"],
         bits),
        ("recall", "hierarchy, dni, forget_bias 0", "recall_hier_dni",
         [*r, "--model.init_args.forget_bias=0"], bits),
        ("ptb_char", "single, tbptt", "ptb_char_tbptt", p, bpc),
        ("ptb_char", "single, dni", "ptb_char_dni", p, bpc),
        ("ptb_char", "hierarchy, dni", "ptb_char_hier_dni", p, bpc),
        ("ptb_char", "hierarchy, dni, interface_sg_scale 1", "ptb_char_hier_dni",
         [*p, "--model.init_args.interface_sg_scale=1.0"], bpc),
        ("ptb_char", "hierarchy, dni, no interface synthesizer", "ptb_char_hier_dni",
         [*p, "--model.init_args.interface_synthesizer=null"], bpc),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recall-steps", type=int, default=1500)
    ap.add_argument("--ptb-steps", type=int, default=800)
    ap.add_argument("--ptb-val-batches", type=int, default=20)
    ap.add_argument("--ptb-root", default=str(ROOT.parent / "shared" / "data" / "ptb"))
    ap.add_argument("--only", default="", help="comma-separated tasks to run (default: all)")
    ap.add_argument("--out", default=str(ROOT / "results" / "hierarchy.md"))
    ap.add_argument("--runs", default="runs/hierarchy_cpu", help="run folders")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse a cell's record.json from an earlier run of the same command")
    args = ap.parse_args()
    rows = []
    for i, (task, label, recipe, extra, key) in enumerate(cells(args)):
        if args.only and task not in args.only.split(","):
            continue
        root = Path(args.runs) / f"{i}_{recipe}"
        record = root / "record.json"
        old = json.loads(record.read_text()) if args.reuse and record.exists() else None
        if old is None or old["extra"] != extra:
            version, wall, cmd = run(recipe, root, extra)
            core, synth = param_counts(version)
            old = {"extra": extra, "wall": wall, "cmd": cmd, "core": core, "synth": synth,
                   "curve": val_curve(version, key)}
            record.write_text(json.dumps(old))
        rows.append((task, label, old["core"], old["synth"], old["wall"],
                     [tuple(c) for c in old["curve"]], old["cmd"], key))
        print(f"{task:9s} {label:45s} core={old['core']} synth={old['synth']} "
              f"wall={old['wall']:.0f}s {key}={old['curve'][-1][1]:.3f}", flush=True)
    out = Path(args.out)
    notes = out.read_text().partition(NOTES)[2] if out.exists() else ""
    out.write_text(render(rows, args) + NOTES + (notes or "\n"))


NOTES = "<!-- notes: written by hand, kept when the tables are regenerated -->"


def render(rows, args) -> str:
    lines = [
        "# Hierarchy vs single level (CPU)",
        "",
        f"Written by `scripts/hierarchy_cpu.py --recall-steps {args.recall_steps} "
        f"--ptb-steps {args.ptb_steps} --ptb-val-batches {args.ptb_val_batches}` "
        f"on {platform.machine()} CPU, `OMP_NUM_THREADS=1`, one run at a time, torch "
        f"{torch.__version__}. No GPU was available in this session: nothing here was run "
        "on one. Seed 0, one run per cell (no error bars).",
        "",
    ]
    for task in dict.fromkeys(r[0] for r in rows):
        key = next(r[7] for r in rows if r[0] == task)
        lines += [f"## {task}", "", f"| model | core params | synthesizer params | wall s | "
                  f"{key} at steps " + ", ".join(str(s) for s, _ in
                                                 next(r[5] for r in rows if r[0] == task))
                  + " |", "|---|---:|---:|---:|---|"]
        for _, label, core, synth, wall, curve, _, _ in (r for r in rows if r[0] == task):
            vals = ", ".join(f"{v:.3f}" for _, v in curve)
            lines.append(f"| {label} | {core:,} | {synth:,} | {wall:.0f} | {vals} |")
        lines += ["", "Commands (from the repository root, `OMP_NUM_THREADS=1`):", "", "```"]
        lines += [" ".join(r[6]) for r in rows if r[0] == task]
        lines += ["```", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
