"""Recipes and overlays by name: ``--config copy_dni --config dni_paper`` as well as paths.

A *recipe* (``recipes/*.yaml``) is a whole experiment; an *overlay*
(``recipes/overlays/*.yaml``) is a partial config laid over a recipe (a second ``--config``),
e.g. ``dni_paper``, the paper's synthesizer. Both live at the repository root and are
installed as the package data of ``dnirnn.recipes`` (setup.py maps that package onto the
folder), so an installed dnirnn finds them from any working directory. No Lightning import
here: ``dnirnn recipes`` is instant.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

INSTALLED_DIR = Path(__file__).resolve().parent / "recipes"  # pip install . (a wheel)
SOURCE_DIR = Path(__file__).resolve().parents[1] / "recipes"  # a checkout, pip install -e .


class RecipeNotFound(ValueError):
    """``--config`` names neither a file nor a shipped recipe or overlay."""


def recipe_dir() -> Path:
    """The folder holding the recipes: the installed package data, else the checkout's."""
    return INSTALLED_DIR if any(INSTALLED_DIR.glob("*.yaml")) else SOURCE_DIR


def list_recipes() -> dict[str, Path]:
    """``{name: path}`` of every shipped recipe, sorted by name."""
    return {p.stem: p for p in sorted(recipe_dir().glob("*.yaml"))}


def list_overlays() -> dict[str, Path]:
    """``{name: path}`` of every shipped overlay (``recipes/overlays/*.yaml``), sorted."""
    return {p.stem: p for p in sorted((recipe_dir() / "overlays").glob("*.yaml"))}


def _looks_inline(value: str) -> bool:
    """jsonargparse also takes a config's text as the value of ``--config``."""
    return any(c in value for c in ":{\n")


def resolve_config(value: str) -> str:
    """``--config`` value -> a path.

    An existing file is taken as given. Otherwise a name is looked up among the shipped
    recipes, then the overlays: ``copy_dni``, ``copy_dni.yaml``, ``recipes/copy_dni.yaml``;
    ``dni_paper``, ``overlays/dni_paper``, ``recipes/overlays/dni_paper.yaml``. Inline YAML
    (``--config '{model: {window: 4}}'``) is returned unchanged.

    Raises:
        RecipeNotFound: no such file, recipe or overlay; the message suggests the closest
            name and points to ``dnirnn recipes``.
    """
    if Path(value).expanduser().is_file() or _looks_inline(value):
        return value
    path = Path(value)
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    parent = path.parent.as_posix()
    recipes, overlays = list_recipes(), list_overlays()
    if parent in (".", "recipes") and name in recipes:
        return str(recipes[name])
    if parent in (".", "overlays", "recipes/overlays") and name in overlays:
        return str(overlays[name])
    raise RecipeNotFound(not_found_message(value, [*recipes, *overlays]))


def not_found_message(value: str, names: list[str]) -> str:
    name = Path(value).name.removesuffix(".yaml").removesuffix(".yml")
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f" Did you mean --config {close[0]}?" if close else ""
    return (f"--config {value}: no such file, and no shipped recipe or overlay of that name."
            f"{hint} `dnirnn recipes` lists the recipes and overlays; --config takes one of "
            f"their names or the path of a YAML file.")


def resolve_config_args(args: list[str]) -> list[str]:
    """Rewrites every ``--config X`` / ``--config=X`` / ``-c X`` in ``args`` with
    :func:`resolve_config` (which raises ``RecipeNotFound``)."""
    out, i = list(args), 0
    while i < len(out):
        a = out[i]
        if a in ("--config", "-c") and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
            i += 1
        elif a.startswith("--config="):
            out[i] = "--config=" + resolve_config(a.split("=", 1)[1])
        i += 1
    return out


def configs_first(args: list[str]) -> list[str]:
    """Moves every ``--config`` of a subcommand (``fit --model.window=4 --config copy_dni``)
    to the front, in their order, so that the options written on the command line override
    the config files wherever they stand. (jsonargparse applies arguments left to right: a
    config after an option would silently overwrite it, and ``--data.init_args.*`` before
    the config that sets ``data.class_path`` would be rejected.)"""
    if not args or args[0].startswith("-"):
        return list(args)
    configs, rest, i = [], [], 1
    while i < len(args):
        a = args[i]
        if a in ("--config", "-c") and i + 1 < len(args):
            configs += args[i : i + 2]
            i += 2
            continue
        (configs if a.startswith("--config=") else rest).append(a)
        i += 1
    return [args[0], *configs, *rest]


_NESTED = re.compile(r"^--model\.(?:init_args\.)?([A-Za-z_]\w*)\.([A-Za-z_]\w*)$")


def nulls_in_groups(args: list[str]) -> list[str]:
    """``--model.GROUP.FIELD=null`` as ``--model.GROUP={FIELD: null}`` (the same merge into
    the group's other values): jsonargparse hands a null given to a field of a class_path
    model's nested group on as the string 'None', which no nullable field takes."""
    out, i = [], 0
    while i < len(args):
        key, eq, value = args[i].partition("=")
        m = _NESTED.match(key)
        step = 2 if m and not eq and i + 1 < len(args) else 1  # ("--model.g.f VALUE")
        if step == 2:
            value = args[i + 1]
        if m and (eq or step == 2) and value in ("null", "None", "~"):
            out.append(f"--model.{m.group(1)}={{{m.group(2)}: null}}")
        else:
            out += args[i : i + step]
        i += step
    return out


def first_comment(path: Path) -> str:
    """The first comment line of a recipe (its one-line description)."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def print_recipes() -> None:
    """``dnirnn recipes``: every shipped recipe and overlay, with its description."""
    recipes, overlays = list_recipes(), list_overlays()
    width = max(map(len, [*recipes, *overlays]), default=0)
    for name, path in recipes.items():
        print(f"{name:<{width}}  {first_comment(path)}")
    print(f"\n{len(recipes)} recipes in {recipe_dir()}. Use one with "
          f"`dnirnn fit --config NAME`; copy one to edit it.")
    if overlays:
        print("\nOverlays (partial configs, laid over a recipe with a second --config: "
              "`dnirnn fit --config repeat_copy_dni --config dni_paper`):")
        for name, path in overlays.items():
            print(f"{name:<{width}}  {first_comment(path)}")
