"""Options given that change nothing: said in one line before the run starts.

A recipe is the base of a run; what is laid over it (a ``--config`` overlay after the
recipe, a ``--model.X`` on the command line) is what the user asked for. Where such an
option is one that the run's configuration does not read (the synthesizer's under
``boundary: tbptt``; the Adam's ``lr`` of a least-squares fit; ``targets.horizon`` without
``targets.lam`` ...), the run would go on exactly as without it, and silently: ``--config
copy_tbptt --config dni_paper`` trains plain TBPTT. ``ignored`` names those options and why
(not those set to null, which turns a thing off, as it is: the overlay's ``targets.horizon:
null``), from one table (``unread``) of what each setting of ``DNIModule`` leaves unread;
the CLI prints them as a ``dnirnn: warning:`` after its checks have passed
(``dnirnn.cli_lightning``). The hierarchy and the decoupled stack refuse such options
outright (``Group.unused``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SYNTHESIZER = ("kind", "fit", "positions", "context", "hidden", "layers", "lr", "clip",
               "guard", "rls_forget", "rls_ridge", "rls_input", "rls_share", "rls_solve_every",
               "rls_ridge_to")
RLS = ("rls_forget", "rls_ridge", "rls_input", "rls_share", "rls_solve_every", "rls_ridge_to")


def unread(model: dict[str, Any]) -> dict[str, str]:
    """The options (``model.group.field``) that ``DNIModule`` with these hparams never reads,
    each with the reason."""
    boundary = model.get("boundary")
    synth, targets = model.get("synthesizer") or {}, model.get("targets") or {}
    out: dict[str, str] = {}

    def add(group: str, names: tuple[str, ...], why: str) -> None:
        for n in names:
            out.setdefault(f"model.{group}.{n}" if group else f"model.{n}", why)

    if boundary in ("tbptt", "oracle"):
        why = (f"model.boundary={boundary} trains no synthesizer" if boundary == "oracle" else
               "model.boundary=tbptt trains no synthesizer and injects no gradient")
        add("synthesizer", SYNTHESIZER, why)
        add("targets", ("lam", "horizon", "aux_weight"), why)
        if boundary == "tbptt":
            add("targets", ("scale", "oracle_windows"), why)
        return out
    if boundary != "dni_aux":
        add("targets", ("aux_weight",), "it weighs the Aux loss of model.boundary=dni_aux")
    add("targets", ("oracle_windows",), "it is the look-ahead of model.boundary=oracle")
    if targets.get("lam") is None:
        add("targets", ("horizon",), "the horizon of a λ-return: model.targets.lam is null")
    if synth.get("fit") == "rls":
        add("synthesizer", ("lr", "clip"), "they are the Adam fit's: model.synthesizer.fit is "
            "rls (least squares)")
    else:
        add("synthesizer", RLS, "they are least squares': model.synthesizer.fit is adam")
    if synth.get("kind") == "linear":
        add("synthesizer", ("hidden", "layers"), "they shape an mlp: model.synthesizer.kind "
            "is linear")
    return out


def _flat(d: Any, prefix: str) -> list[str]:
    if not isinstance(d, dict):
        return [prefix]
    if "init_args" in d or "class_path" in d:  # (a class_path model: its init args)
        return _flat(d.get("init_args") or {}, prefix)
    return [k for key, v in d.items() for k in _flat(v, f"{prefix}.{key}")]


def given(args: list[str]) -> dict[str, str]:
    """The model options laid over the recipe (the first ``--config``): by a later
    ``--config`` file or on the command line, each with where it was given."""
    out: dict[str, str] = {}
    configs, i = 0, 0
    while i < len(args):
        a = args[i]
        key, eq, value = a.partition("=")
        if key in ("--config", "-c") and not eq and i + 1 < len(args):
            key, eq, value, i = "--config", "=", args[i + 1], i + 1
        i += 1
        if key == "--config":
            configs += 1
            path = Path(value)
            if configs > 1:
                model = _model_of(path.read_text() if path.is_file() else value)
                for k in _flat(model, "model") if isinstance(model, dict) else []:
                    out[k] = f"--config {path.stem if path.is_file() else value}"
        elif key.startswith("--model."):
            name = "model." + key[len("--model."):].replace("init_args.", "", 1)
            try:
                parsed = yaml.safe_load(value) if eq else None
            except yaml.YAMLError:
                parsed = None
            for k in _flat(parsed, name) if isinstance(parsed, dict) else [name]:
                out[k] = key  # (the last given is the one in effect)
    return out


def _model_of(text: str) -> Any:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return data.get("model") if isinstance(data, dict) else None


def _value(hparams: dict[str, Any], name: str) -> Any:
    node: Any = hparams
    for part in name.split(".")[1:]:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _names(names: list[str]) -> str:
    """``model.synthesizer.{kind, lr}, model.targets.lam``: the names, by group."""
    groups: dict[str, list[str]] = {}
    for n in names:
        group, _, field = n.rpartition(".")
        groups.setdefault(group, []).append(field)
    return ", ".join(f"{g}.{f[0]}" if len(f) == 1 else f"{g}.{{{', '.join(f)}}}"
                     for g, f in groups.items())


def ignored(args: list[str], hparams: dict[str, Any]) -> str | None:
    """One paragraph naming the options given over the recipe that have no effect (where
    they were given, and why), or None."""
    unused, grouped = unread(hparams), {}
    for name, source in given(args).items():
        if name in unused and _value(hparams, name) is not None:  # (null: off, as it is)
            grouped.setdefault((unused[name], source), []).append(name)
    if not grouped:
        return None
    parts = [f"{_names(names)}" + (f" (from {source})" if source.startswith("--config")
                                   else "") + f": {why}"
             for (why, source), names in grouped.items()]
    return ("options with no effect on this run, which goes on as without them: "
            + "; ".join(parts) + ". Drop them, or change the setting that leaves them unused.")
