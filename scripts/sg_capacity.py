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
from dnirnn.tasks import CopyTask


def load(run: Path) -> tuple[DNIModule, CopyTask]:
    """The run's model and a task at its curriculum level (its data settings, a new seed)."""
    version = sorted(run.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))[-1]
    ck = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu",
                    weights_only=False)
    hp = {k: v for k, v in ck["hyper_parameters"].items() if not k.startswith("_")}
    module = DNIModule(**hp)
    module.load_state_dict(ck["state_dict"])
    data = yaml.safe_load((version / "config.yaml").read_text())["data"]["init_args"]
    task = CopyTask(repeat=data["repeat"], num_bits=data["num_bits"],
                    norm_max=data["norm_max"], batch_size=data["batch_size"], seed=12345)
    task.length, task.repeats = ck["dnirnn"]["task"]["length"], ck["dnirnn"]["task"]["repeats"]
    module.task = task
    module.engine.loss_norm = task.loss_norm(module.hparams.window)
    module.eval()
    return module, task


def boundaries(module: DNIModule, task: CopyTask, position: int):
    """``[(k, phase, s_k, true_k, g_k)]`` at the internal boundaries of one batch."""
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
    return out


def ridge_fit(x: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor:
    x, y = x.double(), y.double()
    a = x.T @ x
    a = a + ridge * a.diagonal().mean() * torch.eye(len(a), dtype=a.dtype)
    return torch.linalg.solve(a, x.T @ y)


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0,
                                     eps=1e-30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a copy / repeat-copy run folder (its last.ckpt)")
    ap.add_argument("--train", type=int, default=96, help="training batches of 32 episodes")
    ap.add_argument("--test", type=int, default=32, help="held-out batches")
    ap.add_argument("--features", type=int, default=1024)
    ap.add_argument("--ridges", default="0.001,0.01,0.1")
    args = ap.parse_args()
    torch.manual_seed(0)
    module, task = load(args.run)
    train = defaultdict(list)  # k -> [(s, true)]
    for i in range(args.train):
        for k, _, s, t, _ in boundaries(module, task, 1_000_000 + i):
            train[k].append((s, t))
    test = [boundaries(module, task, 2_000_000 + i) for i in range(args.test)]
    S = next(iter(train.values()))[0][0].shape[1]
    R = torch.randn(S, args.features, dtype=torch.float64) / S ** 0.5
    c = 0.1 * torch.randn(args.features, dtype=torch.float64)

    def lin(s):
        return torch.cat([s.double(), torch.ones(len(s), 1, dtype=torch.float64)], -1)

    def feat(s):
        return torch.cat([lin(s), torch.relu(s.double() @ R + c)], -1)

    maps = {"linear": lin, f"features {args.features}": feat}
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for name, phi in maps.items():
        for ridge in (float(r) for r in args.ridges.split(",")):
            W = {k: ridge_fit(torch.cat([phi(s) for s, _ in v]), torch.cat([t for _, t in v]),
                              ridge) for k, v in train.items()}
            for rows in test:
                for k, phase, s, t, _ in rows:
                    if k in W:
                        scores[f"{name}, ridge {ridge:g}"][phase].append(cos(phi(s) @ W[k], t))
    for rows in test:
        for _, phase, _, t, g in rows:
            scores["the run's synthesizer"][phase].append(cos(g, t))
    meta = {"run": str(args.run), "level": [task.length, task.repeats],
            "train_episodes": 32 * args.train, "test_episodes": 32 * args.test,
            "boundaries": len(train)}
    print(json.dumps(meta))
    print("| synthesizer | cos, input phase | cos, answer phase |")
    print("|---|---|---|")
    for name, by_phase in scores.items():
        vals = [f"{sum(v) / len(v):.3f}" if (v := by_phase.get(p)) else "–"  # no boundary
                for p in ("input", "answer")]
        print(f"| {name} | {vals[0]} | {vals[1]} |")


if __name__ == "__main__":
    main()
