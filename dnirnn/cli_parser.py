"""The argument parser of ``dnirnn fit|validate|test``: short errors and the model's options.

jsonargparse reports a bad ``--model.*`` value through the ``Union`` of the model's subtypes
(60 lines for a typo). ``ConciseParser.error`` reduces the message to the line that matters,
adds "did you mean" for an unknown key, and raises ``ConfigError``, which the CLI prints as
one ``dnirnn: error:`` paragraph (exit 2; ``DNIRNN_DEBUG=1`` keeps the parser's full text).
Abbreviated options (``--trainer.max_step``) are refused, with the "did you mean".
``user_message`` does the same for errors raised while the classes are instantiated.
``model_options_help`` lists the default model's options under ``fit --help-all``.
"""

from __future__ import annotations

import argparse
import difflib
import re
from typing import Any

from jsonargparse import set_parsing_settings
from jsonargparse._formatters import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser

from dnirnn.cli_help import class_options
from dnirnn.options import Group
from dnirnn.renamed import GROUPS, group_given_a_value, renamed

# the option groups are plain nested groups (--model.synthesizer.fit=rls), not class_path
# choices among subclasses (SlowSynthesizerOptions, InterfaceOptions only rename the prefix)
set_parsing_settings(subclasses_disabled=[Group])

MODEL_CLASSES = ("dnirnn.lit.DNIModule", "dnirnn.lit_hierarchy.HierarchyModule",
                 "dnirnn.decoupled.lit.DecoupledModule")
DATA_CLASSES = tuple(f"dnirnn.datamodules.{c}" for c in
                     ("CopyDataModule", "PTBDataModule", "RecallDataModule"))


class ConfigError(ValueError):
    """A bad command line or config file; the message is the one line that matters."""


