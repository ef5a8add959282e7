"""The option groups (``dnirnn.options``): each checks itself with a message that names the
option as typed; the names of before the groups, on the command line, in a YAML file and in
a checkpoint, get an error naming the new option; a nested override reaches the engine."""

from __future__ import annotations

import pytest
import torch

from dnirnn.checkpointing import CheckpointError, check_checkpoint
from dnirnn.lit import DNIModule
from dnirnn.main import main
from dnirnn.options import (
    CoreOptions,
    InterfaceOptions,
    OptimOptions,
    SynthesizerOptions,
    TargetOptions,
)

from .test_training import ROOT, fit

COPY = ["--data.init_args.steps_per_epoch=4", "--data.init_args.batch_size=4"]
TINY = ["--model.hidden_size=8", "--model.synthesizer.hidden=8", "--trainer.max_steps=1"]


@pytest.fixture(autouse=True)
def _sandbox(cli_sandbox):
    """The CLI tests run in the CLI sandbox (tests/conftest.py)."""


@pytest.mark.parametrize("make,message", [
    (lambda: CoreOptions(dropout=1.0), "model.core.dropout: must be in [0, 1)"),
    (lambda: CoreOptions(embed_size=0), "model.core.embed_size: must be an integer >= 1"),
    (lambda: SynthesizerOptions(kind="lstm"), "model.synthesizer.kind: must be one of"),
    (lambda: SynthesizerOptions(fit="rls", kind="mlp"),
     "model.synthesizer.fit: least squares ('rls') fits linear maps, and "
     "model.synthesizer.kind is 'mlp': for an mlp synthesizer set "
     "--model.synthesizer.fit=adam (the paper's fit; --config dni_paper"),
    (lambda: SynthesizerOptions(hidden=0), "model.synthesizer.hidden: must be an integer"),
    (lambda: SynthesizerOptions(rls_share=2.0), "model.synthesizer.rls_share: must be in"),
    (lambda: InterfaceOptions(delay=0), "model.interface.delay: must be an integer >= 1"),
    (lambda: InterfaceOptions(kind="x"), "model.interface.kind: must be one of"),
    (lambda: TargetOptions(lam=1.5), "model.targets.lam: must be in [0, 1]"),
    (lambda: TargetOptions(horizon=3), "model.targets.horizon: a horizon > 1 is a λ-return"),
    (lambda: OptimOptions(clip=0.0), "model.optim.clip: must be > 0"),
    (lambda: OptimOptions(optimizer="sgdd"), "model.optim.optimizer: 'sgdd' is not"),
])
def test_each_group_checks_itself_naming_the_option_as_typed(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value).startswith(message)
    assert "(got" in str(info.value) or "sgdd" in str(info.value)


def test_cross_group_checks_and_dicts():
    with pytest.raises(ValueError, match=r"model.targets.lam: .* dni_aux"):
        DNIModule(boundary="dni_aux", targets={"lam": 1.0})
    with pytest.raises(ValueError, match=r"model.synthesizer: no option 'fitt'"):
        DNIModule(synthesizer={"fitt": "rls"})
    m = DNIModule(synthesizer={"kind": "linear", "fit": "rls"})  # (a checkpoint's hparams)
    assert m.hparams.synthesizer["fit"] == "rls"
    assert type(m.engine.synthesizer).__name__ == "LeastSquaresSynthesizer"


@pytest.mark.parametrize("args,new", [
    (["--model.sg_horizon=4"], "model.targets.horizon"),
    (["--model.init_args.synthesizer_fit=rls"], "model.synthesizer.fit"),
    (["--model.optimizer_args={momentum: 0.9}"], "model.optim.optimizer_args"),
    (["--model.embed_size=8"], "model.core.embed_size"),
])
def test_an_old_flat_name_points_to_the_new_option(capsys, tmp_path, args, new):
    root = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "copy_dni", f"--trainer.default_root_dir={root}", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("dnirnn: error: ") and f"renamed {new}" in err
    assert len(err.strip().splitlines()) == 1 and not root.exists()


def test_an_old_name_in_a_yaml_overlay_points_to_the_new_option(capsys, tmp_path):
    overlay = tmp_path / "old.yaml"
    overlay.write_text("model:\n  sg_lambda: 0.5\n  synthesizer_positions: 4\n")
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "copy_dni", "--config", str(overlay),
              f"--trainer.default_root_dir={tmp_path / 'run'}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "renamed model.targets.lam" in err or "renamed model.synthesizer.positions" in err


