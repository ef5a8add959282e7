"""Issue 18, item 5: each bad input is one paragraph that says what was wrong and what to
do, with exit code 2, and nothing written (docs/errors.md lists the cases)."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest

import dnirnn.runs
from dnirnn.main import main

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
TINY = ["--model.hidden_size=8", "--data.init_args.batch_size=4",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--wandb=false"]


@pytest.fixture(autouse=True)
def _sandbox(cli_sandbox):
    """Every test here runs in the CLI sandbox (tests/conftest.py)."""


def error(capsys, *args: str) -> str:
    """Runs the CLI expecting exit code 2; returns its one ``dnirnn:`` line (Lightning's own
    INFO lines may precede it on stderr), having checked there is no other."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    assert info.value.code == 2
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("dnirnn")]
    assert len(ours) == 1, err
    assert "Traceback" not in err and "Namespace(" not in err and "Union" not in err, err
    assert ours[0].startswith("dnirnn: error: ")
    return ours[0]


@pytest.mark.parametrize("option,message", [
    ("--model.window=0", "model.window: must be an integer >= 1 (got 0)"),
    ("--model.lr=-0.01", "model.lr: must be > 0 (got -0.01)"),
    ("--data.init_args.batch_size=0", "data.batch_size must be >= 1, got 0"),
    ("--checkpoint_every=soon", "checkpoint_every: 'soon' is neither a number of training "
                                "steps nor a duration; use e.g. --checkpoint_every=500"),
    ("--keep_checkpoints=-1", "keep_checkpoints: must be >= 0"),
    ("--keep_checkpoints=abc", "keep_checkpoints: Expected a <class 'int'>. Got value: abc"),
    ("--wandb=maybe", "wandb: Expected a <class 'bool'>"),
])
def test_a_bad_value_is_one_line_naming_the_field(tmp_path, capsys, option, message):
    root = tmp_path / "r"
    line = error(capsys, "fit", "--config", "copy_dni", f"--trainer.default_root_dir={root}",
                 *TINY, option)
    assert line.startswith(f"dnirnn: error: {message}")
    assert not root.exists()


def test_unknown_config_suggests_the_recipe_and_the_listing(tmp_path, capsys):
    line = error(capsys, "fit", "--config", "copy_dnii")
    assert "--config copy_dnii: no such file, and no shipped recipe or overlay" in line
    assert "Did you mean --config copy_dni?" in line and "`dnirnn recipes` lists" in line
    line = error(capsys, "fit", "--config", "copy_dni", "--config", "overlays/dni_papr")
    assert "Did you mean --config dni_paper?" in line
    line = error(capsys, "fit", "--config", str(tmp_path / "nowhere.yaml"))
    assert f"--config {tmp_path / 'nowhere.yaml'}: no such file" in line


def test_abbreviated_options_are_refused_with_the_full_name(capsys):
    line = error(capsys, "fit", "--config", "copy_dni", "--trainer.max_step=10")
    assert "unknown option --trainer.max_step; did you mean --trainer.max_steps?" in line
    line = error(capsys, "fit", "--config", "copy_dni", "--keep_checkpoint=1")
    assert "did you mean --keep_checkpoints?" in line


def test_options_before_config_are_applied_after_it(tmp_path):
    """``--data.init_args.seed`` before the recipe that sets data.class_path is accepted, and
    an option written before ``--config`` is not overwritten by the recipe's value."""
    root = tmp_path / "r"
    main(["fit", "--trainer.max_steps=2", "--data.init_args.seed=3", "--model.window=3",
          "--config", "copy_dni", f"--trainer.default_root_dir={root}", *TINY])
    s = json.loads((root / "version_0" / "summary.json").read_text())
    assert s["global_step"] == 2  # not the recipe's 3000
    config = (root / "version_0" / "config.yaml").read_text()
    assert "seed: 3" in config and "window: 3" in config


def test_read_only_output_folder_is_not_a_full_disk(tmp_path, capsys, monkeypatch):
    """An output folder that cannot be written is found before the run starts, and the
    message says so, not "free space ... resume with --ckpt_path"."""
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(dnirnn.runs.tempfile, "mkstemp", denied)
    root = tmp_path / "r"
    line = error(capsys, "fit", "--config", "copy_dni", f"--trainer.default_root_dir={root}",
                 *TINY)
    assert f"the output folder {root} (trainer.default_root_dir) cannot be written" in line
    assert "Permission denied" in line and "Nothing was written" in line
    assert "Free space" not in line and "--ckpt_path" not in line
    assert not root.exists()


def test_output_folder_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    root = tmp_path / "file" / "runs"
    line = error(capsys, "fit", "--config", "copy_dni", f"--trainer.default_root_dir={root}",
                 *TINY)
    assert "cannot be written" in line and "Not a directory" in line
    assert Path(tmp_path / "file").is_file()


def test_every_test_docs_errors_names_is_in_a_file_it_lists():
    """docs/errors.md names, per row, the test that states it, and lists the files they are in:
    every named test is defined in one of those files (the table cannot drift from the tests)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    files = set(re.findall(r"`(tests/test_\w+\.py)`", text))
    named = set(re.findall(r"`(test_\w+)`", text))
    assert len(files) >= 5 and len(named) >= 20
    defined = {name for f in files for name in re.findall(
        r"^def (test_\w+)", (Path(__file__).resolve().parents[1] / f).read_text(), re.M)}
    assert named <= defined, sorted(named - defined)
