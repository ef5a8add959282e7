"""Issue 32 item 8: options laid over a recipe that the run never reads are named in one
warning line (where they came from and why they do nothing), after the checks (never before
an error), and a recipe's own settings are not."""

from __future__ import annotations

import pytest

from dnirnn.main import main
from dnirnn.no_effect import given, ignored, unread
from dnirnn.recipe import configs_first, resolve_config_args

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
TINY = ["--model.hidden_size=8", "--data.init_args.batch_size=4", "--trainer.max_steps=1",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--wandb=false"]
WARNING = "dnirnn: warning: options with no effect on this run"


@pytest.fixture(autouse=True)
def _sandbox(cli_sandbox):
    """Every test here runs in the CLI sandbox (tests/conftest.py)."""


def run(tmp_path, capsys, *args: str) -> str:
    main(["fit", *args, f"--trainer.default_root_dir={tmp_path / 'r'}", *TINY])
    return capsys.readouterr().err


def test_the_paper_overlay_over_tbptt_is_named_as_doing_nothing(tmp_path, capsys):
    err = run(tmp_path, capsys, "--config", "copy_tbptt", "--config", "dni_paper")
    (line,) = [x for x in err.splitlines() if x.startswith("dnirnn:")]
    assert line.startswith(WARNING)
    assert "model.synthesizer.{kind, fit, positions, context, lr}, model.targets.scale" in line
    assert "(from --config dni_paper): model.boundary=tbptt trains no synthesizer" in line


@pytest.mark.parametrize("configs", [["copy_tbptt"], ["copy_dni", "dni_paper"],
                                     ["copy_dni", "--model.boundary=tbptt"]])
def test_what_takes_effect_or_comes_from_the_recipe_is_not_warned_of(tmp_path, capsys,
                                                                     configs):
    args = [a for c in configs for a in (["--config", c] if not c.startswith("--") else [c])]
    assert WARNING not in run(tmp_path, capsys, *args)


def test_no_warning_before_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", "copy_tbptt", "--config", "dni_paper", *TINY,
              f"--trainer.default_root_dir={tmp_path / 'r'}", "--trainer.precision=16-mixed"])
    ours = [x for x in capsys.readouterr().err.splitlines() if x.startswith("dnirnn")]
    assert len(ours) == 1 and ours[0].startswith("dnirnn: error: trainer.precision")


def test_the_table_of_unread_options():
    tbptt = unread({"boundary": "tbptt", "synthesizer": {}, "targets": {}})
    assert {"model.synthesizer.kind", "model.targets.scale"} <= set(tbptt)
    assert "model.targets.scale" not in unread({"boundary": "oracle"})  # (β scales it)
    rls = unread({"boundary": "dni", "synthesizer": {"fit": "rls", "kind": "linear"},
                  "targets": {"lam": 1.0}})
    assert {"model.synthesizer.lr", "model.synthesizer.hidden",
            "model.targets.aux_weight"} <= set(rls)
    assert not {"model.synthesizer.rls_ridge", "model.targets.horizon",
                "model.synthesizer.guard"} & set(rls)
    adam = unread({"boundary": "dni_aux", "synthesizer": {"fit": "adam", "kind": "mlp"},
                   "targets": {}})
    assert "model.synthesizer.rls_forget" in adam and "model.synthesizer.lr" not in adam
    assert "model.targets.aux_weight" not in adam and "model.targets.horizon" in adam


def test_given_reads_overlays_and_the_command_line_but_not_the_recipe():
    args = configs_first(resolve_config_args(
        ["fit", "--model.synthesizer.lr", "0.1", "--config", "copy_dni", "--config",
         "dni_paper", "--model.init_args.window=3", "--model.targets={lam: null}"]))
    g = given(args)
    assert g["model.synthesizer.lr"] == "--model.synthesizer.lr"  # (the last given)
    assert g["model.synthesizer.kind"] == "--config dni_paper"
    assert g["model.window"] == "--model.init_args.window"
    assert g["model.targets.lam"] == "--model.targets"
    assert "model.hidden_size" not in g  # (the recipe's)
    hp = {"boundary": "dni", "synthesizer": {"fit": "rls", "kind": "linear", "lr": 0.1},
          "targets": {"lam": 1.0}}
    assert "model.synthesizer.lr: they are the Adam fit's" in ignored(args, hp)
