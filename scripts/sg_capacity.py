"""What a synthesizer could reach on a FROZEN core: held-out cos(M(s_k), true future gradient).

Loads a copy / repeat-copy run's checkpoint (core and synthesizer at the end of training),
samples episodes of its current curriculum level, computes the TRUE future gradient at every
internal boundary with frozen parameters (``future_gradients`` with λ = 1, beta = 1: the
diagnostics' measurement) and fits, per boundary index k, on training episodes:

- ``linear``: ridge least squares on ``[s; 1]`` (the ``rls`` synthesizer's map, fitted to
  the exact targets of a core that stands still: no lag, no bootstrapping);
- ``features F``: ridge on ``[s; relu(s R + c); 1]`` with F random ReLU features (a
  nonlinear map fitted just as exactly);

for several relative ridges, and reports the cosine on held-out episodes by phase (input /
answer), beside the run's own synthesizer on the same episodes. If the exact linear fit on
a frozen core stays low, linear capacity (not lag) limits the cosine; if random features
raise it, a nonlinear map would.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/sg_capacity.py \\
        runs/synthetic_gradients/repeat_copy_T2_best_s0 [--train 96 --test 32 --features 1024]

``--by distance`` separates what limits a synthesizer's reach past the horizon, on the same
frozen core, by the boundary's distance from the episode's last boundary (in windows):

- ``exact``: the linear map fitted to the true targets (capacity);
- ``bootstrap H``: fitted from the last boundary back, each to the H-window return its map
  would be fitted to in training (the true gradient of the next H windows' losses plus
  ``J^T M_{k+H}(s_{k+H})`` through them, with the map already fitted at ``k + H``): what the
  bootstrap's compounding costs, with no lag (the core stands still) and no noise of the
  online fit;
- each at ``--train`` batches and at each of ``--few`` batches (the pairs an online fit holds: with
  forgetting f, about ``1 / (1 - f)`` training steps' worth);
- the run's own synthesizer (online, bootstrapped, lagging).

With ``--fit-checkpoint`` the fits are made on an earlier checkpoint's core (at the evaluated
checkpoint's level) and tested on the evaluated one's: what the core's drift alone costs.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/sg_capacity.py RUN --by distance \\
        --bootstrap 2 --few 5 --ridges 0.0001 [--checkpoint 'epoch=11-step=3000.ckpt']
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from dnirnn.engine.truth import future_gradients
from dnirnn.lit import DNIModule
from dnirnn.model import unflatten_state
from dnirnn.tasks import CopyTask


def load(run: Path, checkpoint: str = "last.ckpt") -> tuple[DNIModule, CopyTask]:
    """The run's model and a task at its curriculum level and delay (its data settings, a new
    seed), from ``checkpoint`` of the run's newest version."""
    version = sorted(run.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))[-1]
    path = version / "checkpoints" / checkpoint
    if not path.is_file():
        raise SystemExit(f"no checkpoint {path}: name one of "
                         f"{sorted(q.name for q in path.parent.glob('*.ckpt'))} (--checkpoint)")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    hp = {k: v for k, v in ck["hyper_parameters"].items() if not k.startswith("_")}
    module = DNIModule(**hp)
    module.load_state_dict(ck["state_dict"])
    data = yaml.safe_load((version / "config.yaml").read_text())["data"]["init_args"]
    task = CopyTask(repeat=data["repeat"], num_bits=data["num_bits"],
                    norm_max=data["norm_max"], batch_size=data["batch_size"], seed=12345,
                    delay=data.get("delay", 0), grow=data.get("grow", "length"))
    task.load_state_dict(ck["dnirnn"]["task"])
    module.task = task
    module.engine.loss_norm = task.loss_norm(module.hparams.window)
    module.eval()
    return module, task


