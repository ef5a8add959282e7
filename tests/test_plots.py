"""Issue 32 items 12-14: plots that say what they draw. Smoothed lines say so and sit over the
values as logged; seeds are told apart by shades of their group's colour, and groups are
named by what differs."""

from __future__ import annotations

import colorsys
import csv
from pathlib import Path

from dnirnn import compare

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
