"""Issue 18, item 1: ``pip install .`` gives a package that trains, from any folder.

The wheel is built offline (``pip wheel --no-deps --no-build-isolation``, ``PIP_NO_INDEX``)
from a copy of the source, installed with ``pip install --no-deps --target`` into tmp, and
run from another tmp folder by ``python -S``, with ``PYTHONPATH`` = the target, then the
venv's site-packages (torch, Lightning). ``-S`` matters: the venv's editable install puts a
finder in ``sys.meta_path`` (a ``.pth`` file) that would quietly supply any subpackage
missing from the wheel from the checkout; without ``site`` no ``.pth`` file runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "pyproject.toml", "README.md", "LICENSE", "dnirnn", "recipes", "grids")
TINY = ["--trainer.max_steps=3", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--wandb=false", "--model.hidden_size=8",
        "--data.init_args.steps_per_epoch=2", "--data.init_args.batch_size=4"]


def tree_packages() -> set[str]:
    """Every folder of the checkout's dnirnn/ with Python files, as a dotted name."""
    return {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "dnirnn").rglob("*.py")
            if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # setuptools writes build/ and *.egg-info into the source: a copy
    src.mkdir()
    for name in SOURCES:
        if not (ROOT / name).exists():
            continue
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(ROOT / name, src / name)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps",
                            "--no-build-isolation", "-w", str(tmp), str(src)],
                           capture_output=True, text=True, env=env, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (path,) = tmp.glob("dnirnn-*.whl")
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(path)], check=True, env=env, timeout=300)
    elsewhere = tmp / "elsewhere"  # no dnirnn/, no recipes/ here
    elsewhere.mkdir()
    deps = sysconfig.get_paths()["purelib"]
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "DNIRNN_"))}
    run_env.update(PYTHONPATH=os.pathsep.join([str(site), deps]), OMP_NUM_THREADS="1",
                   WANDB_MODE="offline", XDG_CACHE_HOME=str(tmp / "cache"))
    return {"path": path, "log": build.stdout + build.stderr, "site": site, "cwd": elsewhere,
            "env": run_env}


def run(wheel: dict, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-S", *args], cwd=wheel["cwd"], env=wheel["env"],
                          capture_output=True, text=True, timeout=timeout)


def test_wheel_holds_every_package_and_recipe_without_warnings(wheel):
    log = wheel["log"]
    assert "would be ignored" not in log and "absent from the `packages`" not in log
    names = zipfile.ZipFile(wheel["path"]).namelist()
    shipped = {"/".join(n.split("/")[:-1]).replace("/", ".") for n in names
               if n.startswith("dnirnn/") and n.endswith(".py")}
    assert shipped == tree_packages()  # dnirnn.synthesizers, dnirnn.hierarchy, ... all
    yamls = {n for n in names if n.endswith(".yaml") and not n.startswith("dnirnn/grids/")}
    assert {n for n in names if n.startswith("dnirnn/grids/")} == {
        f"dnirnn/grids/{p.name}" for p in (ROOT / "grids").glob("*.yaml")}
    assert yamls == {f"dnirnn/recipes/{p.relative_to(ROOT / 'recipes').as_posix()}"
                     for p in (ROOT / "recipes").rglob("*.yaml")}
    assert "dnirnn/recipes/overlays/dni_paper.yaml" in yamls
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_every_recipe_and_overlay_resolves_and_parses_from_the_wheel(wheel):
    """In one process: dnirnn and its subpackages come from the wheel, every recipe and
    overlay is found by name, and every recipe (with the overlay where it fits) parses,
    its class paths imported (PTB recipes cannot train here without the data)."""
    recipes = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
    overlays = sorted(p.stem for p in (ROOT / "recipes" / "overlays").glob("*.yaml"))
    script = f"""
import json, sys, contextlib, io
import dnirnn, dnirnn.synthesizers, dnirnn.hierarchy, dnirnn.recipe as r
from dnirnn.main import main
files = [m.__file__ for m in (dnirnn, dnirnn.synthesizers, dnirnn.hierarchy)]
paths = {{n: r.resolve_config(n) for n in {recipes + overlays!r}}}
paths["overlays/dni_paper"] = r.resolve_config("overlays/dni_paper")
parsed = {{}}
for name in {recipes!r}:
    configs = ["--config", name] + (["--config", "dni_paper"] if name.endswith("_dni") and
                                    not "hier" in name else [])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(["fit", *configs, "--print_config"])
        except SystemExit as e:
            parsed[name] = e.code
    parsed[name] = (parsed.get(name), "class_path: dnirnn." in out.getvalue())
print(json.dumps({{"files": files, "paths": paths, "parsed": parsed}}))
"""
    proc = run(wheel, "-c", script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    site = str(wheel["site"])
    assert all(f.startswith(site) for f in got["files"]), got["files"]
    assert all(p.startswith(site) for p in got["paths"].values()), got["paths"]
    assert got["paths"]["dni_paper"] == got["paths"]["overlays/dni_paper"]
    assert got["parsed"] == {n: [0, True] for n in recipes}, got["parsed"]


def test_the_wheel_trains_by_name_from_any_folder(wheel):
    """``python -m dnirnn fit --config copy_dni --config dni_paper`` from a folder with no
    source tree: three steps, a summary, checkpoints; and ``dnirnn recipes`` lists both."""
    listing = run(wheel, "-m", "dnirnn", "recipes")
    assert listing.returncode == 0 and "copy_dni " in listing.stdout
    assert "Overlays" in listing.stdout and "dni_paper " in listing.stdout
    assert str(wheel["site"]) in listing.stdout  # the recipes' folder: the installed one
    proc = run(wheel, "-m", "dnirnn", "fit", "--config", "copy_dni", "--config", "dni_paper",
               "--trainer.default_root_dir=runs/wheel", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    version = wheel["cwd"] / "runs" / "wheel" / "version_0"
    s = json.loads((version / "summary.json").read_text())
    assert s["stage"] == "fit" and s["global_step"] == 3
    assert (version / "checkpoints" / "last.ckpt").is_file()
    config = (version / "config.yaml").read_text()
    assert "fit: adam" in config  # the overlay was applied over the recipe


def test_the_wheel_ships_the_grids(wheel):
    """``dnirnn sweep --list`` and ``--dry-run`` of a shipped grid, from the installed wheel."""
    listing = run(wheel, "-m", "dnirnn", "sweep", "--list")
    assert listing.returncode == 0, listing.stderr[-3000:]
    assert "table1_cpu " in listing.stdout and str(wheel["site"]) in listing.stdout
    dry = run(wheel, "-m", "dnirnn", "sweep", "table1_cpu", "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "dnirnn fit --config copy_tbptt" in dry.stdout and "[new]" in dry.stdout
    assert not (wheel["cwd"] / "runs" / "table1_cpu").exists()  # a dry run writes nothing


def test_gitignore_lists_what_a_build_leaves():
    lines = (ROOT / ".gitignore").read_text().splitlines()
    assert "build/" in lines and "dist/" in lines and "*.egg-info/" in lines
