"""The shipped grid files (grids/*.yaml): they load, cover the experiments of the results
files, keep equal budgets where the comparison needs them, and their synthesizer variants are
what their names say once recipe, overlay and overrides are laid over each other. No
training. (Every cell's command was checked once against the retired runner's: the same
effective `--print_config`, see the commit that retired them.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dnirnn.recipe import recipe_dir
from dnirnn.sweep.grid import GridError, list_grids, load_grid

ROOT = Path(__file__).resolve().parents[1]

# The paper's synthesizer (Jaderberg et al. 2016), every option spelled out: what the
# `dni_paper` cells of the comparison measure.
PAPER = {"synthesizer.kind": "mlp", "synthesizer.fit": "adam", "synthesizer.hidden": 256,
         "synthesizer.layers": 1, "synthesizer.positions": 1, "synthesizer.context": "none",
         "synthesizer.lr": 1e-4, "synthesizer.clip": 10.0, "targets.scale": 1.0,
         "targets.lam": None, "targets.horizon": None, "synthesizer.guard": None, "depth": 1}
RLS = {"synthesizer.kind": "linear", "synthesizer.fit": "rls", "synthesizer.rls_forget": 0.8,
       "synthesizer.rls_ridge": 0.1}
P32, LAM = {"synthesizer.positions": 32}, {"targets.lam": 1.0}
BEST = {**RLS, **P32, **LAM, "synthesizer.guard": 2.0}
VARIANTS = {  # variant -> what it adds to the paper's synthesizer
    "dni_paper": {}, "+rls": RLS, "+positions": P32,
    "+lambda": LAM, "+guard": {"synthesizer.guard": 2.0},
    "rls+positions": {**RLS, **P32},
    "rls+positions+lambda": {**RLS, **P32, **LAM},
    "rls+positions+lambda0.5": {**RLS, **P32, "targets.lam": 0.5},
    "best": BEST, "best+phase": {**BEST, "synthesizer.context": "phase"},
    "best+forget0.9": {**BEST, "synthesizer.rls_forget": 0.9},
    "best+forget0.95": {**BEST, "synthesizer.rls_forget": 0.95},
}


def dotted(model: dict) -> dict:
    """A YAML model section with its option groups as dotted keys (``synthesizer.fit``)."""
    out = {}
    for k, v in model.items():
        out.update({f"{k}.{f}": x for f, x in v.items()} if isinstance(v, dict) else {k: v})
    return out


def model_options(cell) -> dict:
    """The cell's model options, dotted: its recipe, then its overlays, then its overrides."""
    out = {}
    for path in cell.configs:
        p = Path(path) if Path(path).is_file() else recipe_dir() / f"{path}.yaml"
        model = yaml.safe_load(p.read_text()).get("model") or {}
        out.update(dotted(model.get("init_args", model) if "class_path" in model else model))
    for k, v in cell.args.items():
        if k.startswith("model."):
            out[k.removeprefix("model.").removeprefix("init_args.")] = yaml.safe_load(v)
    return out


def test_every_shipped_grid_loads_with_existing_recipes():
    """grids/X.yaml writes results/X.md; a cell runs on one thread unless its grid declares
    more with its own `threads:` (the most any of its cells uses)."""
    grids = list_grids()
    assert {"table1_cpu", "table1_paper", "synthetic_gradients", "hierarchy",
            "copy_cpu", "decoupled"} <= set(grids)
    for name, path in grids.items():
        g = load_grid(path)
        assert g.cells and len({c.name for c in g.cells}) == len(g.cells)
        assert g.runs.parts[0] == "runs" and g.out == Path("results") / f"{name}.md"
        assert max(c.threads for c in g.cells) == g.threads, name
        for c in g.cells:
            assert (recipe_dir() / f"{c.recipe}.yaml").is_file()
            assert c.args.get("wandb") == "false"


def test_scripts_hold_no_grid():
    assert not list((ROOT / "scripts").glob("*.yaml"))


def test_a_grid_is_found_by_name_and_a_typo_names_the_shipped_ones():
    assert load_grid("copy_cpu").path == ROOT / "grids" / "copy_cpu.yaml"
    with pytest.raises(GridError, match="table1_cpu"):
        load_grid("table1_cpuu")


@pytest.mark.parametrize("name, ptb_hidden, validations", [("table1_cpu", "128", 8),
                                                           ("table1_paper", "1024", 40)])
def test_table1_covers_the_paper_table_at_equal_budgets(name, ptb_hidden, validations):
    g = load_grid(name)
    assert len(g.cells) == 39
    by = {(c.labels["task"], int(c.labels["T"]), c.labels["mode"]): c for c in g.cells}
    for mode in ("tbptt", "dni", "dni_aux"):
        assert {t for task, t, m in by if task == "copy" and m == mode} == {2, 3, 4, 5}
        assert {t for task, t, m in by if task == "repeat_copy" and m == mode} == {2, 3, 4, 5}
        assert {t for task, t, m in by if task == "ptb_char" and m == mode} == {2, 3, 4, 5, 8}
    tokens, copy_steps = [], set()
    for (task, t, mode), c in by.items():
        assert c.recipe == f"{task}_{mode}" and c.args["model.window"] == str(t)
        assert "dnirnn.diagnostics.SyntheticGradientDiagnostics" in c.callbacks
        if task == "ptb_char":
            every = int(c.args["trainer.val_check_interval"])
            assert int(c.args["checkpoint_every"]) == every  # a checkpoint per validation
            steps = int(c.args["trainer.max_steps"])
            assert steps == every * validations and c.test == "best"
            assert c.args["model.hidden_size"] == ptb_hidden
            tokens.append(steps * t * int(c.args["model.windows_per_step"])
                          * int(c.args["data.init_args.batch_size"]))
        else:
            copy_steps.add(c.args["trainer.max_steps"])
            assert c.test is None
    assert max(tokens) / min(tokens) < 1.1  # equal token budgets across T (rounding only)
    assert len(copy_steps) == 1


