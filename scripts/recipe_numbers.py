"""A refactor keeps the numbers: every recipe's first 30 training steps, recorded and compared.

Runs each recipe (recipes/*.yaml, not the overlays) for 30 training steps through the CLI,
with only ``trainer.*`` options added (the model's option names may change), and reads from
the run's metrics.csv every ``train/*`` column whose name has "loss" in it (train/loss,
train/sg_loss, train/aux_loss, the hierarchy's slow_/interface_sg_loss, ...), one value per
step (null where the step logged none, e.g. before a synthesizer's first fit). The recipes
are those of the checkout whose ``dnirnn`` the interpreter imports (PYTHONPATH picks a tree).

    # record, here from the tree at commit f1aba47 (tests/data/recipe_numbers.json):
    OMP_NUM_THREADS=1 WANDB_MODE=offline DNIRNN_DATA=/work/shared/data/ptb PYTHONPATH=/tmp/base \
        python scripts/recipe_numbers.py --out tests/data/recipe_numbers.json
    # after a change: rerun and compare (exit 1 when a column differs by more than --rtol
    # at step 30, or a column or step is missing)
    python scripts/recipe_numbers.py --compare tests/data/recipe_numbers.json [--recipes copy_dni]

Validation is off (--trainer.limit_val_batches=0); checkpoints are written to the temporary
run folder (dnirnn adds its own ModelCheckpoint, so trainer.enable_checkpointing=false is
refused). ptb_char_decoupled runs its two layer groups in one process (--trainer.devices=1).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = 30
EXTRA = {"ptb_char_decoupled": ["--trainer.devices=1"]}  # one process, not one per layer


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.setdefault("OMP_NUM_THREADS", "1")
    e.setdefault("WANDB_MODE", "offline")
    return e


def dnirnn_tree(cwd: str) -> Path:
    """The checkout whose dnirnn the subprocesses import (run in ``cwd``, not in a tree)."""
    out = subprocess.run([sys.executable, "-c", "import dnirnn; print(dnirnn.__file__)"],
                         cwd=cwd, env=env(), capture_output=True, text=True, check=True)
    return Path(out.stdout.strip()).resolve().parents[1]


def run_recipe(path: Path, tmp: str) -> dict:
    """30 steps of one recipe: {"steps": [...], "columns": {column: [30 values]}}."""
    root = Path(tmp) / path.stem
    cmd = [sys.executable, "-m", "dnirnn", "fit", "--config", str(path),
           f"--trainer.max_steps={STEPS}", "--trainer.log_every_n_steps=1",
           f"--trainer.default_root_dir={root}", "--trainer.limit_val_batches=0",
           "--trainer.enable_progress_bar=false", *EXTRA.get(path.stem, [])]
    done = subprocess.run(cmd, cwd=tmp, env=env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    found = glob.glob(str(root / "version_*" / "metrics.csv"))
    if len(found) != 1:
        raise RuntimeError(f"expected one metrics.csv under {root}, found {found}")
    rows: dict[int, dict[str, float]] = {}
    with open(found[0], newline="") as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items()
                      if k.startswith("train/") and "loss" in k and v not in ("", None)}
            if values:
                rows.setdefault(int(row["step"]), {}).update(values)
    steps = sorted(rows)
    if steps != list(range(STEPS)) or any("train/loss" not in r for r in rows.values()):
        raise RuntimeError(f"{path.stem}: train/loss not logged at each of steps 0..{STEPS - 1}"
                           f" (steps {steps})")
    names = sorted({k for r in rows.values() for k in r})
    return {"steps": steps, "columns": {k: [rows[s].get(k) for s in steps] for k in names}}


def rel(a: float | None, b: float | None) -> float:
    """|a - b| / |b|: 0 when equal, inf when only one is missing or b = 0 != a."""
    if a is None or b is None:
        return 0.0 if a is b else float("inf")
    if a == b:
        return 0.0
    return abs(a - b) / abs(b) if b else float("inf")


def compare(new: dict, old: dict, rtol: float) -> bool:
    """Prints each column's max relative difference over the steps and at the last step;
    True when every column is within ``rtol`` at the last step."""
    ok = True
    for name, rec in new.items():
        if name not in old:
            print(f"{name}: not in the reference")
            ok = False
            continue
        ref = old[name]["columns"]
        for col in sorted(set(ref) | set(rec["columns"])):
            a, b = rec["columns"].get(col), ref.get(col)
            if a is None or b is None or len(a) != len(b):
                where = "rerun" if a is None else "reference"
                print(f"{name:24s} {col:28s} MISSING (or not {STEPS} steps) in the {where}")
                ok = False
                continue
            diffs = [rel(x, y) for x, y in zip(a, b)]
            bad = diffs[-1] > rtol
            ok &= not bad
            print(f"{name:24s} {col:28s} max rel {max(diffs):.3g}  at step {STEPS} "
                  f"{diffs[-1]:.3g}{'  FAIL' if bad else ''}")
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", help="names, comma-separated (default: every recipe)")
    p.add_argument("--out", help="write the numbers to this JSON file")
    p.add_argument("--compare", help="a JSON file written by --out: compare the rerun with it")
    p.add_argument("--rtol", type=float, default=1e-5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="recipe_numbers_") as tmp:
        tree = dnirnn_tree(tmp)
        print(f"dnirnn from {tree}")
        recipes = {q.stem: q for q in sorted((tree / "recipes").glob("*.yaml"))}
        names = args.recipes.split(",") if args.recipes else list(recipes)
        results, failed = {}, []
        for name in names:
            start = time.perf_counter()
            try:
                results[name] = run_recipe(recipes[name], tmp)
                cols = ", ".join(results[name]["columns"])
                print(f"{name}: {time.perf_counter() - start:.1f} s  ({cols})", flush=True)
            except (RuntimeError, KeyError) as e:
                print(f"{name}: FAILED after {time.perf_counter() - start:.1f} s: {e}", flush=True)
                failed.append(name)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    ok = not failed
    if args.compare:
        ok &= compare(results, json.loads(Path(args.compare).read_text()), args.rtol)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
