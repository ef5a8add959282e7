"""Hierarchy vs single level at equal core parameters and equal fast window, on CPU.

Runs each cell as ``dnirnn fit`` (``--jobs`` processes at once, ``OMP_NUM_THREADS=1``
each), reads ``metrics.csv`` and the checkpoint, and writes ``results/hierarchy.md``:

    .venv/bin/python scripts/hierarchy_cpu.py [--recall-steps 1500] [--ptb-steps 800]
        [--recall-seeds 0,1,2] [--jobs 2] [--ptb-root ../shared/data/ptb]
        [--out results/hierarchy.md]

Cells: delayed recall (``recipes/recall_{tbptt,dni,hier_dni}.yaml``: the paper's Adam-fitted
synthesizers and the least-squares ones, the hierarchy with no interface synthesizer, the
oracle boundary) over ``--recall-seeds``, and PTB char
(``recipes/ptb_char_{tbptt,dni,hier_dni}.yaml``) at seed 0.
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
from concurrent.futures import ThreadPoolExecutor
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
    """(core, synthesizers): weights in the checkpoint's state dict. A least-squares
    synthesizer counts its maps ``W``, not its statistics ``A, b``; the guard's running
    statistics count nowhere."""
    sd = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu",
                    weights_only=False)["state_dict"]
    core = synth = 0
    for k, v in sd.items():
        if "synthesizer" in k:
            synth += 0 if k.rsplit(".", 1)[-1] in ("A", "b") else v.numel()
        elif ".guard." not in f".{k}":
            core += v.numel()
    return core, synth


def cells(args: argparse.Namespace) -> list[tuple[str, str, str, list[str], str]]:
    """(task, label, recipe, overrides, metric key)."""
    r = [f"--trainer.max_steps={args.recall_steps}"]
    p = [f"--trainer.max_steps={args.ptb_steps}", f"--trainer.val_check_interval={args.ptb_steps}",
         f"--trainer.limit_val_batches={args.ptb_val_batches}",
         f"--data.init_args.root={args.ptb_root}"]
    bits, bpc = "val/bits_per_step", "val/bpc"
    # the copy recipes' least-squares synthesizer: one map per boundary (4 per episode here),
    # λ-return targets with λ = 1, the norm guard
    rls = ["--model.synthesizer=linear", "--model.synthesizer_fit=rls", "--model.sg_guard=2.0"]
    rls_episodes = [*rls, "--model.synthesizer_positions=4", "--model.sg_lambda=1.0"]
    rls_hier = [f"--model.init_args.{f}=linear" for f in
                ("synthesizer", "slow_synthesizer", "interface_synthesizer")] + [
                "--model.init_args.synthesizer_fit=rls"]
    return [
        ("recall", "single, tbptt", "recall_tbptt", r, bits),
        ("recall", "single, dni", "recall_dni", r, bits),
        ("recall", "single, dni, least squares (positions, λ = 1, guard)", "recall_dni",
         [*r, *rls_episodes], bits),
        ("recall", "single, oracle (true gradient of the rest of the episode)", "recall_dni",
         [*r, "--model.boundary=oracle", "--model.oracle_windows=3"], bits),
        ("recall", "hierarchy, dni", "recall_hier_dni", r, bits),
        ("recall", "hierarchy, dni, least squares", "recall_hier_dni", [*r, *rls_hier], bits),
        ("recall", "hierarchy, dni, no interface synthesizer", "recall_hier_dni",
         [*r, "--model.init_args.interface_synthesizer=null"], bits),
        ("recall", "single, tbptt, forget_bias 0", "recall_tbptt", [*r, "--model.forget_bias=0"],
         bits),
        ("recall", "hierarchy, dni, forget_bias 0", "recall_hier_dni",
         [*r, "--model.init_args.forget_bias=0"], bits),
        ("ptb_char", "single, tbptt", "ptb_char_tbptt", p, bpc),
        ("ptb_char", "single, dni", "ptb_char_dni", p, bpc),
        ("ptb_char", "single, dni, least squares (λ = 1, guard)", "ptb_char_dni",
         [*p, *rls, "--model.sg_lambda=1.0"], bpc),
        ("ptb_char", "hierarchy, dni", "ptb_char_hier_dni", p, bpc),
        ("ptb_char", "hierarchy, dni, least squares", "ptb_char_hier_dni", [*p, *rls_hier], bpc),
        ("ptb_char", "hierarchy, dni, interface_sg_scale 1", "ptb_char_hier_dni",
         [*p, "--model.init_args.interface_sg_scale=1.0"], bpc),
        ("ptb_char", "hierarchy, dni, no interface synthesizer", "ptb_char_hier_dni",
         [*p, "--model.init_args.interface_synthesizer=null"], bpc),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recall-steps", type=int, default=1500)
    ap.add_argument("--recall-seeds", default="0,1,2", help="comma-separated seeds (recall)")
    ap.add_argument("--ptb-steps", type=int, default=800)
    ap.add_argument("--ptb-val-batches", type=int, default=20)
    ap.add_argument("--ptb-root", default=str(ROOT.parent / "shared" / "data" / "ptb"))
    ap.add_argument("--jobs", type=int, default=1, help="cells run at once (one core each)")
    ap.add_argument("--only", default="", help="comma-separated tasks to run (default: all)")
    ap.add_argument("--out", default=str(ROOT / "results" / "hierarchy.md"))
    ap.add_argument("--runs", default="runs/hierarchy_cpu", help="run folders")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse a cell's record.json from an earlier run of the same command")
    args = ap.parse_args()
    seeds = {"recall": [int(x) for x in args.recall_seeds.split(",")], "ptb_char": [0]}
    jobs = []  # (task, label, recipe, extra + seed, key, root)
    for i, (task, label, recipe, extra, key) in enumerate(cells(args)):
        if args.only and task not in args.only.split(","):
            continue
        for seed in seeds[task]:
            root = Path(args.runs) / f"{i}_{recipe}_s{seed}"
            jobs.append((task, label, recipe, [*extra, f"--seed_everything={seed}"], key, root))

    def one(job) -> dict:
        task, label, recipe, extra, key, root = job
        record = root / "record.json"
        old = json.loads(record.read_text()) if args.reuse and record.exists() else None
        if old is None or old["extra"] != extra:
            version, wall, cmd = run(recipe, root, extra)
            core, synth = param_counts(version)
            old = {"extra": extra, "wall": wall, "cmd": cmd, "core": core, "synth": synth,
                   "curve": val_curve(version, key)}
            record.write_text(json.dumps(old))
        print(f"{task:9s} {label:55s} {extra[-1]} core={old['core']} synth={old['synth']} "
              f"wall={old['wall']:.0f}s {key}={old['curve'][-1][1]:.3f}", flush=True)
        return old

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        records = list(pool.map(one, jobs))
    rows: dict[tuple[str, str], dict] = {}
    for (task, label, _, _, key, _), rec in zip(jobs, records):
        row = rows.setdefault((task, label), {"task": task, "label": label, "key": key,
                                              "core": rec["core"], "synth": rec["synth"],
                                              "runs": []})
        row["runs"].append(rec)
    out = Path(args.out)
    notes = out.read_text().partition(NOTES)[2] if out.exists() else ""
    out.write_text(render(list(rows.values()), args) + NOTES + (notes or "\n"))


NOTES = "<!-- notes: written by hand, kept when the tables are regenerated -->"


def render(rows: list[dict], args) -> str:
    lines = [
        "# Hierarchy vs single level (CPU)",
        "",
        f"Written by `scripts/hierarchy_cpu.py --recall-steps {args.recall_steps} "
        f"--recall-seeds {args.recall_seeds} --ptb-steps {args.ptb_steps} "
        f"--ptb-val-batches {args.ptb_val_batches} --jobs {args.jobs}` "
        f"on {platform.machine()} CPU, `OMP_NUM_THREADS=1`, {args.jobs} run(s) at a time, "
        f"torch {torch.__version__}. No GPU was available in this session: nothing here was "
        "run on one. Curves are means over the seeds; the last column lists each seed's "
        "final value.",
        "",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        group = [r for r in rows if r["task"] == task]
        key, steps = group[0]["key"], [st for st, _ in group[0]["runs"][0]["curve"]]
        lines += [f"## {task}", "",
                  f"| model | core params | synthesizer params | wall s (mean) | mean {key} at "
                  f"steps {', '.join(map(str, steps))} | final, per seed |",
                  "|---|---:|---:|---:|---|---|"]
        for r in group:
            curves = [[v for _, v in run["curve"]] for run in r["runs"]]
            mean = [sum(vs) / len(vs) for vs in zip(*curves)]
            wall = sum(run["wall"] for run in r["runs"]) / len(r["runs"])
            lines.append(f"| {r['label']} | {r['core']:,} | {r['synth']:,} | {wall:.0f} | "
                         + ", ".join(f"{v:.3f}" for v in mean) + " | "
                         + ", ".join(f"{c[-1]:.3f}" for c in curves) + " |")
        lines += ["", "Commands (from the repository root, `OMP_NUM_THREADS=1`):", "", "```"]
        lines += [" ".join(run["cmd"]) for r in group for run in r["runs"]]
        lines += ["```", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
