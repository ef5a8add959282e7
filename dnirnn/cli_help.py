"""``dnirnn fit|validate|test --help``: a short help, fast, with the model's options first.

jsonargparse's help lists every option of the Trainer, the callbacks and both data modules
(about 600 lines, 5 s) and puts the model's at the end. This help is built without importing
torch or Lightning: the model's and data module's options (names, defaults, the first
sentence of their docstring) are read from the source with ``ast``, and with ``--config``
the recipe's values are shown instead of the defaults. ``--help-all`` gives the full listing.
``RUN_OPTIONS`` are dnirnn's own top-level options (the CLI adds them to its parser).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

# name: (type, default, help). The CLI's parser adds these; the short help lists them.
RUN_OPTIONS: dict[str, tuple[Any, Any, str]] = {
    "seeds": (str, None, "fit: one run per seed (seed_everything), then a table of their "
                         "best values, e.g. --seeds=0,1,2"),
    "checkpoint_every": (int | str, "5min", "a checkpoint every N training steps (500) or every "
                                      "period of training (30s, 10min, 2h), besides epoch "
                                      "ends; 0: epoch ends only. Ctrl-C / SIGTERM also "
                                      "checkpoint the step they interrupt"),
    "keep_checkpoints": (int, 3, "periodic checkpoints kept, the latest N (0: all); "
                                 "best.ckpt and last.ckpt are always kept"),
    "allow_untrained": (bool, False, "validate / test without --ckpt_path: score a fresh "
                                     "model"),
    "wandb": (bool, True, "log to W&B as well as the local CSV record"),
    "wandb_project": (str, "dnirnn", "the W&B project"),
}

LINKED = ("task", "input_size", "output_size")  # the model's, set from the data module
TRAINER = (
    ("max_steps", "training steps (one step: K windows of a batch)"),
    ("default_root_dir", "the run's folder: runs/<recipe>/version_N/ below it"),
    ("accelerator", "auto | cpu | gpu"),
    ("devices", "processes / GPUs (with --trainer.strategy=ddp)"),
    ("precision", "32-true (default), 64-true; bf16-mixed / 16-mixed on a GPU"),
    ("log_every_n_steps", "metrics.csv / W&B row every N steps"),
    ("check_val_every_n_epoch", "validate every N epochs (and at the last step)"),
    ("val_check_interval", "validate every N training steps instead (an int)"),
    ("limit_val_batches", "validation batches (PTB: a fraction of the stream)"),
    ("enable_progress_bar", "false: no progress bar (logs, batch jobs)"),
)

USAGE = """usage: dnirnn {cmd} --config RECIPE [--config OVERLAY] [--model.NAME=VALUE ...]
                  [--data.init_args.NAME=VALUE ...] [--trainer.NAME=VALUE ...]{extra}
