"""Peak memory and time per training step of each way of training on long episodes.

Every variant is a shipped recipe plus dotted overrides (as on the command line), measured on
Copy episodes of a FIXED length L (no curriculum), batch B, for ``--steps`` training steps,
each in a FRESH process (so one variant's allocations cannot hide another's peak):

- ``peak_rss_mb``: the process's peak resident set size (``VmHWM``, the ``ru_maxrss`` that
  ``/usr/bin/time`` reports at exit): everything, Python and the libraries included;
- ``train_mb``: the peak RSS above the RSS just before the first training step (model, data
  and optimizers built): what training itself holds;
- ``ms_per_step``: the median wall time of a training step after ``--warmup`` steps;
  ``cpu_ms_per_step``: the same in the process's CPU time, which another process sharing the
  machine disturbs much less (one thread: equal to the wall time on a quiet machine).

The training loop is the engine's own (``dnirnn.dni.train_span``: the episode's windows,
then ``DNIRNN.end_step``), with the model built by ``DNIModule`` from the recipe's ``model:``
section, exactly as ``dnirnn fit`` builds it; Lightning's per-step overhead, the same for
every variant, is left out. Run it on a quiet machine, one variant at a time (it does that).

    OMP_NUM_THREADS=1 python scripts/episode_cost.py --lengths 40 80 --batch 256 --steps 30 \\
        [--variants tbptt dni_h2 ...] [--window 2] [--repeats 5] \\
        [--json results/horizon/episode_cost.json]

``--repeats R`` runs the variants R times round-robin (a fresh process each, the order rotated
per repetition) and reports the medians: on a shared machine, compare ratios so measured.

``--plot CELLS`` draws the level each variant reaches (a sweep's ``cells.csv``: median over
seeds, bars from the lowest to the highest seed) against its measured peak memory (the rows
of ``--json`` files at one ``--plot-length``), one panel per task, one point per variant and
T: at a given memory, does DNI learn more than TBPTT, and how close does it come to full
BPTT?

    python scripts/episode_cost.py --plot results/horizon/cells.csv \\
        --json results/horizon/episode_cost_T2.json results/horizon/episode_cost_T3.json \\
        --plot-length 80 --out results/horizon/level_vs_memory.png
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# (depth 1: the one-window DNI update; the copy recipes run the hybrid, depth 4)
LS = {"synthesizer.kind": "linear", "synthesizer.fit": "rls", "synthesizer.positions": 32,
      "synthesizer.rls_forget": 0.8, "synthesizer.rls_ridge": 0.1, "synthesizer.guard": 2.0,
      "depth": 1}
PAPER = {"depth": 1, "synthesizer.kind": "mlp", "synthesizer.fit": "adam",
         "synthesizer.positions": 1, "synthesizer.context": "none", "targets.lam": None,
         "targets.horizon": None, "synthesizer.guard": None}
ONE = {"targets.lam": None, "targets.horizon": None}  # the window's own target
# name: (recipe, model overrides, dotted as on the command line; "2T" is twice the window)
VARIANTS: dict[str, tuple[str, dict]] = {
    "tbptt": ("copy_tbptt", {}),
    "tbptt_2T": ("copy_tbptt", {"window": "2T"}),
    "tbptt_4T": ("copy_tbptt", {"window": "4T"}),
    "full_bptt": ("copy_tbptt", {"window": 1000}),
    "dni_paper": ("copy_dni", PAPER),
    "dni_ls_1map": ("copy_dni", {**LS, "synthesizer.positions": 1, **ONE}),
    "dni_h1": ("copy_dni", {**LS, **ONE}),
    "dni_h2": ("copy_dni", {**LS, "targets.lam": 1.0, "targets.horizon": 2}),
    "dni_h4": ("copy_dni", {**LS, "targets.lam": 1.0, "targets.horizon": 4}),
    "dni_span": ("copy_dni", {**LS, "targets.lam": 1.0, "targets.horizon": None}),
    "oracle": ("copy_tbptt", {"boundary": "oracle", "targets.oracle_windows": 1000}),
    "recipe": ("copy_dni", {}),  # the shipped copy_dni recipe as it stands (the hybrid)
    "tbptt_deep4": ("copy_tbptt", {"depth": 4}),  # TBPTT(T, 4T)
    "hybrid4": ("copy_dni", {"depth": 4}),  # the recipe's synthesizer + TBPTT(T, 4T)
    "tbptt_deep2": ("copy_tbptt", {"depth": 2}),  # TBPTT(T, 2T)
    "hybrid2": ("copy_dni", {"depth": 2, "targets.horizon": 2}),
    # the same two with one update of the core an episode (update_every: span)
    "tbptt_deep2_ep": ("copy_tbptt", {"depth": 2, "update_every": "span"}),
    "hybrid2_ep": ("copy_dni", {"depth": 2, "targets.horizon": 2, "update_every": "span"}),
    # the recipe with its targets made by one chain per block of H windows (horizons H..2H-1)
    "dni_h4_block": ("copy_dni", {**LS, "targets.lam": 1.0, "targets.horizon": 4,
                                  "targets.chain": "block"}),
    # the recipe with its least-squares maps re-solved every 10 training steps
    "recipe_solve10": ("copy_dni", {"synthesizer.rls_solve_every": 10}),
}
STYLE = {  # variant: (marker, label) for the plot
    "tbptt": ("o", "TBPTT at T"), "tbptt_2T": ("o", "TBPTT at 2T"),
    "tbptt_4T": ("o", "TBPTT at 4T"), "full_bptt": ("s", "full BPTT"),
    "oracle": ("*", "oracle"), "dni_paper": ("v", "DNI, paper"),
    "dni_h1": ("^", "DNI H=1"), "dni_h2": ("^", "DNI H=2"), "dni_h4": ("^", "DNI H=4"),
    "dni_span": ("D", "DNI, span (full BPTT for the synthesizer)"),
    "tbptt_deep4": ("s", "TBPTT(T, 4T)"), "hybrid4": ("P", "hybrid, depth 4"),
    "tbptt_deep2": ("s", "TBPTT(T, 2T)"), "hybrid2": ("P", "hybrid, depth 2"),
    "tbptt_deep2_ep": ("s", "TBPTT(T, 2T), one update an episode"),
    "hybrid2_ep": ("P", "hybrid, depth 2, one update an episode"),
    "dni_h4_block": ("^", "DNI H=4, block chain"),
    "recipe_solve10": ("P", "the recipe, maps solved every 10 steps"),
}


def model_args(recipe: str, overrides: dict, window: int) -> dict:
    cfg = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())
    args = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg["model"].items()}
    args["window"] = window
    for k, v in overrides.items():
        if k == "window" and isinstance(v, str) and v.endswith("T"):
            v = int(v[:-1]) * window
        group, _, name = k.rpartition(".")
        (args.setdefault(group, {}) if group else args)[name] = v
    return args


def shown(args: dict) -> dict:
    """The options a row records, dotted: window, boundary, depth, the update cadence, the
    synthesizer and targets."""
    out = {k: args[k] for k in ("window", "boundary") if k in args}
    out["depth"] = args.get("depth", 1)
    out["update_every"] = args.get("update_every", 1)
    for group in ("synthesizer", "targets"):
        out.update({f"{group}.{k}": v for k, v in args.get(group, {}).items()})
    return dict(sorted(out.items()))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """The peak RSS so far. ``ru_maxrss`` alone can lag the current RSS (the kernel updates
    its high-water mark lazily, e.g. when memory is unmapped, which a process that keeps its
    freed memory rarely does); ``VmHWM`` takes the current RSS into account."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_variant(variant: str, length: int, batch: int, window: int):
    """The variant's ``(module, engine, optimizers, task, model options)`` on Copy episodes of
    length L: the model built by ``DNIModule`` from the recipe's ``model:`` section plus the
    variant's overrides, as ``dnirnn fit`` builds it (also used by profile_window.py)."""
    import torch

    from dnirnn.engine.build import build
    from dnirnn.lit import DNIModule
    from dnirnn.tasks import CopyTask

    torch.manual_seed(0)
    recipe, overrides = VARIANTS[variant]
    args = model_args(recipe, overrides, window)
    task = CopyTask(repeat=False, batch_size=batch, seed=0, start_length=length)
    module = DNIModule(task="copy", input_size=task.input_size, output_size=task.output_size,
                       **args)  # (the recipe's options, checked; its windows' contexts)
    torch.manual_seed(0)
    engine, opts = build(module.spec, loss_norm=task.loss_norm(window))
    module.task = task
    return module, engine, opts, task, args


