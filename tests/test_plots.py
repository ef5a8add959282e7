"""Issue 32 items 12-14: plots that say what they draw. Smoothed lines say so and sit over the
values as logged."""

from __future__ import annotations

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