@pytest.mark.parametrize("where", ["cli", "yaml"])
def test_synthesizer_given_a_kind_points_to_synthesizer_kind(capsys, tmp_path, where):
    overlay = tmp_path / "old.yaml"
    overlay.write_text("model:\n  synthesizer: linear\n")
    given = (["--model.synthesizer=linear"] if where == "cli"
             else ["--config", str(overlay)])
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "copy_dni", *given,
              f"--trainer.default_root_dir={tmp_path / 'run'}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "model.synthesizer is a group of options now" in err
    assert "--model.synthesizer.kind=linear" in err


@pytest.mark.parametrize("given", [["--model.synthesizer.kind=mlp"],
                                   ["--config", "ptb_char_dni"]])
def test_an_mlp_with_least_squares_names_the_way_to_an_mlp(capsys, tmp_path, given):
    """The message names the field whose value it quotes, and the way to an mlp
    synthesizer (its Adam fit, or the paper's overlay), before anything else is printed."""
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "copy_dni", *given,
              f"--trainer.default_root_dir={tmp_path / 'run'}"])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert err.startswith("dnirnn: error: model.synthesizer.fit: least squares ('rls')")
    assert "--model.synthesizer.fit=adam" in err and "dni_paper" in err
    assert "Seed set" not in out + err and not (tmp_path / "run").exists()


def test_null_reaches_a_nested_group_and_keeps_the_rest(tmp_path):
    """``--model.targets.horizon=null`` (or ``... null``) sets that field alone to null."""
    import yaml

    from dnirnn.recipe import nulls_in_groups

    assert nulls_in_groups(["fit", "--model.targets.horizon", "null", "--model.window=3",
                            "--model.init_args.synthesizer.guard=null"]) == [
        "fit", "--model.targets={horizon: null}", "--model.window=3",
        "--model.synthesizer={guard: null}"]
    root = tmp_path / "run"
    main(["fit", "--config", "copy_dni", "--model.targets.horizon=null", "--model.depth=1",
          "--model.synthesizer.guard", "null", "--trainer.max_steps=1", "--wandb=false",
          "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={root}"])
    model = yaml.safe_load((root / "version_0/config.yaml").read_text())["model"]
    model = model.get("init_args", model)
    assert model["targets"]["horizon"] is None and model["targets"]["lam"] == 1.0
    assert model["synthesizer"]["guard"] is None and model["synthesizer"]["fit"] == "rls"


def test_a_checkpoint_of_before_the_groups_is_refused_naming_the_change(tmp_path):
    version = fit("copy_dni", tmp_path, *COPY, *TINY)
    path = version / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=False)
    hp = dict(ckpt["hyper_parameters"])
    model = DNIModule(**{k: v for k, v in hp.items() if not k.startswith("_")})
    assert check_checkpoint(path, model)["global_step"] == 1  # (today's: accepted)
    # the hparams as the module wrote them before: flat names
    for group in ("core", "synthesizer", "targets", "optim"):
        hp.pop(group)
    hp.update(synthesizer="linear", synthesizer_fit="rls", sg_lambda=1.0, sg_horizon=4,
              synthesizer_hidden=8, clip=10.0, embed_size=None)
    ckpt["hyper_parameters"] = hp
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    with pytest.raises(CheckpointError) as info:
        check_checkpoint(old, model)
    msg = str(info.value)
    assert "written before the model's options were grouped" in msg
    assert "model.synthesizer_fit" in msg and "model.synthesizer.fit" in msg
    assert "--model.targets.horizon=4" in msg and "\n" not in msg


def test_a_nested_override_reaches_the_engine(tmp_path):
    """--model.synthesizer.* and --model.targets.* on top of the recipe's groups (merged, not
    replaced), and a grid's dotted override, reach the engine."""
    from dnirnn.sweep.grid import load_grid

    version = fit("copy_dni", tmp_path, *COPY, *TINY, "--model.synthesizer.rls_forget=0.9",
                  "--model.targets.horizon=2", "--model.targets.chain=block")
    ckpt = torch.load(version / "checkpoints" / "last.ckpt", weights_only=False)
    hp = ckpt["hyper_parameters"]
    assert hp["synthesizer"]["rls_forget"] == 0.9 and hp["synthesizer"]["positions"] == 32
    assert hp["targets"] == {**hp["targets"], "horizon": 2, "lam": 1.0, "chain": "block"}
    model = DNIModule(**{k: v for k, v in hp.items() if not k.startswith("_")})
    assert model.engine.synthesizer.forget == 0.9 and model.engine.targets.horizon == 2
    assert model.engine.targets.chain == "block"
    cell = next(c for c in load_grid(str(ROOT / "grids" / "horizon.yaml")).cells
                if c.name == "copy_T2_dni_h2_s0")
    assert "--model.targets.horizon=2" in cell.fit_args()
    assert "--model.synthesizer.fit=rls" in cell.fit_args()
