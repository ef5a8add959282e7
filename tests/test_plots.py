"""Issue 32 items 12-14: plots that say what they draw. Smoothed lines say so and sit over the
values as logged; seeds are told apart by shades of their group's colour, and groups are
named by what differs; a sweep's default figures put the methods side by side."""

from __future__ import annotations

import colorsys
import csv
from pathlib import Path

import pytest

from dnirnn import compare
from dnirnn.sweep import plots as sweep_plots
from dnirnn.sweep.grid import load_grid
from dnirnn.sweep.report import write_report

from .sweep_common import fake_cell, grid_file

LOSSES = [3.0, 1.0, 2.5, 1.5, 0.5, 2.0, 1.0]


def fake_run(folder: Path, seed: int = 0, window: int = 8,
             losses: list[float] = LOSSES) -> compare.Run:
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "train/loss", "val/bpc"])
        w.writerows([10 * i, v, 2.0 - 0.1 * i] for i, v in enumerate(losses))
    (folder / "config.yaml").write_text(f"seed_everything: {seed}\nmodel:\n  window: {window}\n"
                                        f"trainer:\n  default_root_dir: {folder.parent}\n")
    return compare.load_run(folder)


def axis(fig, title: str):
    return next(a for a in fig.axes if a.get_title().startswith(title))


def test_smoothed_lines_say_so_over_the_values_as_logged(tmp_path):
    """Item 12: the training loss is drawn as logged (the value of metrics.csv at its step)
    and as the trailing mean, and the axis names the mean; a validation metric, not
    smoothed, is drawn as logged with no such label."""
    fig = compare.figure([fake_run(tmp_path / "a/version_0")])
    loss = axis(fig, "training loss")
    drawn = [list(map(float, line.get_ydata())) for line in loss.get_lines()]
    assert LOSSES in drawn and compare._smooth(LOSSES, compare.SMOOTH) in drawn
    assert f"mean of the last {compare.SMOOTH} logged values" in loss.get_ylabel()
    assert "as logged" in loss.get_ylabel()
    val = axis(fig, "val/bpc")
    assert [list(map(float, line.get_ydata())) for line in val.get_lines()] == \
        [[2.0 - 0.1 * i for i in range(len(LOSSES))]]
    assert val.get_ylabel() == ""


def hue(rgb) -> float:
    return round(colorsys.rgb_to_hsv(*rgb)[0], 6)


def test_seeds_are_shades_of_their_groups_colour_and_groups_say_what_differs(tmp_path):
    """Item 13: two seeds of window 8 and one run of window 2 in one folder: the groups are
    named window=8 and window=2 (not after their first run's folder), each seed has its own
    shade of its group's hue, and the legend says which seed is which."""
    runs = [fake_run(tmp_path / "x/version_0", 0, 8), fake_run(tmp_path / "x/version_1", 1, 8),
            fake_run(tmp_path / "x/version_2", 0, 2)]
    assert {k: [r.path.name for r in v] for k, v in compare.groups(runs).items()} == {
        "window=8": ["version_0", "version_1"], "window=2": ["version_2"]}
    shades = compare.shades(runs)
    (c0, l0), (c1, l1), (c2, l2) = (shades[r.path] for r in runs)
    assert (l0, l1, l2) == ("window=8 s0", "window=8 s1", "window=2")
    assert len({c0, c1, c2}) == 3 and hue(c0) == hue(c1) != hue(c2)
    legend = [t.get_text() for t in compare.figure(runs).legends[0].get_texts()]
    assert legend == ["window=8 s0", "window=8 s1", "window=2"]
    # one folder per run (a sweep's cells): a group is named by its folders, less the seed
    cells = [fake_run(tmp_path / f"g/dni_s{s}/version_0", s, 8) for s in (0, 1)]
    cells.append(fake_run(tmp_path / "g/tbptt_s0/version_0", 0, 2))
    assert set(compare.groups(cells)) == {"dni", "tbptt"}


@pytest.mark.parametrize("axes,tables,by", [
    ("{mode: [tbptt, dni]}", "", []),
    ("{task: [copy, repeat_copy], mode: [tbptt, dni]}", "", ["task"]),
    ("{variant: [tbptt, dni], T: [2, 4]}", "tables: [{columns: variant}]", ["T"]),
])
def test_the_default_sweep_plots_put_the_methods_in_one_figure(tmp_path, monkeypatch, axes,
                                                               tables, by):
    """Item 14: without `plots:`, one figure per label of the axes other than the methods'
    (the first table's columns, else the last axis), each with every method and seed in
    it, named by the method."""
    monkeypatch.chdir(tmp_path)
    g = load_grid(grid_file(tmp_path, f"runs: runs\nout: results/r.md\nrecipe: copy_dni\n"
                                      f"axes: {axes}\nseeds: [0, 1]\n{tables}\n"))
    assert sweep_plots.default_plots(g) == [{"by": by, "kind": "compare"}]
    for c in g.cells:
        fake_cell(c, [{"step": s, "train/loss": 1.0 / (s + 1)} for s in range(3)])
    drawn = []
    monkeypatch.setattr(compare, "plot", lambda runs, path, x=None, names=None: drawn.append(
        sorted(set(names.values()))) or path)
    write_report(g)
    methods = sorted({c.labels[a] for c in g.cells for a in c.labels
                      if a not in ("seed", *by)})
    assert drawn and all(names == methods for names in drawn)
    assert len(drawn) == len({tuple(c.labels[a] for a in by) for c in g.cells})
