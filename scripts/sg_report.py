"""The report of ``scripts/synthetic_gradients.py``: tables and plots from finished cells.

Reads every ``<runs>/<cell>/done.json`` (level solved, phase cosines of the second half,
the command) and the cells' ``diagnostics.jsonl`` (cos per boundary position); writes the
markdown report and PNGs beside it (``results/synthetic_gradients/``). The section between
``<!-- notes -->`` and ``<!-- /notes -->`` is written by hand and kept on regeneration.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ["tbptt", "dni_paper", "+rls", "+positions", "+lambda", "+guard", "rls+positions",
         "rls+positions+lambda0.5", "rls+positions+lambda", "best", "best+phase", "oracle"]
COLOR = {v: plt.cm.tab20(i) for i, v in enumerate(ORDER)}
CELL = re.compile(r"(?P<task>[a-z_]+)_T(?P<T>\d+)_s(?P<seed>\d+)_(?P<variant>.+)")


def load(runs: Path) -> list[dict]:
    out = []
    for done in sorted(runs.glob("*/done.json")):
        rec = json.loads(done.read_text())
        m = CELL.fullmatch(done.parent.name)
        if m:
            out.append({**rec, **m.groupdict(), "T": int(m["T"]), "seed": int(m["seed"]),
                        "root": done.parent})
    return out


def _key(v: str) -> int:
    return ORDER.index(v) if v in ORDER else len(ORDER)


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def level_table(recs: list[dict]) -> list[str]:
    cols = sorted({(r["task"], r["T"]) for r in recs}, key=lambda c: (c[0] != "repeat_copy", c))
    by = defaultdict(dict)
    for r in recs:
        by[r["variant"]][(r["task"], r["T"], r["seed"])] = r["level"]
    head = "| variant | " + " | ".join(f"{t} T={T}" for t, T in cols) + " |"
    lines = [head, "|---" * (len(cols) + 1) + "|"]
    for v in sorted(by, key=_key):
        cells = []
        for t, T in cols:
            levels = [by[v][k] for k in sorted(by[v]) if k[:2] == (t, T)]
            cells.append(f"**{_median(levels):g}** ({', '.join(map(str, levels))})"
                         if levels else "")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return lines


def cos_table(recs: list[dict]) -> list[str]:
    groups = defaultdict(list)
    for r in recs:
        if r.get("cos_input") is not None:
            groups[(r["task"], r["T"], r["variant"])].append(r)
    lines = ["| task | T | variant | seeds | cos input phase | cos answer phase |",
             "|---|---|---|---|---|---|"]
    for (t, T, v), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                  _key(kv[0][2]))):
        ci = statistics.fmean(r["cos_input"] for r in rs)
        ca = [r["cos_answer"] for r in rs if r.get("cos_answer") is not None]
        lines.append(f"| {t} | {T} | {v} | {len(rs)} | {ci:.2f} | "
                     f"{statistics.fmean(ca):.2f} |" if ca else f"| {t} | {T} | {v} | "
                     f"{len(rs)} | {ci:.2f} | |")
    return lines


def _diag(root: Path) -> list[dict]:
    versions = sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    path = versions[-1] / "diagnostics.jsonl" if versions else None
    return [json.loads(x) for x in path.open()] if path and path.exists() else []


def _save(fig, ax, path: Path) -> Path:
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_levels(recs: list[dict], out: Path) -> list[Path]:
    paths = []
    for (task, T) in sorted({(r["task"], r["T"]) for r in recs}):
        fig, ax = plt.subplots(figsize=(7, 4))
        for r in sorted(recs, key=lambda r: (_key(r["variant"]), r["seed"])):
            if (r["task"], r["T"]) != (task, T) or not r.get("levels"):
                continue
            steps, levels = zip(*r["levels"])
            label = r["variant"] if r["seed"] == min(
                x["seed"] for x in recs if (x["task"], x["T"], x["variant"]) ==
                (task, T, r["variant"])) else None
            ax.step(steps, levels, where="post", color=COLOR.get(r["variant"]), alpha=0.8,
                    label=label)
        ax.set(title=f"{task}, T={T}: level solved (one line per seed)",
               xlabel="training step", ylabel="max level solved (L*R)")
        paths.append(_save(fig, ax, out / f"levels_{task}_T{T}.png"))
    return paths


def plot_cos_by_position(recs: list[dict], out: Path) -> list[Path]:
    """Mean cos(SG, true) per boundary index k over the second half, per variant."""
    paths = []
    for (task, T) in sorted({(r["task"], r["T"]) for r in recs}):
        fig, ax = plt.subplots(figsize=(7, 4))
        found = False
        for v in sorted({r["variant"] for r in recs} - {"oracle"}, key=_key):  # (oracle: 1)
            per_k = defaultdict(list)
            for r in recs:
                if (r["task"], r["T"], r["variant"]) != (task, T, v):
                    continue
                rows = _diag(r["root"])
                half = max((x["step"] for x in rows), default=0) // 2
                for x in rows:
                    if x["step"] >= half and "cos" in x:
                        per_k[x["k"]].append(x["cos"])
            if per_k:
                ks = sorted(per_k)
                ax.plot(ks, [statistics.fmean(per_k[k]) for k in ks], marker="o", label=v,
                        color=COLOR.get(v))
                found = True
        if not found:
            plt.close(fig)
            continue
        ax.axhline(0, color="k", lw=0.5)
        ax.set(title=f"{task}, T={T}: cos(SG, true future gradient) per boundary, 2nd half",
               xlabel="boundary index k within the episode", ylabel="mean cosine")
        paths.append(_save(fig, ax, out / f"cos_by_position_{task}_T{T}.png"))
    return paths


def write_report(runs: Path, out: Path) -> None:
    recs = load(runs)
    fig_dir = out.with_suffix("")
    fig_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_levels(recs, fig_dir) + plot_cos_by_position(recs, fig_dir)
    old = out.read_text() if out.exists() else ""
    m = re.search(r"<!-- notes -->.*?<!-- /notes -->", old, re.S)
    notes = m.group(0) if m else "<!-- notes -->\n(notes)\n<!-- /notes -->"
    lines = ["# Synthetic gradients that keep up with the core (issue 11)", "", notes, "",
             "## Level solved (median over seeds, each seed in brackets)", "",
             *level_table(recs), "",
             "## cos(SG, true future gradient), second half of training, by phase", "",
             "Mean over the diagnostics every 50 steps (all boundaries of the phase) and over "
             "seeds.", "", *cos_table(recs), "", "## Plots", ""]
    lines += [f"![{p.stem}]({fig_dir.name}/{p.name})" for p in plots]
    lines += ["", "## Cells (command, wall time)", "", "| cell | level | s | command |",
              "|---|---|---|---|"]
    for r in sorted(recs, key=lambda r: (r["task"], r["T"], _key(r["variant"]), r["seed"])):
        lines.append(f"| {r['cell']} | {r['level']} | {r['seconds']:.0f} | `{r['cmd']}` |")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out} and {len(plots)} plots")