"""
ABOUT = ("{what} `dnirnn recipes` lists the recipes and overlays. --config takes a name or a "
         "YAML path; config files are applied first, in their order, then the other options, "
         "wherever they stand. Values below: {source}.")

WHAT = {"fit": "Trains a recipe.",
        "validate": "Scores a checkpoint on the validation split (needs --ckpt_path).",
        "test": "Scores a checkpoint on the test split (needs --ckpt_path); a copy-task "
                "checkpoint is scored at the level of its max_level_solved."}


def wants_short_help(args: list[str]) -> bool:
    return (len(args) > 0 and args[0] in WHAT and "--help-all" not in args
            and any(a in ("-h", "--help") for a in args[1:]))


def arg_docs(doc: str) -> dict[str, str]:
    """``{name: text}`` from the ``Args:`` section of a Google-style docstring."""
    args = doc.split("Args:", 1)[-1] if "Args:" in doc else ""
    out, name = {}, None
    for line in args.splitlines():
        m = re.match(r"\s{4}(\w+(?:, \w+)*): (.*)", line)
        if m:
            for n in m.group(1).split(", "):
                out[n] = m.group(2)
            name = m.group(1).split(", ")[-1]
        elif name and line.startswith("        "):
            out[name] += " " + line.strip()
        elif line.strip() and not line.startswith(" "):
            break
    return out


def _source_class(path: str) -> tuple[str, ast.Module, ast.ClassDef] | None:
    """``(module, its syntax tree, the class)`` of ``dnirnn.lit.DNIModule``, or None."""
    module, name = path.rsplit(".", 1)
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    tree = ast.parse(Path(spec.origin).read_text())
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
    return None if cls is None else (module, tree, cls)


def _class_path(module: str, tree: ast.Module, name: str) -> str | None:
    """The dotted path of the class ``name`` as ``module`` sees it (defined or imported)."""
    if any(isinstance(n, ast.ClassDef) and n.name == name for n in tree.body):
        return f"{module}.{name}"
    for n in tree.body:
        if isinstance(n, ast.ImportFrom) and n.module:
            for a in n.names:
                if (a.asname or a.name) == name:
                    return f"{n.module}.{a.name}"
    return None


def init_params(path: str) -> tuple[list[tuple[str, ast.expr | None]], dict[str, str]]:
    """A class's ``__init__`` parameters ``[(name, default), ...]`` and their docs, read from
    the source. A ``**kwargs`` passed on, to ``super().__init__(**kwargs)`` or to a class
    called with it, stands for that class's parameters but those the call names: they
    follow the class's own, as jsonargparse resolves them. A parameter's doc is the class's,
    else the one's it passes it on to."""
    found = _source_class(path)
    init = found and next((n for n in found[2].body if isinstance(n, ast.FunctionDef)
                           and n.name == "__init__"), None)
    if init is None:
        return [], {}
    module, tree, cls = found
    args = init.args.args[1:]
    defaults = [None] * (len(args) - len(init.args.defaults)) + list(init.args.defaults)
    params, docs = list(zip((a.arg for a in args), defaults)), {}
    kwargs = init.args.kwarg.arg if init.args.kwarg else None
    for call in (n for n in ast.walk(init) if isinstance(n, ast.Call) and kwargs):
        if not any(k.arg is None and getattr(k.value, "id", None) == kwargs
                   for k in call.keywords):
            continue
        f = call.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Call) \
                and getattr(f.value.func, "id", None) == "super":
            target = cls.bases[0].id if isinstance(cls.bases[0], ast.Name) else None
        else:
            target = getattr(f, "id", None)
        target = target and _class_path(module, tree, target)
        if target:
            more, docs = init_params(target)
            given = {k.arg for k in call.keywords} | {n for n, _ in params}
            params += [(n, d) for n, d in more if n not in given]
        break
    return params, {**docs, **arg_docs(ast.get_docstring(cls) or "")}


def class_options(path: str) -> tuple[str, list[tuple[str, Any, str]]]:
    """``(name, [(option, default, text), ...])`` of a class's ``__init__``
    (``init_params``; an option group's as ``group.field``, after the flat options), read
    from its module's source (``dnirnn.lit.DNIModule``) without importing it."""
    params, docs = init_params(path)
    flat, groups = [], []
    for p, d in params:
        try:
            value = ast.literal_eval(d) if d is not None else None
        except ValueError:
            value = ast.unparse(d)
        group = re.fullmatch(r"(\w+Options)\((.*)\)", value) if isinstance(value, str) else None
        if group:
            groups += group_options(p, group.group(1))
        else:
            flat.append((p, value, docs.get(p, "")))
    return path.rsplit(".", 1)[1], flat + groups


def group_options(name: str, cls_name: str) -> list[tuple[str, Any, str]]:
    """An option group's fields as ``(group.field, default, text)`` (``dnirnn.options``:
    pure Python, so the short help stays fast)."""
    import dataclasses

    from dnirnn import options

    cls = getattr(options, cls_name)
    docs = {}
    for klass in reversed(cls.__mro__):
        docs.update(arg_docs(inspect.cleandoc(klass.__doc__ or "")))
    return [(f"{name}.{f.name}", f.default, docs.get(f.name, ""))
            for f in dataclasses.fields(cls)]


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _short(text: str, width: int) -> str:
    text = re.sub(r"``?([^`]+)``?", r"\1", text)
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def read_configs(args: list[str]) -> tuple[dict, list[str]]:
    """The recipes / overlays named by ``--config`` in ``args``, merged (model, data,
    trainer sections); and their names."""
    import yaml

    from dnirnn.recipe import RecipeNotFound, resolve_config

    merged: dict[str, dict] = {"model": {}, "data": {}, "trainer": {}}
    names, i = [], 0
    while i < len(args):
        a, value = args[i], None
        if a in ("--config", "-c") and i + 1 < len(args):
            value, i = args[i + 1], i + 1
        elif a.startswith("--config="):
            value = a.split("=", 1)[1]
        i += 1
        if value is None:
            continue
        try:
            cfg = yaml.safe_load(Path(resolve_config(value)).read_text()) or {}
        except (RecipeNotFound, OSError, yaml.YAMLError):
            continue
        names.append(Path(value).stem)
        for section in merged:
            part = cfg.get(section) or {}
            if section != "trainer" and isinstance(part.get("init_args"), dict):
                merged[section].update({k: v for k, v in part.items() if k != "init_args"})
                part = part["init_args"]
            merged[section].update(part)
    return merged, names