def _init_params(path: str) -> list[str]:
    """The class's ``__init__`` parameters (with those it passes on by ``**kwargs``:
    ``dnirnn.cli_help.init_params``), and each option group's as ``group.field``."""
    options = [name for name, _, _ in class_options(path)[1]]
    return list(dict.fromkeys([o.split(".")[0] for o in options] + options))


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in parser._actions:
        out += [s for s in action.option_strings if s.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _option_strings(sub)
    return out


def candidates(parser: argparse.ArgumentParser, group: str | None) -> list[str]:
    """Every option a user may have meant, as ``--a.b`` strings."""
    opts = _option_strings(parser)
    if group in (None, "model"):
        opts += [f"--model.{p}" for c in MODEL_CLASSES for p in _init_params(c)]
    if group in (None, "data"):
        opts += [f"--data.init_args.{p}" for c in DATA_CLASSES for p in _init_params(c)]
    return sorted(set(opts))


def concise(message: str, parser: argparse.ArgumentParser) -> str:
    """The line of a jsonargparse error message that matters, with a suggestion."""
    group = re.match(r'\s*Parser key "(\w+)"', message)
    group = group.group(1) if group else None
    keys = re.findall(r'Parser key "([\w.]+)"', message)  # (the innermost: an option of the
    nested = keys[-1] if group == "model" and len(keys) > 1 else None  # class_path model)
    given = re.search(r"Expected a path but (\S+) either|Expected a dot import path string: "
                      r"(\S+)", message)
    if nested in GROUPS and given:  # --model.interface=linear (an optional group)
        return group_given_a_value(nested, given.group(1) or given.group(2))
    unknown = (re.search(r"unrecognized arguments: (--?[^\s=]+)", message)
               or re.search(r"Option '([^']+)' is not accepted", message)
               or re.search(r'Key "([^"]+)" is not expected', message))
    if unknown:
        key = unknown.group(1)
        if nested and not key.startswith("-"):  # an option of a group of a class_path model
            key = f"--model.{nested}.{key}"
        if not key.startswith("-"):
            key = f"--{group}.{key}" if group == "model" else f"--{group}.init_args.{key}"
        old = re.fullmatch(r"--model\.(?:init_args\.)?(\w+)(?:\.[\w.]+)?", key)
        if old and renamed(old.group(1)):  # a name of before the option groups
            return renamed(old.group(1))
        known = candidates(parser, group)
        if key in known:  # a real option that the parser could not place
            return (f"option {key} is not accepted here: it belongs to a class chosen by a "
                    f"config (data.class_path / model.class_path); give that first, e.g. "
                    f"--config RECIPE or --data=CopyDataModule")
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else "."
        return f"unknown option {key}{hint}"
    value = re.search(r'Parser key "(\w+)":\s*\n\s*Unable to load config \'([^\']*)\'', message)
    if group == "model" and value and value.group(1) in GROUPS:  # --model.synthesizer=linear
        return group_given_a_value(value.group(1), value.group(2))
    if nested:  # the first reason given for the innermost option
        reasons = [ln.strip(" -") for ln in message.split(f'Parser key "{nested}":')[-1]
                   .splitlines()[1:] if ln.strip() and "NoneType" not in ln and not
                   re.match(r"\s*(Does not validate|Subtypes|Errors|Given value)", ln)]
        if reasons:
            return f"model.{nested}: {reasons[0]}"
    inner = re.search(r'Parser key "(\w+)":\s*\n\s*(.+)', message.split("\n", 1)[-1])
    if inner and group:
        return f"{group}.{inner.group(1)}: {inner.group(2).strip()}"
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    first = re.match(r'Parser key "([\w.]+)":$', lines[0]) if lines else None
    if first and len(lines) > 1:  # a top-level option: the reason is on the next line
        return f"{first.group(1)}: {lines[1]}"
    return lines[0] if lines else message


class ConciseParser(LightningArgumentParser):
    """``LightningArgumentParser`` whose errors are ``ConfigError`` with a short message, and
    whose help keeps the epilog's line breaks (the model's options)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", RawEpilogFormatter)
        # No abbreviations: --trainer.max_step must not silently mean --trainer.max_steps
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # jsonargparse trying alternatives: not the user's error
            return super().error(message, ex)
        import os

        if os.environ.get("DNIRNN_DEBUG"):
            return super().error(message, ex)
        root = self
        while getattr(root, "parent_parser", None) is not None:
            root = root.parent_parser
        raise ConfigError(f"{concise(message, root)} (`{self.prog.replace(' [options]', '')} "
                          f"--help` lists the options.)")


class RawEpilogFormatter(DefaultHelpFormatter):
    """jsonargparse's help layout, with the epilog's line breaks kept."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def model_options_help(cls: Any) -> str:
    """``fit --help``'s epilog: the default model's options with defaults and meaning."""
    lines = [f"Model options ({cls.__name__}, the default): --model.NAME=VALUE, or under model:",
             "in a recipe. Another model's: --model.help dnirnn.lit_hierarchy.HierarchyModule"]
    for name, default, text in class_options(f"{cls.__module__}.{cls.__qualname__}")[1]:
        text = text if len(text) < 70 else text[:67] + "..."
        lines.append(f"  {f'--model.{name}={default}':<34} {text}")
    lines.append("Run folders, best.ckpt and summary.json: README.md; errors: docs/errors.md.")
    return "\n".join(lines)


UNION = "Does not validate against any of the Union subtypes"


def user_message(e: BaseException) -> str:
    """The one paragraph to print for a user error ``e``.

    jsonargparse reports an error raised while instantiating the model or data module (e.g.
    ``model.window: must be an integer >= 1``) inside a seven-line "Union subtypes" message
    with a dump of the whole config; the cause is the exception it was raised from. Other
    messages are kept, with their lines joined."""
    inner, seen = e, 0
    while UNION in str(inner) and inner.__cause__ is not None and seen < 20:
        inner, seen = inner.__cause__, seen + 1
    text = str(inner)
    if UNION in text:  # no usable cause: the first error of the list that is not NoneType's
        errors = re.findall(r"^\s+- (.+)$", text, re.M)
        errors = [x for x in errors if "NoneType" not in x] or errors
        text = errors[0] if errors else text.splitlines()[0]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
