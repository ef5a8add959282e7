"""The core's optimizer and learning-rate schedule: chosen by name or class
path, the window update with SGD is word_language_model's update, ``plateau`` is its anneal,
the synthesizer keeps its own Adam, and resume stays exact with the schedule's state."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from dnirnn.dni import DNIRNN, window_update
from dnirnn.lit import DNIModule
from dnirnn.main import main
from dnirnn.model import CoreConfig, LSTMCore, Window, lm_step_loss
from dnirnn.optim import Optimizers, advance, build_optimizer, build_scheduler, check_optimizer

from .test_training import ROOT, TINY, _resume_matches, fit

LM = {"task": "lm", "input_size": 7, "output_size": 7, "hidden_size": 6,
      "core": {"embed_size": 6}}


@pytest.fixture
def _sandbox(cli_sandbox):
    """The CLI tests run in the CLI sandbox (tests/conftest.py)."""


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("SGD", torch.optim.SGD),
                                      ("torch.optim.SGD", torch.optim.SGD),
                                      ("adamw", torch.optim.AdamW),
                                      ("RMSprop", torch.optim.RMSprop),
                                      ("adam", torch.optim.Adam)])
def test_optimizer_by_name_or_class_path(name, cls):
    p = nn.Parameter(torch.zeros(3))
    opt = build_optimizer([p], name, 0.5, {"weight_decay": 0.01})
    assert type(opt) is cls
    assert opt.param_groups[0]["lr"] == 0.5 and opt.param_groups[0]["weight_decay"] == 0.01
    if cls is torch.optim.Adam:  # the engine's lean step needs the fused kernel
        assert opt.param_groups[0]["fused"]


def test_default_optimizer_is_fused_adam_and_the_synthesizer_keeps_its_own():
    """Today's recipes keep Adam; with SGD for the core the synthesizer is still Adam, on
    its own parameters, with its own learning rate."""
    default = DNIModule(**LM)
    assert default.hparams.optim["optimizer"] == "adam"
    module = DNIModule(**LM, optim={"optimizer": "sgd"}, lr=20.0)
    core, synth = module.configure_optimizers()
    assert type(core) is torch.optim.SGD and core.param_groups[0]["lr"] == 20.0
    assert type(synth) is torch.optim.Adam and synth.param_groups[0]["lr"] == 1e-4
    Optimizers(core, synth)  # raises if they shared a parameter
    ids = {id(p) for g in synth.param_groups for p in g["params"]}
    assert ids == {id(p) for p in module.engine.synthesizer.parameters()}


def test_sgd_window_update_is_word_language_models_update(float64):
    """One TBPTT window with SGD (lr 20) and the core clip 0.25 equals word_language_model's
    update: ``clip_grad_norm_(params, 0.25)`` then ``p -= lr * p.grad``."""
    torch.manual_seed(0)
    core = LSTMCore(CoreConfig(7, 7, 6, 2, embed=True, dropout=0.0, init_range=0.1))
    ref = copy.deepcopy(core)
    x = torch.randint(0, 7, (5, 3))
    y = torch.randint(0, 7, (5, 3))
    state = core.zero_state(3)
    net = DNIRNN(core, lm_step_loss, loss_norm=15.0, boundary="tbptt")
    opt = build_optimizer(net.core_parameters(), "sgd", 20.0)
    window_update(net, Optimizers(opt, core_clip=0.25), Window(x, y), state)

    logits, _, _ = ref(x, ref.zero_state(3))  # word_language_model: mean cross-entropy
    nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
    norm = nn.utils.clip_grad_norm_(ref.parameters(), 0.25)
    assert norm > 0.25  # (the clip acts)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(p.grad, alpha=-20.0)
    for (name, a), b in zip(core.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)


def wlm_anneal(losses: list[float], lr: float) -> list[float]:
    """word_language_model's rule after each epoch's validation, written out."""
    best, out = None, []
    for v in losses:
        if not best or v < best:
            best = v
        else:
            lr /= 4.0
        out.append(lr)
    return out


def test_plateau_is_word_language_models_anneal():
    losses = [5.0, 4.5, 4.6, 4.5, 4.4, 4.4, 4.39, 4.391, 3.0]  # (ties do not improve)
    opt = build_optimizer([nn.Parameter(torch.zeros(2))], "sgd", 20.0)
    schedule = build_scheduler(opt, "plateau")
    lrs = []
    for v in losses:
        schedule.step(v)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == wlm_anneal(losses, 20.0)
    assert lrs[-1] < lrs[1]


def test_advance_steps_a_schedule_to_its_counter():
    opt = build_optimizer([nn.Parameter(torch.zeros(2))], "sgd", 1.0)
    schedule = build_scheduler(opt, "steplr", {"step_size": 1, "gamma": 0.5})
    advance(schedule, 3)
    advance(schedule, 3)  # (a no-op: the count is reached)
    assert schedule.last_epoch == 3 and opt.param_groups[0]["lr"] == 0.125


@pytest.mark.parametrize("kwargs,message", [
    ({"optimizer": "sgdd"}, "model.optim.optimizer: 'sgdd' is not an optimizer class"),
    ({"optimizer": "torch.optim.Nope"}, "model.optim.optimizer: cannot import 'torch.optim.Nope'"),
    ({"optimizer": "lbfgs"}, "model.optim.optimizer: LBFGS needs a closure"),
    ({"optimizer_args": {"lr": 20}}, "model.optim.optimizer_args: the learning rate is its own"),
    ({"optimizer": "sgd", "optimizer_args": {"momentm": 0.9}},
     "model.optim.optimizer_args: SGD with {'momentm': 0.9} failed"),
    ({"lr_scheduler": "steplr"}, "model.optim.lr_scheduler_args: StepLR with {} failed"),
    ({"lr_scheduler": "torch.nn.Linear"}, "model.optim.lr_scheduler: 'torch.nn.Linear' is not a"),
    ({"lr_scheduler_args": {"factor": 0.5}}, "model.optim.lr_scheduler_args: given without"),
    ({"lr_scheduler": "plateau", "lr_scheduler_interval": "batch"},
     "model.optim.lr_scheduler_interval: must be one of"),
])
def test_bad_optimizer_config_names_the_field(kwargs, message):
    with pytest.raises(ValueError) as info:
        DNIModule(**LM, optim=kwargs)
    assert str(info.value).startswith(message)


def test_check_optimizer_accepts_the_documented_forms():
    check_optimizer("sgd", 20.0, None, "plateau", None)
    check_optimizer("torch.optim.SGD", 1.0, {"momentum": 0.9}, "plateau", {"patience": 2})
    check_optimizer("adam", 1e-3, {"betas": [0.9, 0.98]}, "ExponentialLR", {"gamma": 0.9},
                    "step")


def final_lr(version: Path) -> float:
    ckpt = torch.load(version / "checkpoints" / "last.ckpt", weights_only=False)
    return ckpt["optimizer_states"][0]["param_groups"][0]["lr"]


COPY = ["--data.init_args.steps_per_epoch=4", "--trainer.callbacks.init_args.threshold=1000",
        "--trainer.callbacks.init_args.check_every=3", "--model.optim.optimizer=sgd",
        "--model.lr=0.5"]


@pytest.mark.usefixtures("_sandbox")
def test_resume_is_exact_with_a_plateau_schedule(tmp_path):
    """threshold 1 makes every validation a bad one and patience 1 anneals at every second:
    a resumed run that lost the schedule's count of bad validations (1 at the checkpoint of
    step 5) would not anneal after the validation of step 8, and its losses would differ."""
    _resume_matches("copy_dni", tmp_path, 10, 5, *COPY, "--model.optim.lr_scheduler=plateau",
                    "--model.optim.lr_scheduler_args={threshold: 1.0, patience: 1}")
    # validations after steps 4, 8 and 10 (the end): two bad ones, one anneal, at step 8
    assert final_lr(tmp_path / "resumed" / "version_0") == 0.5 / 4


@pytest.mark.usefixtures("_sandbox")
@pytest.mark.parametrize("interval,lr", [("epoch", 0.5 * 0.5**2), ("step", 0.5 * 0.5**9)])
def test_resume_is_exact_with_an_epoch_or_step_schedule(tmp_path, interval, lr):
    _resume_matches("copy_dni", tmp_path, 10, 5, *COPY, "--model.optim.lr_scheduler=StepLR",
                    "--model.optim.lr_scheduler_args={step_size: 1, gamma: 0.5}",
                    f"--model.optim.lr_scheduler_interval={interval}")
    # epoch: epochs 0, 1, 2 started (lr halved twice); step: steps 0..9 trained (9 halvings)
    assert final_lr(tmp_path / "resumed" / "version_0") == pytest.approx(lr, rel=1e-12)


@pytest.mark.usefixtures("_sandbox")
def test_the_default_optimizer_is_still_adam_in_the_recipes(tmp_path):
    version = fit("copy_dni", tmp_path / "run", "--trainer.max_steps=2",
                  "--data.init_args.steps_per_epoch=2", *TINY)
    ckpt = torch.load(version / "checkpoints" / "last.ckpt", weights_only=False)
    groups = [s["param_groups"][0] for s in ckpt["optimizer_states"]]
    recipe = yaml.safe_load((ROOT / "recipes" / "copy_dni.yaml").read_text())["model"]
    assert all("betas" in g for g in groups) and groups[0]["lr"] == recipe["lr"]
    assert ckpt["lr_schedulers"] == []


@pytest.mark.usefixtures("_sandbox")
def test_optimizer_args_from_the_command_line(tmp_path):
    version = fit("copy_dni", tmp_path / "run", "--trainer.max_steps=2",
                  "--data.init_args.steps_per_epoch=2", *TINY,
                  "--model.optim.optimizer=torch.optim.SGD",
                  "--model.optim.optimizer_args={momentum: 0.9, nesterov: true}")
    ckpt = torch.load(version / "checkpoints" / "last.ckpt", weights_only=False)
    core = ckpt["optimizer_states"][0]["param_groups"][0]
    assert core["momentum"] == 0.9 and core["nesterov"]
    assert ckpt["optimizer_states"][0]["state"]  # (momentum buffers: SGD stepped)


@pytest.mark.usefixtures("_sandbox")
@pytest.mark.parametrize("option,message", [
    ("--model.optim.optimizer=sgdd",
     "model.optim.optimizer: 'sgdd' is not an optimizer class; use one of"),
    ("--model.optim.lr_scheduler=plateu",
     "model.optim.lr_scheduler: 'plateu' is not a learning-rate schedule; use plateau"),
])
def test_a_bad_optimizer_is_one_line_with_exit_2(tmp_path, capsys, option, message):
    root = tmp_path / "r"
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "copy_dni", f"--trainer.default_root_dir={root}",
              "--wandb=false", option])
    assert info.value.code == 2
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dnirnn")]
    assert len(ours) == 1 and ours[0].startswith(f"dnirnn: error: {message}"), ours
    assert not root.exists()
