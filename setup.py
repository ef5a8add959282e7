"""Package discovery for setuptools; everything else is in pyproject.toml.

Every package under ``dnirnn/`` is found (a new subpackage ships without a change here), and
the recipes, kept in ``recipes/`` at the repository root, are mapped onto ``dnirnn.recipes``
(overlays: ``dnirnn.recipes.overlays``) with their YAML files as package data, so that an
installed dnirnn finds ``--config copy_dni`` and ``--config dni_paper`` from any folder; the
sweep grids (``grids/``) likewise onto ``dnirnn.grids`` (``dnirnn sweep --list``).
"""

from setuptools import find_namespace_packages, setup

RECIPES = {"dnirnn.recipes": "recipes", "dnirnn.recipes.overlays": "recipes/overlays",
           "dnirnn.grids": "grids"}

setup(
    packages=find_namespace_packages(include=["dnirnn", "dnirnn.*"],
                                     exclude=["*.__pycache__"]) + list(RECIPES),
    package_dir=RECIPES,
    package_data={name: ["*.yaml"] for name in RECIPES},
)
