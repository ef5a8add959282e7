"""``dnirnn plot RUN... [--out FILE.png]`` (alias ``compare``): runs side by side.

A RUN is a run folder (``runs/copy_dni/version_0``, holding ``metrics.csv``) or a folder of
them (``runs/copy_dni``: every ``version_*``). The command draws, one panel each, whatever
the runs logged of: training loss, the validation metric (``val/bpc``, ``val/ppl``,
``val/bits_per_step``), the curriculum level, and the synthetic-gradient cosines
(``diag/*cos*`` against the true future gradient, ``train/sg_cos`` against the bootstrapped
target; ``train/*`` and ``diag/*`` smoothed, over their values as logged: ``figure``). It
prints a table of each run's best value of its task's metric, and one line per group of runs
that differ only by seed, with mean ± standard deviation (min..max) over them.
No Lightning import: it reads the files only.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# (metric, better): the first one a run logged ranks it
HEADLINE = (("curriculum/max_delay_solved", "max"), ("curriculum/max_level_solved", "max"),
            ("val/bpc", "min"), ("val/ppl", "min"), ("val/bits_per_step", "min"))
VAL_KEYS = ("val/bpc", "val/ppl", "val/bits_per_step")
# keys that may differ between runs of one group (seeds, where the run went, resumption)
SEED_KEYS = ("seed_everything", "ckpt_path", "data.init_args.seed", "trainer.default_root_dir")


@dataclass
class Run:
    """One run folder: its metric series ``{key: [(step, value), ...]}`` and its config."""

    path: Path
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"

    def best(self) -> tuple[str, float, int] | None:
        """``(metric, best value, its step)`` of the task's headline metric: summary.json's
        (the step of best.ckpt), else the best row of metrics.csv (its logged step)."""
        best = self.summary.get("best")
        if best:
            return best["metric"], best["value"], best["step"]
        for key, better in HEADLINE:
            points = [(s, v) for s, v in self.series.get(key, []) if math.isfinite(v)]
            if points:
                pick = max if better == "max" else min
                value = pick(v for _, v in points)
                return key, value, min(s for s, v in points if v == value)
        return None

    def group_key(self) -> str:
        flat = _flatten(self.config)
        return yaml.safe_dump({k: v for k, v in flat.items() if k not in SEED_KEYS},
                               sort_keys=True)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def find_runs(paths: list[str]) -> list[Path]:
    """Run folders named by ``paths`` (each a run folder or a folder of ``version_*``)."""
    out = []
    for p in map(Path, paths):
        if (p / "metrics.csv").is_file():
            out.append(p)
            continue
        versions = sorted((v for v in p.glob("version_*") if (v / "metrics.csv").is_file()),
                          key=lambda v: int(v.name.split("_")[1]) if v.name[8:].isdigit() else 0)
        if not versions:
            raise FileNotFoundError(f"{p}: no metrics.csv in it or in a version_* folder in it")
        out += versions
    return out


def load_run(path: Path) -> Run:
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with open(path / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row["step"]))
            for k, v in row.items():
                if k not in ("step", "epoch") and v not in ("", None):
                    series[k].append((step, float(v)))
    config = {}
    if (path / "config.yaml").is_file():
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    summary = {}
    if (path / "summary.json").is_file():
        summary = json.loads((path / "summary.json").read_text())
    return Run(path, dict(series), config, summary)


def groups(runs: list[Run], names: dict[Path, str] | None = None) -> dict[str, list[Run]]:
    """Runs grouped by config up to the seed (or by ``names``: run folder -> its group's
    name, a sweep's labels), each group named by what sets it apart: ``names``, else its
    folders' name without the seed (``copy_dni``; a sweep's ``tbptt_s0``, ``tbptt_s1``:
    ``tbptt``) where that tells the groups apart, else the options that differ
    (``window=2``)."""
    by_key: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_key[names[r.path] if names and r.path in names else r.group_key()].append(r)
    members = list(by_key.values())
    flats = [{k: v for k, v in _flatten(m[0].config).items() if k not in SEED_KEYS}
             for m in members]
    keys = sorted({k for f in flats for k in f}, key=lambda k: (k.count("."), k))
    differ = [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]
    folders = [_folder_name(m) for m in members]
    named: dict[str, list[Run]] = {}
    for flat, folder, group in zip(flats, folders, members):
        if names and group[0].path in names:
            name = names[group[0].path]
        elif len(set(folders)) == len(folders):
            name = folder
        else:
            name = ", ".join(f"{_short(k)}={_value(flat.get(k))}" for k in differ[:3]) \
                + (", ..." if len(differ) > 3 else "") or folder
        named[name if name not in named else f"{name} ({len(named) + 1})"] = group
    return named


def _short(key: str) -> str:
    """``model.init_args.synthesizer.kind`` -> ``synthesizer.kind``."""
    parts = [p for p in key.split(".") if p != "init_args"]
    return ".".join(parts[1:] if parts[0] == "model" and len(parts) > 1 else parts)


def _value(v: object) -> str:
    text = "null" if v is None else str(v)
    return text if len(text) <= 24 else text[:21] + "..."


def _folder_name(members: list[Run]) -> str:
    """The folders' common name without a seed's suffix (a sweep's ``tbptt_s0``,
    ``tbptt_s1`` -> ``tbptt``; runs of ``copy_dni/version_N`` -> ``copy_dni``)."""
    names = [m.path.parent.name.removesuffix(f"_s{seed_of(m)}") for m in members]
    common = names[0]
    for n in names[1:]:
        while not n.startswith(common):
            common = common[:-1]
    return common.rstrip("_") or names[0]


def seed_of(run: Run) -> object:
    return run.config.get("seed_everything")


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def table(runs: list[Run]) -> str:
    """The per-run best values and, for groups of seeds, mean ± std (min..max)."""
    lines = [f"{'run':<36} {'metric':<28} {'best':>9} {'at step':>8}"]
    for r in runs:
        b = r.best()
        lines.append(f"{r.name:<36} " + (f"{b[0]:<28} {_fmt(b[1]):>9} {b[2]:>8}" if b
                                         else f"{'(no validation logged)':<28}"))
    multi = {n: g for n, g in groups(runs).items() if len(g) > 1}
    if multi:
        lines.append("")
        lines.append(f"{'group (differ only by seed)':<36} {'metric':<28} "
                     f"{'mean ± std (min..max)':>30} {'n':>3}")
        for name, members in multi.items():
            bests = [b for b in (r.best() for r in members) if b]
            if not bests:
                continue
            values = [b[1] for b in bests]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            spread = f"{_fmt(statistics.mean(values))} ± {_fmt(sd)} " \
                     f"({_fmt(min(values))}..{_fmt(max(values))})"
            lines.append(f"{name:<36} {bests[0][0]:<28} {spread:>30} {len(values):>3}")
    return "\n".join(lines)


def print_table(paths: list[Path | str]) -> None:
    runs = [load_run(p) for p in find_runs([str(p) for p in paths])]
    print(table(runs))


def panels(runs: list[Run]) -> list[tuple[str, list[str]]]:
    """``(title, keys)`` of the panels the runs have data for."""
    keys = set().union(*(r.series for r in runs))
    out = [("training loss (nats per scored step)", ["train/loss"])]
    out += [(k, [k]) for k in VAL_KEYS if k in keys]
    out.append(("curriculum level (solid) and max level solved (dashed)",
                ["curriculum/level", "curriculum/max_level_solved"]))
    out.append(("curriculum delay (solid) and max delay solved (dashed)",
                ["curriculum/delay", "curriculum/max_delay_solved"]))
    cos = sorted(k for k in keys if k.startswith("diag/") and "cos" in k)
    out.append(("synthetic gradient vs true future gradient: cosine", cos))
    out.append(("synthetic gradient vs its bootstrapped target: cosine", ["train/sg_cos"]))
    return [(t, [k for k in ks if k in keys]) for t, ks in out if any(k in keys for k in ks)]


def _smooth(values: list[float], n: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - n] if i >= n else 0.0)
        out.append(acc / min(i + 1, n))
    return out


def along(run: Run, key: str) -> Callable[[float], float] | None:
    """The step -> value map of ``run``'s series ``key`` (e.g. ``time/train_s``), linear
    between the logged steps and proportional beyond them; None if the run has no such
    series. It puts other series on that axis (``plot(x=...)``)."""
    pts = sorted(run.series.get(key) or [])
    if not pts:
        return None
    steps, xs = [s for s, _ in pts], [v for _, v in pts]

    def at(step: float) -> float:
        i = bisect.bisect_left(steps, step)
        if i < len(steps) and steps[i] == step:
            return xs[i]
        if i == 0 or i == len(steps):  # before the first / after the last logged step
            s0, x0 = (steps[0], xs[0]) if i == 0 else (steps[-1], xs[-1])
            return x0 * step / s0 if s0 else x0
        s0, s1, x0, x1 = steps[i - 1], steps[i], xs[i - 1], xs[i]
        return x0 + (x1 - x0) * (step - s0) / (s1 - s0)

    return at


SMOOTH = 5  # train/* and diag/* lines: the mean of the last SMOOTH logged values


def plot(runs: list[Run], out: Path, x: str | None = None,
         names: dict[Path, str] | None = None) -> Path:
    """Draws the panels of ``runs`` into ``out`` (PNG); see ``figure``."""
    import matplotlib.pyplot as plt

    fig = figure(runs, x, names)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def shades(runs: list[Run], names: dict[Path, str] | None = None
           ) -> dict[Path, tuple[tuple[float, float, float], str]]:
    """Each run's colour and legend label: a hue per group (``groups``), and within a group
    one shade of it per seed, from the full hue to a light one (``<group> s<seed>``)."""
    from matplotlib.colors import to_rgb

    out = {}
    for i, (name, members) in enumerate(groups(runs, names).items()):
        hue = to_rgb(f"C{i % 10}")
        members = sorted(members, key=lambda r: str(seed_of(r)))
        for j, r in enumerate(members):
            light = 0.6 * j / (len(members) - 1) if len(members) > 1 else 0.0
            colour = tuple(c + (1 - c) * light for c in hue)
            seed = seed_of(r)
            label = name if len(members) == 1 else (
                f"{name} s{seed}" if seed is not None else f"{name} ({r.path.parent.name})")
            out[r.path] = (colour, label)
    return out


def figure(runs: list[Run], x: str | None = None, names: dict[Path, str] | None = None):
    """The panels of ``runs`` as a matplotlib figure. A colour per group of seeds, a shade
    per seed (``shades``; ``names``: see ``groups``). ``train/*`` and ``diag/*`` are noisy:
    their lines are the mean of the last ``SMOOTH`` logged values, drawn over the logged
    values themselves (faint), and the panel's axis says so. ``x``: a series to put on the
    horizontal axis instead of the training step (e.g. ``time/train_s``, logged by
    ``dnirnn.wallclock.WallClock``); runs without it are left out."""
    if x is not None:
        maps = {r.path: along(r, x) for r in runs}
        runs = [r for r in runs if maps[r.path] is not None]
        if not runs:
            raise ValueError(f"no run logged {x!r}: nothing to plot against it")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    todo = panels(runs)
    cols = min(2, len(todo))
    rows = math.ceil(len(todo) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.6 * rows), squeeze=False)
    colour = shades(runs, names)
    for ax, (title, keys) in zip(axes.flat, todo):
        smoothed = False
        for r in runs:
            c, name = colour[r.path]
            for j, key in enumerate(keys):
                pts = r.series.get(key)
                if not pts:
                    continue
                steps, values = zip(*pts)
                if x is not None:
                    steps = [maps[r.path](st) for st in steps]
                style = ["-", "--", ":", "-."][j % 4]
                if key.startswith(("train/", "diag/")):
                    ax.plot(steps, values, style, color=c, lw=0.6, alpha=0.25)  # as logged
                    values, smoothed = _smooth(list(values), SMOOTH), True
                label = name if len(keys) == 1 else f"{name} {key.split('/')[-1]}"
                ax.plot(steps, values, style, color=c, lw=1.2, alpha=0.9, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step" if x is None else x)
        if smoothed:
            ax.set_ylabel(f"mean of the last {SMOOTH} logged values\n(faint: as logged)",
                          fontsize=8)
        ax.grid(alpha=0.3)
        if "cos" in title:
            ax.axhline(0.0, color="grey", lw=0.8)
    for ax in list(axes.flat)[len(todo):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))),
               fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04 + 0.02 * math.ceil(len(labels) / 4), 1, 1))
    return fig


def main(args: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="dnirnn plot", description=__doc__.split("\n\n")[1],
        epilog="example: dnirnn plot runs/copy_tbptt runs/copy_dni --out copy.png")
    p.add_argument("runs", nargs="+", help="run folders, or folders of version_* run folders")
    p.add_argument("--out", default="runs.png", help="the PNG to write (default: runs.png)")
    p.add_argument("--no-plot", action="store_true", help="print the table only")
    a = p.parse_args(args)
    try:
        runs = [load_run(path) for path in find_runs(a.runs)]
    except (OSError, ValueError, KeyError) as e:
        p.exit(2, f"dnirnn: error: {e}\n")
    print(table(runs))
    if not a.no_plot:
        print(f"\nwrote {plot(runs, Path(a.out))}")