def boundaries(module: DNIModule, task: CopyTask, position: int):
    """``[(k, phase, s_k, true_k, g_k)]`` at the internal boundaries of one batch, and the
    batch's windows."""
    batch = task.batch("train", position, module.chunk)
    windows = module.windows(batch)
    engine = module.engine
    state = engine.core.zero_state(batch.x.shape[1])
    truth = future_gradients(engine, windows, state, lam=1.0, beta=1.0, predict=None,
                             episode_end=True)
    out = []
    for k in range(1, len(windows)):
        s = truth.states[k]
        with torch.no_grad():
            g = engine.synthetic_gradient(s, windows[k].context, windows[k].position)
        phase = "answer" if task.answer_phase(k * module.hparams.window) else "input"
        out.append((k, phase, s, truth.targets[k], g))
    return out, windows


def ridge_fit(x: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor:
    x, y = x.double(), y.double()
    a = x.T @ x
    a = a + ridge * a.diagonal().mean() * torch.eye(len(a), dtype=a.dtype)
    return torch.linalg.solve(a, x.T @ y)


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0,
                                     eps=1e-30))


def lin(s: torch.Tensor) -> torch.Tensor:
    """``[s; 1]`` in float64: the linear map's input."""
    return torch.cat([s.double(), torch.ones(len(s), 1, dtype=torch.float64)], -1)


def by_phase(train, test, args) -> dict[str, dict[str, list[float]]]:
    """Held-out cosines by phase: the exact linear and random-feature maps, the run's own."""
    S = next(iter(train.values()))[0][0].shape[1]
    R = torch.randn(S, args.features, dtype=torch.float64) / S ** 0.5
    c = 0.1 * torch.randn(args.features, dtype=torch.float64)

    def feat(s):
        return torch.cat([lin(s), torch.relu(s.double() @ R + c)], -1)

    maps = {"linear": lin, f"features {args.features}": feat}
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for name, phi in maps.items():
        for ridge in (float(r) for r in args.ridges.split(",")):
            W = {k: ridge_fit(torch.cat([phi(s) for s, _ in v]), torch.cat([t for _, t in v]),
                              ridge) for k, v in train.items()}
            for rows, _ in test:
                for k, phase, s, t, _ in rows:
                    if k in W:
                        scores[f"{name}, ridge {ridge:g}"][phase].append(cos(phi(s) @ W[k], t))
    for rows, _ in test:
        for _, phase, _, t, g in rows:
            scores["the run's synthesizer"][phase].append(cos(g, t))
    return scores


def bootstrap_maps(module: DNIModule, batches, horizon: int, ridge: float
                   ) -> dict[int, torch.Tensor]:
    """Per-boundary linear maps fitted from the last boundary back to the H-window returns
    (see the module docstring), on ``batches`` = ``[(rows, windows)]``."""
    engine, K = module.engine, len(batches[0][1])
    layers = engine.core.cfg.num_layers
    W: dict[int, torch.Tensor] = {}
    for k in range(K - 1, 0, -1):
        end = k + horizon
        xs, ys = [], []
        for rows, windows in batches:
            s_k = rows[k - 1][2]

            def predict(flat, j, _k=k):  # M at boundary k + j of the episode (fitted already)
                return (lin(flat) @ W[_k + j]).to(flat.dtype)

            span = windows[k:end]
            truth = future_gradients(engine, span, unflatten_state(s_k, layers),
                                     predict=predict if end < K else None,
                                     episode_end=end >= K)
            xs.append(lin(s_k))
            ys.append(truth.targets[0])
        W[k] = ridge_fit(torch.cat(xs), torch.cat(ys), ridge)
    return W


DISTANCES = ((0, 0), (1, 3), (4, 7), (8, 10 ** 9))