def measure_one(variant: str, length: int, batch: int, window: int, steps: int,
                warmup: int) -> dict:
    """In this process: builds the variant and trains it; returns its figures."""
    from dnirnn.dni import train_span

    module, engine, opts, task, args = build_variant(variant, length, batch, window)
    base = rss_mb()
    times, cpu = [], []
    for step in range(steps):
        batch_ = task.batch("train", step)
        windows = module.windows(batch_)
        t0, c0 = time.perf_counter(), time.process_time()
        n = len(windows)
        train_span(engine, opts, windows, engine.core.zero_state(batch), reset=True, last=True)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = peak_rss_mb()
    return {"variant": variant, "length": length, "batch": batch, "window": window,
            "windows_per_episode": n, "steps": steps, "peak_rss_mb": round(peak, 1),
            "base_rss_mb": round(base, 1), "train_mb": round(peak - base, 1),
            "ms_per_step": round(1e3 * statistics.median(times[warmup:]), 2),
            "cpu_ms_per_step": round(1e3 * statistics.median(cpu[warmup:]), 2),
            "model": shown(args)}


def run(variants, lengths, batch, window, steps, warmup, repeats: int = 1) -> list[dict]:
    """Each variant in a fresh process, ``repeats`` times round-robin (the order rotated per
    repetition, so a loaded machine's drift hits every variant alike); a row per variant and
    length holds the medians over the repetitions (``*_all``: every repetition's)."""
    rows = []
    for length in lengths:
        reps: dict[str, list[dict]] = {v: [] for v in variants}
        for rep in range(repeats):
            shift = rep % len(variants)
            for v in [*variants[shift:], *variants[:shift]]:
                row = run_worker(v, length, batch, window, steps, warmup)
                reps[v].append(row)
                print(f"  L={length:3d} {v:12s} peak {row['peak_rss_mb']:7.1f} MB  training "
                      f"{row['train_mb']:7.1f} MB  {row['ms_per_step']:8.1f} ms/step "
                      f"({row['cpu_ms_per_step']:.1f} CPU)", flush=True)
        rows += [median_row(reps[v]) for v in variants]
    return rows


