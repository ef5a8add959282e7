"""The option names of before the groups (``dnirnn.options``) and the one-paragraph errors
that point to the new ones: on the command line and in YAML (``dnirnn.cli_parser``), and in
a checkpoint written before the change (``dnirnn.checkpointing``)."""

from __future__ import annotations

from typing import Any

_SYNTH = ("fit", "positions", "context", "hidden", "layers", "lr", "clip")
RENAMED: dict[str, str] = {
    **{f"synthesizer_{n}": f"model.synthesizer.{n}" for n in _SYNTH},
    **{f"rls_{n}": f"model.synthesizer.rls_{n}" for n in ("forget", "ridge", "input", "share")},
    "sg_guard": "model.synthesizer.guard",
    "sg_scale": "model.targets.scale", "sg_lambda": "model.targets.lam",
    "sg_horizon": "model.targets.horizon", "aux_weight": "model.targets.aux_weight",
    "oracle_windows": "model.targets.oracle_windows",
    **{n: f"model.optim.{n}" for n in ("optimizer", "optimizer_args", "lr_scheduler",
                                        "lr_scheduler_args", "lr_scheduler_interval", "clip")},
    **{n: f"model.core.{n}" for n in ("embed_size", "dropout", "tied", "init_range",
                                       "forget_bias")},
    "interface_synthesizer": "model.interface.kind",
    **{f"interface_{n}": f"model.interface.{n}" for n in (
        "fit", "context", "hidden", "layers", "lr", "delay", "warmup")},
    "interface_sg_scale": "model.interface.scale",
    "slow_synthesizer": "model.slow_synthesizer.kind",
}
# one value that served several synthesizers (HierarchyModule's three; DecoupledModule's M_g
# and, where it had no interface_* option of its own, I_g): each group has its own now
SHARED = {**{f"synthesizer_{n}": n for n in ("hidden", "fit", "lr", "clip")},
          **{f"rls_{n}": f"rls_{n}" for n in ("forget", "ridge")}}
# (``synthesizer: linear`` was the kind; now ``synthesizer`` is a group)
GROUPS = {"synthesizer": "model.synthesizer.kind", "slow_synthesizer":
          "model.slow_synthesizer.kind", "interface": "model.interface.kind"}


def renamed(old: str) -> str | None:
    """The error for an option name of before the groups (``sg_horizon``), or None."""
    new = RENAMED.get(old)
    if new is None:
        return None
    return (f"model.{old} was renamed {new}: the model's options are grouped "
            f"(model.core, model.synthesizer, model.interface, model.targets, model.optim; "
            f"dnirnn.options). Write --{new}=VALUE on the command line, or in a recipe "
            f"model: {{{new.split('.')[1]}: {{{new.split('.')[2]}: VALUE}}}}."
            + (f" It was shared by the hierarchy's three synthesizers (and by the decoupled "
               f"stack's interface where it had no interface_* option): set it in each "
               f"group, also model.slow_synthesizer.{SHARED[old]} and "
               f"model.interface.{SHARED[old]}." if old in SHARED else ""))


def group_given_a_value(name: str, value: Any) -> str:
    """The error for ``--model.synthesizer=linear``: a value where a group is."""
    new = GROUPS[name]
    return (f"model.{name} is a group of options now, not the kind: for {value!r} write "
            f"--{new}={value} (in a recipe model: {{{name}: {{kind: {value}}}}}); its "
            f"other options are model.{name}.fit, .hidden, .lr ... (dnirnn.options)")


def old_checkpoint(path: Any, hparams: dict[str, Any],
                   current: dict[str, Any] | None = None) -> str | None:
    """The error for a checkpoint whose hparams use names of before the groups (that the
    model resuming it, with hparams ``current``, no longer has), or None."""
    old = [k for k in hparams if k in RENAMED and k not in (current or {})]
    if not old:
        return None
    flags = [f"--{RENAMED[k]}={hparams[k]}" for k in old if hparams[k] is not None]
    flags += [f"--model.{g}.{SHARED[k]}={hparams[k]}" for k in old if k in SHARED
              for g in ("slow_synthesizer", "interface") if g in (current or {})
              and hparams[k] is not None and f"{g}_{SHARED[k]}" not in hparams]
    flags += [f"--{GROUPS[k]}={v}" for k, v in hparams.items()  # (a kind where a group is)
              if k in GROUPS and isinstance(v, str) and f"--{GROUPS[k]}={v}" not in flags]
    flags = " ".join(flags)
    return (f"ckpt_path: {path} was written before the model's options were grouped: its "
            f"config names {', '.join('model.' + k for k in old[:4])}"
            f"{' ...' if len(old) > 4 else ''}, now {', '.join(RENAMED[k] for k in old[:4])}"
            f"{' ...' if len(old) > 4 else ''} (dnirnn.renamed.RENAMED). dnirnn does not "
            f"resume it: train a new run with the current recipe, or check out the dnirnn "
            f"version that wrote it. Its options in the new names: {flags}")