def by_distance(module, train_batches, test, args) -> dict[str, dict[str, list[float]]]:
    """Held-out cosines by the boundary's distance from the episode's last boundary
    (``module``: the core the fits are made on; ``test``: made with the run's core)."""
    K = len(test[0][1])

    def group(k: int) -> str:
        d = K - 1 - k
        lo, hi = next((lo, hi) for lo, hi in DISTANCES if lo <= d <= hi)
        return f"{lo}" if lo == hi else f"{lo}-{min(hi, K - 2)}"

    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    batch = train_batches[0][0][0][2].shape[0]  # (episodes a batch)
    for ridge in (float(r) for r in args.ridges.split(",")):
        for n in (args.train, *(int(f) for f in args.few.split(",") if f)):
            fit_on, pairs = train_batches[:n], batch * n
            exact = {k: ridge_fit(torch.cat([lin(rows[k - 1][2]) for rows, _ in fit_on]),
                                  torch.cat([rows[k - 1][3] for rows, _ in fit_on]), ridge)
                     for k in range(1, K)}
            variants = {f"exact, {pairs} pairs, ridge {ridge:g}": exact}
            if args.bootstrap:
                variants[f"bootstrap {args.bootstrap}, {pairs} pairs, ridge {ridge:g}"] = \
                    bootstrap_maps(module, fit_on, args.bootstrap, ridge)
            for name, W in variants.items():
                for rows, _ in test:
                    for k, _, s, t, _ in rows:
                        scores[name][group(k)].append(cos(lin(s) @ W[k], t))
    for rows, _ in test:
        for k, _, _, t, g in rows:
            scores["the run's synthesizer"][group(k)].append(cos(g, t))
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a copy / repeat-copy run folder")
    ap.add_argument("--checkpoint", default="last.ckpt", help="the checkpoint file's name")
    ap.add_argument("--train", type=int, default=96, help="training batches (of the run's size)")
    ap.add_argument("--test", type=int, default=32, help="held-out batches")
    ap.add_argument("--features", type=int, default=1024)
    ap.add_argument("--ridges", default="0.001,0.01,0.1")
    ap.add_argument("--by", choices=("phase", "distance"), default="phase")
    ap.add_argument("--bootstrap", type=int, default=0,
                    help="with --by distance: also the H-window bootstrapped fit (0: none)")
    ap.add_argument("--few", default="5",
                    help="with --by distance: also each fit on these many batches (a list)")
    ap.add_argument("--fit-checkpoint", default=None,
                    help="with --by distance: fit on this (earlier) checkpoint's core, at the "
                         "evaluated checkpoint's level, and test on the evaluated one: a fit "
                         "that lags the core by the steps between them")
    args = ap.parse_args()
    torch.manual_seed(0)
    module, task = load(args.run, args.checkpoint)
    fitter, fit_task = module, task
    if args.fit_checkpoint:
        if args.by != "distance":
            raise SystemExit("--fit-checkpoint goes with --by distance")
        fitter, fit_task = load(args.run, args.fit_checkpoint)
        fit_task.load_state_dict(task.state_dict())
    batches = [boundaries(fitter, fit_task, 1_000_000 + i) for i in range(args.train)]
    test = [boundaries(module, task, 2_000_000 + i) for i in range(args.test)]
    meta = {"run": str(args.run), "checkpoint": args.checkpoint,
            "fit_checkpoint": args.fit_checkpoint or args.checkpoint,
            "level": [task.length, task.repeats], "delay": task.delay,
            "train_episodes": task.batch_size * args.train,
            "test_episodes": task.batch_size * args.test,
            "boundaries": len(batches[0][0])}
    print(json.dumps(meta))
    if args.by == "phase":
        train = defaultdict(list)  # k -> [(s, true)]
        for rows, _ in batches:
            for k, _, s, t, _ in rows:
                train[k].append((s, t))
        scores, columns = by_phase(train, test, args), ("input", "answer")
        print("| synthesizer | cos, input phase | cos, answer phase |")
    else:
        scores = by_distance(fitter, batches, test, args)
        columns = tuple(next(iter(scores.values())).keys())
        columns = tuple(sorted(columns, key=lambda c: int(c.split("-")[0])))
        print("| synthesizer | " + " | ".join(f"cos, {c} back" for c in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, by in scores.items():
        vals = [f"{sum(v) / len(v):.3f}" if (v := by.get(c)) else "–"  # no boundary
                for c in columns]
        print(f"| {name} | " + " | ".join(vals) + " |")


if __name__ == "__main__":
    main()