def print_help(args: list[str]) -> None:
    cmd = args[0]
    cfg, names = read_configs(args[1:])
    width = 100
    extra = (" [--seeds=0,1,2]\n                  [--ckpt_path=CKPT (resume)]" if cmd == "fit"
             else "\n                  --ckpt_path=CKPT")
    source = (f"the values of {' + '.join(names)}, else the defaults" if names
              else "the defaults (--config RECIPE --help shows a recipe's values)")
    about = textwrap.fill(ABOUT.format(what=WHAT[cmd], source=source), width - 6)
    lines = [USAGE.format(cmd=cmd, extra=extra), about + "\n"]
    model_path = cfg["model"].get("class_path") or "dnirnn.lit.DNIModule"
    name, options = class_options(model_path)
    lines.append(f"Model: {name} (--model.NAME=VALUE; a recipe's model: section)")
    values = {}
    for k, v in cfg["model"].items():  # (a group's values as dotted keys: synthesizer.fit)
        values.update({f"{k}.{f}": x for f, x in v.items()} if isinstance(v, dict) else {k: v})
    lines += _rows("--model.", options, values, width)
    data_path = cfg["data"].get("class_path")
    if data_path:
        name, options = class_options(data_path)
        lines.append(f"\nData: {name} (--data.init_args.NAME=VALUE)")
        lines += _rows("--data.init_args.", options, cfg["data"], width)
    else:
        lines.append("\nData (--data.init_args.NAME=VALUE; the recipe's data.class_path picks "
                     "the module):")
        for module in ("CopyDataModule", "PTBDataModule", "RecallDataModule"):
            name, options = class_options(f"dnirnn.datamodules.{module}")
            lines.append(_short(f"  {name}: " + ", ".join(o for o, _, _ in options), width))
    lines.append("\nRun:")
    lines.append(f"  {'--config=NAME|PATH':<34} a recipe or overlay (repeatable)")
    lines.append(f"  {'--ckpt_path=PATH':<34} " + ("resume from a checkpoint (last.ckpt)"
                 if cmd == "fit" else "the checkpoint to score"))
    lines.append(f"  {'--seed_everything=N':<34} the seed of initialisation and dropout")
    for opt, (_, default, text) in RUN_OPTIONS.items():
        if opt == "seeds" and cmd != "fit":
            continue
        shown = f"--{opt}" + (f"={_yaml(default)}" if default is not None else "=0,1,2")
        lines.append(_short(f"  {shown:<34} {text}", width))
    lines.append("\nTrainer (Lightning's; the most used):")
    for opt, text in TRAINER:
        value = cfg["trainer"].get(opt)
        shown = f"--trainer.{opt}" + (f"={_yaml(value)}" if value is not None else "")
        lines.append(f"  {shown:<34} {text}")
    lines.append(f"\nEvery option (Lightning's full listing): dnirnn {cmd} --help-all. Another "
                 f"model's options:\n  dnirnn {cmd} --model.help "
                 f"dnirnn.lit_hierarchy.HierarchyModule. Errors: docs/errors.md.")
    try:
        print("\n".join(lines), flush=True)
    except BrokenPipeError:  # (dnirnn fit --help | head)
        sys.stdout = open(os.devnull, "w")  # so that the exit does not flush into the pipe


def _rows(prefix: str, options: list[tuple[str, Any, str]], values: dict,
          width: int) -> list[str]:
    rows = []
    for opt, default, text in options:
        if prefix == "--model." and opt in LINKED:
            continue
        value = values.get(opt, default)
        first = text.split(". ")[0].rstrip(".")
        rows.append(_short(f"  {f'{prefix}{opt}={_yaml(value)}':<34} {first}", width))
    return rows
