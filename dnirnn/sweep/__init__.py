"""``dnirnn sweep GRID [--jobs N] [--dry-run | --report]``: recipes x variants x seeds.

A grid file (YAML) names the cells; each cell is one ``python -m dnirnn fit`` process with
``OMP_NUM_THREADS`` set, at most ``--jobs`` at once. Cells resume (a finished one is skipped,
an interrupted one continues from its ``last.ckpt``), a failed one is recorded and the rest
go on, and at the end a Markdown report is written: tables of mean ± spread over seeds,
``dnirnn plot``'s plots, and every cell's state, numbers, wall time and command.

    dnirnn sweep grids/table1_cpu.yaml --jobs 2     # run (or resume), then report
    dnirnn sweep table1_cpu --dry-run               # the cells, their state and commands
    dnirnn sweep table1_cpu --report                # rewrite the report; run nothing
    dnirnn sweep --list                             # the shipped grids

The grid format (every key optional unless said)::

    title: Copy, TBPTT against DNI          # the report's heading
    description: |                          # Markdown under it
      What the grid measures.
    runs: runs/copy_sweep                   # the cells' folders (default runs/<file name>)
    out: results/copy_sweep.md              # the report (default <runs>/report.md); plots
                                            #   and cells.csv go to results/copy_sweep/
    recipe: "{task}_{mode}"                 # a recipe name or path; {axis} = the cell's label
    overlays: [dni_paper]                   # recipes/overlays/*.yaml by name, or paths
    args:                                   # dotted overrides, as `dnirnn fit --KEY=VALUE`
      model.window: "{T}"
      trainer.max_steps: 3000
      wandb: false
    callbacks:                              # --trainer.callbacks+=CLASS --trainer.callbacks.K=V
      dnirnn.diagnostics.SyntheticGradientDiagnostics: {every_n_steps: 100}
    threads: 1                              # OMP_NUM_THREADS per cell (default 1; a
                                            #   shipped grid's is the most a cell uses)
    test: best                              # also `dnirnn test` best.ckpt (or last) per cell
    seeds: [0, 1, 2]                        # the axis `seed`; sets seed_everything={seed}
    axes:                                   # the product of the axes is the cells
      task: [copy, repeat_copy]             # plain labels (used in {templates})
      T: [2, 3]
      mode:                                 # labels with settings:
        tbptt:                              #   nothing: the label only
        dni: {model.targets.scale: 0.5}         #   dotted overrides (+ recipe:, overlays:,
        paper: dni_paper                    #   args:, callbacks:, threads:, test:, about:)
        aux: {recipe: "{task}_dni_aux", about: DNI + Aux}   # a name: an overlay or a recipe
    blocks:                                 # instead of one product, a union of products;
      - axes: {task: [copy], T: [2, 3], mode: [tbptt, dni]}   # a list picks labels of the
        seeds: [0, 1, 2]                                       # axis defined above; a
      - axes: {task: [ptb_char], T: {8: {model.windows_per_step: 5}}, mode: [dni]}
        args: {trainer.max_steps: 800}      # mapping defines labels for this block only;
                                            # recipe/overlays/args/callbacks/threads/test/seeds
    metrics:                                # per cell: name -> spec (or a list of specs)
      level: curriculum/max_level_solved    # a metrics.csv column; its best value (max)
      bpc: {key: val/bpc, reduce: last}     # last | first | min | max | mean | best
      cos: {key: diag/sg_true_cos, reduce: mean, from: 0.5, format: .3f}  # 2nd half only
      val_at_500: {key: val/bpc, at: 500}   # the last value at or before step 500 (none if
                                            # the run stopped before step 500)
      level_300s: {key: curriculum/max_level_solved, at: 300, x: time/train_cpu_s}   # at 300
                                            # CPU seconds of training (WallClock), not steps
      test_bpc: {key: test/bpc, stage: test, better: min}   # the test run's summary
      cos_input: {file: diagnostics.jsonl, key: cos, where: {phase: input}, from: 0.5}
      level_end: {file: summary.json, key: curriculum.max_level_solved}
      core: {file: checkpoint, key: params/core}            # or params/synthesizer
    tables:                                 # default: one, rows = every axis but the seed
      - title: Level solved
        rows: [task, T]                     # axes naming a row (default: the other axes)
        columns: mode                       # an axis (its labels as columns), or omitted:
        metrics: [level, test_bpc]          #   one column per metric; with an axis, the
        entry: full                         #   first metric a cell has. full: mean ± sd
        where: {task: [copy]}               #   (each seed) | spread | mean | median; filters
        exclude: {mode: [aux]}
        reference: {name: paper, values: {copy: {2: [7, 16, 17]}}}   # by row labels; a
        wins: [[dni, tbptt]]                #   list in column order. "dni beats tbptt at":
                                            #   by the means, and where every seed is apart
    plots:                                  # default: the methods (the first table's one
                                            #   `columns` axis, else the last axis) in
                                            #   one `dnirnn plot` per label of the others
      - by: [task, T]                       # one PNG per (task, T): every cell in it
      - {by: [task, T], kind: boundary, exclude: {mode: [tbptt]}}   # cos per boundary k
      - {by: [task], x: time/train_s}       # the panels against a logged series (WallClock)
    sections:                               # report sections before the tables (see
      - kind: speed                         #   dnirnn.sweep.sections): tokens/s, the metric
        axis: mode                          #   at equal tokens and at equal wall time, goals
        metric: val/bpc
        tokens_per_step: 2048
        goals: [{measure: throughput, of: dni, against: tbptt, at_least: 1.5}]

Cell names join the labels (``copy_T2_dni_s0``; numbers carry their axis) and name the
folders ``<runs>/<cell>/``: ``version_0/`` (the run), ``fit.log``, ``cell.json``, then
``done.json`` or ``failed.json`` (``dnirnn.sweep.runner``). A metric given as a bare key
takes the run's best value for the task metrics of ``dnirnn plot`` (max level solved, min
validation BPC / perplexity / bits) and the last value otherwise; ``wall_s`` is the cell's
wall time (a table of a grid without ``metrics:`` shows it). Numbers are read from the
cells' files when the report is written (``dnirnn.sweep.report``), so ``--report`` after
editing ``metrics:`` needs no rerun; a cell without a folder is read from its row of the
report's committed ``cells.csv``. A report never replaces finished cells it does not have
(their folders here failed, or are partial or stale): ``--report`` then refuses (exit 2,
nothing written; ``--out`` writes it beside), and a sweep that ran first keeps the old files
as ``*.before-sweep.md`` / ``.csv``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import platform
import signal
import sys
import time

from dnirnn.sweep.grid import GridError, list_grids, load_grid
from dnirnn.sweep.parts import shown

__all__ = ["main", "load_grid"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dnirnn sweep", allow_abbrev=False,
        description="Run a grid of `dnirnn fit` cells (recipes x variants x seeds), resumably, "
                    "and write a report: tables (mean ± spread over seeds) and plots.",
        epilog="The grid format: python -c 'import dnirnn.sweep; help(dnirnn.sweep)', or "
               "the README's section on sweeps; examples in grids/.")
    p.add_argument("grid", nargs="?", help="a grid file, or a shipped grid's name")
    p.add_argument("--jobs", "-j", type=int, default=1, help="cells run at once (default 1)")
    p.add_argument("--dry-run", action="store_true",
                   help="print every cell, its state and its commands; run and write nothing")
    p.add_argument("--report", action="store_true",
                   help="only write the report from the cells' files; run nothing")
    p.add_argument("--fresh", action="store_true",
                   help="restart unfinished cells from scratch instead of resuming them")
    p.add_argument("--only", default=None, metavar="PATTERNS",
                   help="run only the cells whose names match these comma-separated globs "
                        "(the report still covers every cell)")
    p.add_argument("--runs", default=None, help="the cells' folder (default: the grid's runs:)")
    p.add_argument("--out", default=None, help="the report (default: the grid's out:)")
    p.add_argument("--list", action="store_true", help="list the shipped grids")
    return p


def main(argv: list[str] | None = None) -> None:
    p = _parser()
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if a.list:
        grids = list_grids()
        if not grids:
            p.exit(2, "dnirnn sweep: error: no shipped grids found (neither the installed "
                      "package's dnirnn/grids nor a checkout's grids/); give a grid file.\n")
        for name, path in grids.items():
            print(f"{name:<24} {path}")
        return
    if not a.grid:
        p.error("give a grid file (or --list)")
    if a.jobs < 1:
        p.error("--jobs must be >= 1")
    try:
        grid = load_grid(a.grid, a.runs, a.out)
    except GridError as e:
        p.exit(2, f"dnirnn sweep: error: {e}\n")
    from dnirnn.sweep.runner import Runner, state

    cells = grid.cells
    if a.only:
        pats = [x for x in a.only.split(",") if x]
        cells = [c for c in cells if any(fnmatch.fnmatchcase(c.name, x) for x in pats)]
        if not cells:
            p.exit(2, f"dnirnn sweep: error: --only {a.only} matches no cell of {grid.path}\n")
    if a.dry_run:
        try:
            return dry_run(grid, cells)
        except BrokenPipeError:  # (| head)
            sys.stdout = None
            return
    if not a.report:
        grid.runs.mkdir(parents=True, exist_ok=True)
        meta = {"grid": a.grid, "jobs": a.jobs, "host": platform.node(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        (grid.runs / "sweep.json").write_text(json.dumps(meta, indent=1) + "\n")
        todo = [c for c in cells if state(c) not in ("done", "stale")]
        print(f"{grid.path}: {len(cells)} cells, {len(cells) - len(todo)} done, "
              f"{len(todo)} to run, {a.jobs} at a time; folders in {grid.runs}", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)  # (a scheduler's stop: as Ctrl-C)
        try:
            Runner(a.jobs, a.fresh, say=lambda m: print(m, flush=True)).run(todo)
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        (grid.runs / "sweep.json").write_text(json.dumps(meta, indent=1) + "\n")
    from dnirnn.sweep.cells import cell_data
    from dnirnn.sweep.report import lost_cells, set_aside, write_csv, write_report

    lost = lost_cells(grid, cell_data(grid))
    if lost:  # a report never replaces results of cells it does not have
        names = ", ".join(f"{d.cell.name} ({d.state})" for d in lost)
        if a.report:
            p.exit(2, f"dnirnn sweep: error: {grid.out} holds {len(lost)} finished cell(s) "
                      f"that a report written now would not have: {names}. Their folders "
                      f"here are not finished. {grid.out} was left as it is. Finish them "
                      f"(dnirnn sweep {a.grid}), or write the report beside it with "
                      f"--out {grid.out.with_name(grid.out.stem + '_new.md')}.\n")
        kept_as = set_aside(grid)
        print(f"{grid.out} held {len(lost)} finished cell(s) that this report does not have "
              f"({names}): kept as {' and '.join(map(str, kept_as))}", flush=True)
    out, pngs = write_report(grid)
    data = cell_data(grid)
    table = write_csv(grid, out.with_suffix("") / "cells.csv")
    states = [d.state for d in data]
    recorded = sum(d.recorded is not None for d in data)
    print(f"wrote {out}, {len(pngs)} plots and {table}: "
          f"{states.count('done')} of {len(states)} cells done"
          + (f" ({recorded} as recorded in {table}: no folder here)" if recorded else "")
          + "".join(f", {states.count(s)} {s}" for s in ("failed", "partial", "new", "stale")
                    if states.count(s)), flush=True)
    if not a.report and any(state(c) == "failed" for c in cells):
        raise SystemExit(1)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def dry_run(grid, cells) -> None:
    from dnirnn.sweep.runner import checkpoint_step, last_checkpoint, state

    print(f"# {grid.path}: {len(cells)} cells; folders in {grid.runs}; report {grid.out}")
    for c in cells:
        st = state(c)
        if st == "partial":
            step = checkpoint_step(last_checkpoint(c.root))
            st += f", resumes from step {step}"
        print(f"\n{c.name}  [{st}]")
        print(f"  {shown(c.fit_args(), c.threads)}")
        if c.test:
            print(f"  then {shown(c.test_args(f'<run>/checkpoints/{c.test}.ckpt'), c.threads)}")