def test_synthetic_gradient_variants_are_the_paper_plus_their_options():
    """So a later change of a recipe's or the overlay's defaults that would change what a
    cell measures fails here."""
    g = load_grid("synthetic_gradients")
    assert len(g.cells) == 77
    seen = set()
    for c in g.cells:
        v, seed = c.labels["variant"], c.labels["seed"]
        seen.add(v)
        assert c.args["seed_everything"] == seed and c.args["data.init_args.seed"] == seed
        assert c.args["trainer.max_steps"] == "3000"
        opts = model_options(c)
        assert opts["window"] == int(c.labels["T"])
        if v == "tbptt":
            assert c.recipe.endswith("_tbptt") and opts["boundary"] == "tbptt"
        elif v == "oracle":
            assert opts["boundary"] == "oracle" and opts["targets.oracle_windows"] >= 1000
        else:
            assert opts["boundary"] == "dni"
            for k, want in {**PAPER, **VARIANTS[v]}.items():
                assert opts.get(k) == want, (c.name, k)
    assert seen == {*VARIANTS, "tbptt", "oracle"}


def test_paper_overlay_is_the_paper_synthesizer():
    overlay = yaml.safe_load((recipe_dir() / "overlays" / "dni_paper.yaml").read_text())
    for k, v in dotted(overlay["model"]).items():
        assert PAPER[k] == v, k


def test_copy_recipes_default_to_the_measured_bounded_memory_method():
    """The copy recipes are the `hybrid` cells of grids/depth.yaml (what results/depth.md
    measured is what a user runs), whose synthesizer is the `dni_h4` cells' of
    grids/horizon.yaml; those ran the one-window update, pinned there (depth 1)."""
    horizon, depth = load_grid("horizon"), load_grid("depth")
    for task in ("copy", "repeat_copy"):
        recipe = dotted(yaml.safe_load((recipe_dir() / f"{task}_dni.yaml").read_text())["model"])
        assert recipe["depth"] == 4
        hybrid = [c for c in depth.cells if c.labels["task"] == task
                  and c.labels["variant"] == "hybrid"]
        assert len(hybrid) == 5  # T = 2 x seeds 0-4
        cells = [c for c in horizon.cells if c.labels["task"] == task
                 and c.labels["variant"] == "dni_h4"]
        assert len(cells) == 6  # T = 2, 3 x seeds 0-2
        for c in hybrid:
            opts = model_options(c)
            assert {k: v for k, v in opts.items() if k != "window"} == \
                {k: v for k, v in recipe.items() if k != "window"}, c.name
        for c in cells:
            opts = model_options(c)
            assert opts["depth"] == 1, c.name
            for k, v in recipe.items():
                if k not in ("window", "depth"):
                    assert opts.get(k) == v, (c.name, k)
        assert recipe["targets.horizon"] == 4 and recipe["targets.lam"] == 1.0


def test_moonshot_grid_times_the_recipe_against_full_bptt():
    """grids/horizon_moonshot.yaml: the repeat-copy recipe as then shipped against full BPTT, both
    for 10,000 steps with the WallClock callback (their curves are read against time)."""
    g = load_grid("horizon_moonshot")
    by = {c.labels["variant"]: c for c in g.cells}
    assert set(by) == {"dni_h4", "full_bptt"}
    for c in g.cells:
        assert c.args["trainer.max_steps"] == "10000"
        assert "dnirnn.wallclock.WallClock" in c.callbacks
    assert by["dni_h4"].recipe == "repeat_copy_dni" and model_options(by["dni_h4"]) == {
        **dotted(yaml.safe_load((recipe_dir() / "repeat_copy_dni.yaml").read_text())["model"]),
        "window": 2, "depth": 1}  # (the recipe before the hybrid, as the cells ran)
    assert model_options(by["full_bptt"])["window"] == 1000
    assert any(p.get("x") == "time/train_s" for p in g.plots)


def test_hierarchy_grid_compares_at_equal_fast_window():
    g = load_grid("hierarchy")
    recall = [c for c in g.cells if c.labels["task"] == "recall"]
    ptb = [c for c in g.cells if c.labels["task"] == "ptb_char"]
    assert len(recall) == 9 * 3 and len(ptb) == 7
    assert {c.labels["seed"] for c in recall} == {"0", "1", "2"}
    for c in g.cells:
        opts = model_options(c)
        assert opts.get("window", opts.get("fast_window")) == 8, c.name
        steps = {"recall": "1500", "ptb_char": "600"}[c.labels["task"]]
        assert c.args["trainer.max_steps"] == steps
    assert g.about["model"]["oracle"].startswith("single level, the true gradient")
