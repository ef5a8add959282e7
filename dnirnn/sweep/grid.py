"""Grid files: found by path or name, read, checked and expanded into cells (one ``dnirnn fit``
each, with its recipe, overlays, overrides and folder) and a cell's environment.

The format is documented in ``dnirnn/sweep/__init__.py``. Everything is checked when the
file is read (keys, recipes, overlays, axis labels, templates; the report's metrics, tables
and plots in ``dnirnn.sweep.report_spec``), so a typo stops the sweep before its first cell
runs. No Lightning import.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from typing import Any

import yaml

from dnirnn.recipe import list_recipes, recipe_dir
from dnirnn.sweep.parts import Cell, Grid, GridError, Settings, cli_value, name_part
from dnirnn.sweep.report_spec import as_list, checked_keys, read_report
from dnirnn.sweep.sections import check_section

GRID_KEYS = {"title", "description", "runs", "out", "recipe", "overlays", "args", "callbacks",
             "threads", "test", "seeds", "axes", "blocks", "metrics", "tables", "plots",
             "sections"}
BLOCK_KEYS = {"recipe", "overlays", "args", "callbacks", "threads", "test", "seeds", "axes"}
VARIANT_KEYS = {"recipe", "overlays", "args", "callbacks", "threads", "test", "about"}
SWEEP_OWNED = ("trainer.default_root_dir", "ckpt_path")
_FIELD = re.compile(r"\{(\w+)\}")
_LABEL = re.compile(r"[\w.+=-]+")

SOURCE_GRIDS = Path(__file__).resolve().parents[2] / "grids"  # a checkout, pip install -e .
INSTALLED_GRIDS = Path(__file__).resolve().parents[1] / "grids"  # a wheel (package data)


def grid_dir() -> Path:
    return INSTALLED_GRIDS if any(INSTALLED_GRIDS.glob("*.yaml")) else SOURCE_GRIDS


def list_grids() -> dict[str, Path]:
    return {p.stem: p for p in sorted(grid_dir().glob("*.yaml"))}


def find_grid(value: str) -> Path:
    """A grid file's path, or a shipped grid's name (``table1_cpu``)."""
    if Path(value).expanduser().is_file():
        return Path(value).expanduser()
    name = Path(value).name.removesuffix(".yaml")
    grids = list_grids()
    if name in grids and Path(value).parent.name in ("", "grids"):
        return grids[name]
    raise GridError(f"no grid file {value!r}: give a path, or one of the shipped grids "
                    f"({', '.join(grids) or 'none found'}; `dnirnn sweep --list`).")


# ---- reading --------------------------------------------------------------------------------

def _looks_like_path(v: str) -> bool:
    return "/" in v or v.endswith((".yaml", ".yml"))


class _Resolver:
    """Recipes and overlays by name (as ``dnirnn fit --config``) or by path (relative to the
    grid file's folder, then to the working directory)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.recipes = list_recipes()
        self.overlays = {p.stem: p for p in sorted((recipe_dir() / "overlays").glob("*.yaml"))}

    def _path(self, v: str) -> Path | None:
        for p in (self.base / v, Path(v)):
            if p.expanduser().is_file():
                return p.expanduser()
        return None

    def recipe(self, v: str, where: str) -> str:
        if _looks_like_path(v):
            p = self._path(v)
            if p is None:
                raise GridError(f"{where}: recipe file {v} does not exist.")
            return _short(p)
        if v not in self.recipes:
            raise GridError(f"{where}: no recipe {v!r}; recipes: {', '.join(self.recipes)}.")
        return v

    def overlay(self, v: str, where: str) -> str:
        p = self._path(v) if _looks_like_path(v) else self.overlays.get(v)
        if p is None:
            raise GridError(f"{where}: no overlay {v!r}; overlays (recipes/overlays/): "
                            f"{', '.join(self.overlays) or 'none'}, or give a path.")
        return _short(p)

    def named(self, v: str, where: str) -> Settings:
        """A bare string as an axis label's value: an overlay's name, else a recipe's (a
        ``{axis}`` template is a recipe's)."""
        if "{" in v:
            return Settings(recipe=v)
        if v in self.overlays or (_looks_like_path(v) and "overlays" in v):
            return Settings(overlays=[v])
        if v in self.recipes or _looks_like_path(v):
            return Settings(recipe=v)
        raise GridError(f"{where}: {v!r} is neither an overlay ({', '.join(self.overlays)}) "
                        f"nor a recipe; write a mapping (recipe:, overlays:, dotted.key: value) "
                        f"for anything else.")


def _short(p: Path) -> str:
    p = p.resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _settings(d: dict, where: str, reserved: set[str], resolve: _Resolver) -> Settings:
    """Settings from a mapping: reserved keys plus (for axis labels) dotted overrides."""
    args = {}
    for k, v in d.items():
        k = str(k)
        if k in reserved:
            continue
        if k.startswith("-"):
            raise GridError(f"{where}: write override keys without dashes ({k!r}).")
        args[k] = v
    for k, v in (d.get("args") or {}).items():
        args[str(k).lstrip("-")] = v
    for k, v in args.items():
        if "." not in k and v is None:
            raise GridError(f"{where}: override {k!r} with no value: a text split at a comma "
                            f"in a {{flow: mapping}}? Quote it (about: \"a, b\").")
        if k in SWEEP_OWNED:
            raise GridError(f"{where}: {k} is set by the sweep (each cell has its own folder "
                            f"under `runs:`; resumption passes ckpt_path).")
    callbacks = {}
    cbs = d.get("callbacks") or {}
    if isinstance(cbs, list):
        cbs = {c: {} for c in cbs}
    for cls, init in cbs.items():
        callbacks[str(cls)] = dict(init or {})
    threads = d.get("threads")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise GridError(f"{where}: threads must be a positive integer, got {threads!r}.")
    test = d.get("test")
    if test not in (None, False, "best", "last"):
        raise GridError(f"{where}: test: best | last (the checkpoint to test), got {test!r}.")
    recipe = d.get("recipe")
    for o in as_list(d.get("overlays")):
        if "{" not in str(o):
            resolve.overlay(str(o), where)
    if recipe is not None and "{" not in str(recipe):
        resolve.recipe(str(recipe), where)
    return Settings(None if recipe is None else str(recipe),
                    [str(o) for o in as_list(d.get("overlays"))], args, callbacks, threads,
                    test if test else None, d.get("about"))


def _label_values(axis: str, spec: Any, definition: Any, where: str,
                  resolve: _Resolver) -> list[tuple[str, Settings]]:
    """An axis in a block: ``[(label, settings)]``."""
    def value(label: str, v: Any) -> Settings:
        w = f"{where}, axis {axis}, label {label}"
        if v is None:
            return Settings()
        if isinstance(v, str):
            return resolve.named(v, w)
        if isinstance(v, list):
            for o in v:
                resolve.overlay(str(o), w)
            return Settings(overlays=[str(o) for o in v])
        if not isinstance(v, dict):
            raise GridError(f"{w}: a label's value is a recipe or overlay name, a list of "
                            f"overlays, or a mapping (recipe:, overlays:, dotted.key: value).")
        return _settings(v, w, VARIANT_KEYS, resolve)

    if spec is None:
        if definition is None:
            raise GridError(f"{where}: axis {axis} has no labels here and no definition under "
                            f"the grid's `axes:`.")
        spec = definition
        definition = None
    if isinstance(spec, dict):
        out = [(str(k), value(str(k), v)) for k, v in spec.items()]
    else:
        labels = [str(x) for x in as_list(spec)]
        if isinstance(definition, dict):
            known = {str(k): v for k, v in definition.items()}
            bad = [x for x in labels if x not in known]
            if bad:
                raise GridError(f"{where}: axis {axis} has no label(s) {', '.join(bad)}; "
                                f"defined: {', '.join(known)}.")
            out = [(x, value(x, known[x])) for x in labels]
        else:
            out = [(x, Settings()) for x in labels]
    for label, _ in out:
        if not _LABEL.fullmatch(label):
            raise GridError(f"{where}: label {label!r} of axis {axis} names a folder: use "
                            f"letters, digits and . _ + = - (describe it with `about:`).")
    if not out:
        raise GridError(f"{where}: axis {axis} has no labels.")
    return out


def _fill(v: Any, labels: dict[str, str], where: str) -> Any:
    if isinstance(v, dict):
        return {k: _fill(x, labels, where) for k, x in v.items()}
    if not isinstance(v, str):
        return v

    def sub(m: re.Match) -> str:
        if m.group(1) not in labels:
            raise GridError(f"{where}: {{{m.group(1)}}} names no axis of this cell "
                            f"(its axes: {', '.join(labels)}).")
        return labels[m.group(1)]

    return _FIELD.sub(sub, v)


def load_grid(path: str | Path, runs: str | None = None, out: str | None = None) -> Grid:
    """Reads and checks a grid file; raises ``GridError`` with what to change."""
    path = find_grid(str(path))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise GridError(f"{path} is not valid YAML: {e}") from None
    raw = checked_keys(raw, GRID_KEYS, str(path))
    name = path.stem
    resolve = _Resolver(path.parent)
    top = _settings({k: raw[k] for k in BLOCK_KEYS - {"axes", "seeds"} if k in raw}, str(path),
                    VARIANT_KEYS, resolve)
    top.threads = top.threads or 1
    defs = raw.get("axes") or {}
    if not isinstance(defs, dict):
        raise GridError(f"{path}: axes: a mapping of axis name -> labels.")
    blocks = raw.get("blocks") or [{"axes": {k: None for k in defs}}]
    runs_dir = Path(runs or raw.get("runs") or f"runs/{name}")
    cells: list[Cell] = []
    axes_order: list[str] = []
    label_order = {str(a): [str(x) for x in (v if isinstance(v, dict) else as_list(v))]
                   for a, v in defs.items()}
    about: dict[str, dict[str, str]] = {}
    for i, block in enumerate(blocks):
        where = f"{path}, block {i + 1}" if raw.get("blocks") else str(path)
        block = checked_keys(block, BLOCK_KEYS, where)
        bset = _settings({k: v for k, v in block.items() if k not in ("axes", "seeds")}, where,
                         VARIANT_KEYS, resolve)
        axes = [(str(a), _label_values(str(a), spec, defs.get(a), where, resolve))
                for a, spec in (block.get("axes") or {}).items()]
        seeds = block.get("seeds", raw.get("seeds"))
        if seeds is not None:
            if "seed" in dict(axes):
                raise GridError(f"{where}: `seeds:` makes the axis `seed`; do not name one.")
            axes.append(("seed", [(str(int(s)), Settings()) for s in as_list(seeds)]))
        for a, values in axes:
            if a not in axes_order:
                axes_order.append(a)
            for label, s in values:
                if label not in label_order.setdefault(a, []):
                    label_order[a].append(label)
                if s.about:
                    about.setdefault(a, {})[label] = str(s.about)
        for combo in itertools.product(*[values for _, values in axes]):
            labels = {a: label for (a, _), (label, _) in zip(axes, combo)}
            s = top.then(bset)
            for _, part in combo:
                s = s.then(part)
            if seeds is not None and "seed_everything" not in s.args:
                s.args["seed_everything"] = "{seed}"
            cname = "_".join(name_part(a, label) for a, label in labels.items()) or name
            w = f"{where}, cell {cname}"
            if not s.recipe:
                raise GridError(f"{w}: no recipe (set `recipe:` in the grid, the block or a "
                                f"label).")
            recipe = _fill(s.recipe, labels, w)
            overlays = [_fill(o, labels, w) for o in s.overlays]
            configs = [resolve.recipe(recipe, w)] + [resolve.overlay(o, w) for o in overlays]
            cells.append(Cell(
                cname, labels, recipe, overlays,
                {k: cli_value(_fill(v, labels, w)) for k, v in s.args.items()},
                {k: _fill(v, labels, w) for k, v in s.callbacks.items()},
                s.threads or 1, s.test, runs_dir / cname, configs))
    seen: dict[str, int] = {}
    for c in cells:
        seen[c.name] = seen.get(c.name, 0) + 1
    dup = [n for n, k in seen.items() if k > 1]
    if dup:
        raise GridError(f"{path}: cells with the same name (the same labels) in two blocks: "
                        f"{', '.join(dup)}.")
    if not cells:
        raise GridError(f"{path}: no cells.")
    axes_order = [a for a in axes_order if a != "seed"] + (["seed"] if "seed" in axes_order
                                                           else [])
    metrics, tables, plots = read_report(raw, axes_order)
    sections = [check_section(s, i, axes_order, label_order) for i, s in enumerate(
        as_list(raw.get("sections")))]
    out_path = Path(out or raw.get("out") or runs_dir / "report.md")
    return Grid(path, name, str(raw.get("title") or name), str(raw.get("description") or ""),
                runs_dir, out_path, cells, metrics, tables, plots, axes_order, label_order,
                about, top.threads, sections)


def env_for(cell: Cell) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(cell.threads),
            "MKL_NUM_THREADS": str(cell.threads)}
