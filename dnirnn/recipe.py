"""Recipes by name: ``dnirnn fit --config copy_dni`` as well as ``--config path/to/x.yaml``.

The recipes live in ``recipes/*.yaml`` at the repository root and are installed as the
package data of ``dnirnn.recipes`` (pyproject.toml maps that package onto the folder), so
an installed dnirnn finds them from any working directory. No Lightning import here: the
``dnirnn recipes`` listing is instant.
"""

from __future__ import annotations

from pathlib import Path

INSTALLED_DIR = Path(__file__).resolve().parent / "recipes"  # pip install . (a wheel)
SOURCE_DIR = Path(__file__).resolve().parents[1] / "recipes"  # a checkout, pip install -e .


def recipe_dir() -> Path:
    """The folder holding the recipes: the installed package data, else the checkout's."""
    return INSTALLED_DIR if any(INSTALLED_DIR.glob("*.yaml")) else SOURCE_DIR


def list_recipes() -> dict[str, Path]:
    """``{name: path}`` of every shipped recipe, sorted by name."""
    return {p.stem: p for p in sorted(recipe_dir().glob("*.yaml"))}


def resolve_config(value: str) -> str:
    """``--config`` value -> a path. An existing file is taken as given; otherwise a recipe
    name (``copy_dni``, ``copy_dni.yaml`` or ``recipes/copy_dni.yaml``) becomes the shipped
    recipe's path. Anything else is returned unchanged (the parser then reports it)."""
    if Path(value).expanduser().is_file():
        return value
    name = Path(value).name.removesuffix(".yaml").removesuffix(".yml")
    if Path(value).parent.name not in ("", "recipes"):
        return value
    return str(list_recipes().get(name, value))


def resolve_config_args(args: list[str]) -> list[str]:
    """Rewrites every ``--config X`` / ``--config=X`` / ``-c X`` in ``args`` with
    :func:`resolve_config`."""
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


def first_comment(path: Path) -> str:
    """The first comment line of a recipe (its one-line description)."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def print_recipes() -> None:
    """``dnirnn recipes``: every shipped recipe with its description and where it lives."""
    recipes = list_recipes()
    width = max(map(len, recipes), default=0)
    for name, path in recipes.items():
        print(f"{name:<{width}}  {first_comment(path)}")
    print(f"\n{len(recipes)} recipes in {recipe_dir()}. Use one with "
          f"`dnirnn fit --config NAME`; copy one to edit it.")