MEASURED = ("peak_rss_mb", "base_rss_mb", "train_mb", "ms_per_step", "cpu_ms_per_step")


def median_row(reps: list[dict]) -> dict:
    """One row of the medians of a variant's repetitions (and, with more than one, each
    repetition's figures in ``<figure>_all``)."""
    row = dict(reps[0])
    if len(reps) > 1:
        for key in MEASURED:
            row[f"{key}_all"] = [r[key] for r in reps]
            row[key] = round(statistics.median(row[f"{key}_all"]), 2)
        row["repeats"] = len(reps)
    return row


def run_worker(v: str, length: int, batch: int, window: int, steps: int, warmup: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", v, "--lengths", str(length),
           "--batch", str(batch), "--window", str(window), "--steps", str(steps),
           "--warmup", str(warmup)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           # measure the dnirnn of this checkout, whatever the venv has installed
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{v} at L={length} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    """Markdown: per variant, peak RSS and time per step at each L, and the ratios to TBPTT."""
    lengths = sorted({r["length"] for r in rows})
    by = {(r["variant"], r["length"]): r for r in rows}
    head = ["variant"] + [f"L={n}: peak RSS MB (x TBPTT) / training MB / CPU ms per step "
                          f"(x TBPTT)" for n in lengths]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in dict.fromkeys(r["variant"] for r in rows):
        cells = [v]
        for n in lengths:
            r, t = by.get((v, n)), by.get(("tbptt", n))
            if r is None:
                cells.append("–")
                continue
            ms = r.get("cpu_ms_per_step", r["ms_per_step"])
            rel = ("", "") if t is None else (
                f" ({r['peak_rss_mb'] / t['peak_rss_mb']:.2f}x)",
                f" ({ms / t.get('cpu_ms_per_step', t['ms_per_step']):.2f}x)")
            cells.append(f"{r['peak_rss_mb']:.0f}{rel[0]} / {r['train_mb']:.0f} / "
                         f"{ms:.0f}{rel[1]}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(cells_csv: Path, cost_files: list[Path], length: int, out: Path) -> Path:
    """Level solved against peak RSS (see the module docstring)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cost = {}
    for f in cost_files:
        for r in json.loads(f.read_text()):
            if r["length"] == length:
                cost[(r["variant"], r["window"])] = r["peak_rss_mb"]
    levels: dict[tuple[str, str, int], list[float]] = {}
    with open(cells_csv) as f:
        for r in csv.DictReader(f):
            if r.get("level") not in (None, ""):
                key = (r["task"], r["variant"], int(r["T"]))
                levels.setdefault(key, []).append(float(r["level"]))
    tasks = sorted({t for t, _, _ in levels})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 5), squeeze=False)
    colors = {2: "tab:blue", 3: "tab:orange", 4: "tab:green", 8: "tab:red"}
    for ax, task in zip(axes[0], tasks):
        for (t, v, T), ys in sorted(levels.items()):
            if t != task or (v, T) not in cost or v not in STYLE:
                continue
            ys = sorted(ys)
            med = statistics.median(ys)
            x = cost[(v, T)]
            marker, label = STYLE[v]
            ax.errorbar(x, med, yerr=[[med - ys[0]], [ys[-1] - med]], fmt=marker, ms=8,
                        color=colors.get(T, "black"), capsize=3)
            ax.annotate(f"{label.split(',')[0]}" if v != "dni_span" else "DNI span",
                        (x, med), textcoords="offset points", fontsize=7,
                        xytext=(6, 4) if T == 2 else (6, -11), color=colors.get(T, "black"))
        ax.set_title(f"{task}: level vs peak memory\n(memory: Copy L={length}, batch 256)",
                     fontsize=10)
        ax.set_xlabel("peak RSS of the training process, MB")
        ax.set_ylabel("largest level solved (median over seeds, bars: min-max)")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=f"T = {T}")
               for T, c in colors.items() if any(k[2] == T for k in levels)]
    axes[0][0].legend(handles=handles, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--lengths", nargs="+", type=int, default=[40, 80])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--window", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=1,
                   help="fresh processes per variant, round-robin; rows hold the medians")
    p.add_argument("--json", type=Path, nargs="+",
                   help="write the rows here (with --plot: read the rows from these)")
    p.add_argument("--plot", type=Path, metavar="CELLS_CSV",
                   help="plot level against peak memory from a sweep's cells.csv")
    p.add_argument("--plot-length", type=int, default=80)
    p.add_argument("--out", type=Path, default=Path("results/horizon/level_vs_memory.png"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.plot:
        print(plot(a.plot, a.json or [], a.plot_length, a.out))
        return
    if a.worker:
        print(json.dumps(measure_one(a.worker, a.lengths[0], a.batch, a.window, a.steps,
                                     a.warmup)))
        return
    if a.steps <= a.warmup:
        raise SystemExit(f"--steps ({a.steps}) must exceed --warmup ({a.warmup})")
    rows = run(a.variants, a.lengths, a.batch, a.window, a.steps, a.warmup, a.repeats)
    print(table(rows))
    if a.json:
        a.json[0].parent.mkdir(parents=True, exist_ok=True)
        a.json[0].write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
