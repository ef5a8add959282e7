"""Where a training step's time goes, per method: an exclusive split of the engine's time.

Each variant (``scripts/episode_cost.py``'s names: a shipped recipe plus overrides) trains on
Copy episodes of a fixed length L, batch B, at window T, in a FRESH process, with the engine's
own loop (``dnirnn.dni.train_span``). The engine's functions are wrapped, in this script only,
by timers that charge each moment to the innermost part running (exclusive time, so the
parts add up to the step):

- ``forward+backward``: the window's forward, its own loss's backward and the injection;
- ``predict``: the synthesizer's predictions (g_{k+1}, M(s_k)), guard included;
- ``targets chain``: the kept windows' state-only VJPs that make the H-window targets;
- ``deeper backward``: TBPTT(T, K·T)'s backward through the kept windows (and the hybrid's
  transport of g);
- ``observe``: the synthesizer's fit on the ready pairs (least squares: the GEMMs into A, b);
- ``solve``: the end of the training step (least squares: the Cholesky solves);
- ``optimizer``: the core's clip and Adam step;
- ``other``: the rest of ``train_span`` (bookkeeping, norms, finiteness checks).

Beside the measured ratio to TBPTT at T, ``flop_ceiling``'s: the ratio a FLOP-bound machine
would allow the method (its multiply-accumulates against TBPTT's), and the measured ratio
over it ("of the ceiling"; above 1 where TBPTT's own step is bound by per-window overheads
rather than by its FLOPs, at small batches).

Times are CPU time of the process (``time.process_time``: one thread, so another process on
the machine disturbs it far less than wall time), medians over the steps after ``--warmup``.
Every variant's ratio to TBPTT at T is measured in the same run::

    OMP_NUM_THREADS=1 python scripts/profile_window.py --variants tbptt dni_h4 dni_h4_block \\
        tbptt_deep4 recipe dni_paper full_bptt --length 40 --batch 256 --window 2 --steps 10
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from flops import least_squares_macs, lstm_macs, mlp_synthesizer_macs, readout_macs

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("forward+backward", "predict", "targets chain", "deeper backward", "observe",
         "solve", "optimizer", "other")


class Clock:
    """Exclusive CPU time per part: a stack of running parts; each moment is charged to the
    innermost one."""

    def __init__(self) -> None:
        self.totals = dict.fromkeys(PARTS, 0.0)
        self.stack = ["other"]
        self.last = time.process_time()
        self.wrapped: list[tuple[object, str, object]] = []

    def _charge(self) -> None:
        now = time.process_time()
        self.totals[self.stack[-1]] += now - self.last
        self.last = now

    def wrap(self, owner: object, name: str, part: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self._charge()
            self.stack.append(part)
            try:
                return fn(*args, **kwargs)
            finally:
                self._charge()
                self.stack.pop()

        self.wrapped.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, timed)

    def unwrap(self) -> None:
        """Puts every wrapped function back."""
        for owner, name, fn in reversed(self.wrapped):
            setattr(owner, name, fn)
        self.wrapped.clear()

    def reset(self) -> None:
        self.totals = dict.fromkeys(PARTS, 0.0)
        self.last = time.process_time()


def measure(variant: str, length: int, batch: int, window: int, steps: int,
            warmup: int) -> dict:
    sys.path.insert(0, str(ROOT / "scripts"))
    import dnirnn.dni as dni
    from dnirnn.engine import kept
    from dnirnn.synthesizers.interface import SyntheticGradient

    clock = Clock()
    from dnirnn.model import LSTMCore

    clock.wrap(LSTMCore, "forward", "forward+backward")
    clock.wrap(dni.DNIRNN, "window_backward", "forward+backward")
    clock.wrap(SyntheticGradient, "__call__", "predict")
    clock.wrap(SyntheticGradient, "pair", "predict")
    clock.wrap(kept.KeptWindows, "_chain", "targets chain")
    clock.wrap(kept.KeptWindows, "deepen", "deeper backward")
    clock.wrap(kept.KeptWindows, "transport", "deeper backward")
    clock.wrap(SyntheticGradient, "observe", "observe")
    clock.wrap(dni.DNIRNN, "end_step", "solve")
    clock.wrap(dni, "step", "optimizer")

    try:
        return _train(clock, variant, length, batch, window, steps, warmup)
    finally:
        clock.unwrap()


def _train(clock: Clock, variant: str, length: int, batch: int, window: int, steps: int,
           warmup: int) -> dict:
    from episode_cost import build_variant

    import dnirnn.dni as dni

    module, engine, opts, task, args = build_variant(variant, length, batch, window)
    rows = []
    for s in range(steps):
        windows = module.windows(task.batch("train", s))
        clock.reset()
        t0 = time.process_time()
        dni.train_span(engine, opts, windows, engine.core.zero_state(batch), reset=True,
                       last=True)
        clock._charge()
        rows.append({"total": time.process_time() - t0, **clock.totals})
    keep = rows[warmup:]
    out = {"variant": variant, "length": length, "batch": batch, "window": window,
           "windows_per_episode": len(windows), "steps": len(keep),
           "ceiling": flop_ceiling(args, [w.x.shape[0] for w in windows], task.input_size,
                                   task.output_size, batch)}
    out["ms"] = {k: round(1e3 * statistics.median(r[k] for r in keep), 2)
                 for k in ("total", *PARTS)}
    return out


def flop_ceiling(args: dict, lengths: list[int], inputs: int, outputs: int,
                 batch: int) -> float | None:
    """The steps per second against TBPTT at T that a FLOP-bound machine would allow this
    method: TBPTT's multiply-accumulates per episode over the method's (None: not modelled,
    the oracle). Counted per sequence, matrix products only (``scripts/flops.py``):

    - the window's forward and backward: ``3 (t 4H(I + H) + t H V)`` for t steps (LSTM of H
      units on I inputs, readout to V; backward = 2x forward), as TBPTT's;
    - the deeper backward (``depth`` K): per kept window walked, a parameter VJP
      ``2 t 4H(I + H)``, up to K - 1 a window;
    - a state-only product (the targets' chain, the hybrid's transport of g): ``t 4H H``,
      what it needs (through oneDNN's fused kernel it costs a parameter VJP: see the profile);
    - the least-squares synthesizer (n = S + 1 inputs, S = 2H): two predictions ``2 n S`` a
      window, the statistics ``n^2 + n S`` a fitted boundary, a solve ``n^3 / 3 + 2 n^2 S``
      per position per ``rls_solve_every`` steps (over the batch); float64 counted twice;
    - the Adam-fitted mlp (the paper's): ``7 S h`` a window (two forwards, the weight
      gradients and the hidden layer's input gradient).
    """
    if args.get("boundary") == "oracle" or args.get("num_layers", 1) != 1:
        return None
    H, I, V = args["hidden_size"], inputs, outputs
    lstm = [lstm_macs(t, H, I) for t in lengths]
    base = sum(3 * (f + readout_macs(t, H, V)) for f, t in zip(lstm, lengths))
    cost, K = base, int(args.get("depth", 1))
    cost += sum(2 * lstm[j - i] for j in range(len(lengths)) for i in range(1, min(K, j + 1)))
    if args.get("boundary", "tbptt") == "tbptt":
        return base / cost
    state_only = [lstm_macs(t, H, 0) for t in lengths]
    synth, targets = args.get("synthesizer", {}), args.get("targets", {})
    S, w = 2 * H, len(lengths)
    horizon = 1 if targets.get("lam") is None else (targets.get("horizon") or w)
    if K > 1 and horizon not in (1, K):
        return None  # (a deeper backward beside a targets' chain: not modelled)
    for j in range(w - 1):  # the windows that inject g_{j+1}
        if K > 1:  # the hybrid: g carried back to the oldest of the K windows (once there)
            cost += sum(state_only[j - i] for i in range(K - 1 if j >= K - 1 else 1))
        elif horizon > 1:  # the one-window DNI's H-window targets: H - 1 products a window
            cost += sum(state_only[j - i] for i in range(min(horizon - 1, j + 1)))
    if synth.get("fit") == "rls":
        solves = min(w, synth.get("positions", 1)) / batch / synth.get("rls_solve_every", 1)
        cost += least_squares_macs(S, boundaries=w, solves=solves)
    else:
        cost += w * mlp_synthesizer_macs(S, synth.get("hidden") or S)
    return base / cost


def table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["variant"] == "tbptt"), None)
    head = ["variant", "CPU ms / step", "steps/s vs TBPTT at T", "FLOP ceiling",
            "of the ceiling", *PARTS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ms, ceiling = r["ms"], r.get("ceiling")
        ratio = None if base is None else base["ms"]["total"] / ms["total"]
        parts = [f"{ms[p]:.0f} ({100 * ms[p] / ms['total']:.0f}%)" if ms[p] >= 0.5 else "–"
                 for p in PARTS]
        cells = ["–" if ratio is None else f"{ratio:.2f}x",
                 "–" if ceiling is None else f"{ceiling:.2f}x",
                 "–" if None in (ratio, ceiling) else f"{ratio / ceiling:.2f}"]
        lines.append(f"| {r['variant']} | {ms['total']:.0f} | " + " | ".join(cells + parts)
                     + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+",
                   default=["tbptt", "dni_h4", "dni_h4_block", "tbptt_deep4", "recipe",
                            "dni_paper", "full_bptt"])
    p.add_argument("--length", type=int, default=40)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--window", type=int, default=2)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(measure(a.worker, a.length, a.batch, a.window, a.steps, a.warmup)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    rows = []
    for v in a.variants:
        cmd = [sys.executable, __file__, "--worker", v, "--length", str(a.length), "--batch",
               str(a.batch), "--window", str(a.window), "--steps", str(a.steps), "--warmup",
               str(a.warmup)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise SystemExit(f"{v} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {v:12s} {rows[-1]['ms']['total']:8.1f} CPU ms/step", flush=True)
    print(f"\nCopy L = {a.length}, batch {a.batch}, T = {a.window}: CPU ms per training step "
          f"(median of {a.steps - a.warmup}), exclusive parts (share of the step)\n")
    print(table(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
