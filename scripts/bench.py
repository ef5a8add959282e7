"""Throughput and peak-memory benchmark of truncated BPTT / DNI training (docs/design.md §5).

Every figure is measured in ONE process, interleaved: for each repetition, every (T, variant)
pair is run once (round-robin, the variant order rotated per repetition), and the reported
tokens/s is the median over the repetitions. Ratios are formed from those medians, so slow
drift of a shared machine hits every variant alike.

Variants (all train the same network: embedding -> nn.LSTM -> readout, cross-entropy on a
random token stream of ``vocab`` symbols, Adam lr 1e-3, core gradient clip 1.0):

  floor            forward + backward only (zero_grad, no clip, no optimizer step)
  bare             bare PyTorch TBPTT loop: + clip + Adam step, state detached per window
  engine_tbptt     dnirnn engine without Lightning: ``train_span`` over the windows
  engine_dni         (same, boundary="dni")
  engine_dni_aux     (same, boundary="dni_aux")
  tbptt            dnirnn ``DNIModule`` run by a ``lightning.Trainer`` (the real training path)
  dni                (same, boundary="dni")
  dni_aux            (same, boundary="dni_aux")
  dni_linear         (same as dni, linear synthesizer fitted by Adam)
  dni_rls            (same as dni, linear synthesizer fitted by exact least squares:
                     synthesizer.fit="rls", synthesizer.positions=1)
  dni_rls_h4         (same as dni_rls, with the 4-window λ-return target, λ = 1, and the guard
                     2: the copy recipes' bounded-memory synthesizer on a stream; the last 4
                     windows' graphs are kept and 3 state-only VJPs run per window)
  dni_rls_h4_block   (same as dni_rls_h4, its targets made by one chain per block of 4 windows:
                     targets.chain="block", horizons 4..7, 7 graphs kept, 1.5 VJPs per window)
  dni_rls_lambda     (same as dni_rls, with λ-return targets, λ = 1, and the guard 2: the copy
                     recipes' synthesizer on a stream; one more forward + backward per step)
  tbptt_deep4        (same as tbptt, with model.depth=4: TBPTT(T, 4T), the backward of each
                     window's loss through the last 4 windows' kept graphs)
  hybrid4            (same as dni_rls_h4, with model.depth=4: the hybrid)
  naive_lightning  Lightning's documented TBPTT pattern: automatic optimisation, one window
                   per ``training_step`` (one DataLoader batch), hidden state kept on the
                   module and detached

Each variant processes the same number of tokens per repetition (``steps`` time steps of a
``batch``-column stream) after a warm-up of ``warmup`` time steps; for the Lightning variants
the clock starts at the first measured ``training_step`` and stops at ``on_train_end`` (the
Trainer's construction and set-up are not timed).

Peak memory is measured in a separate, untimed pass (one run per variant): on CUDA
``torch.cuda.max_memory_allocated`` above the allocation before the run; on CPU the peak
resident set size above the RSS before the run, sampled every millisecond from
``/proc/self/statm`` by a thread (after ``malloc_trim``) -- approximate.

Usage::

    OMP_NUM_THREADS=1 python scripts/bench.py --device cpu --preset small [--quick] [--json]
        [--clock cpu] [--variants ...] [--profile VARIANT]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import math
import os
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import lightning as L
import torch
from bench_variants import CLOCKS, VARIANTS, runner, sync, use_clock
from flops import (
    least_squares_macs,
    linear_synthesizer_macs,
    lstm_macs,
    mlp_synthesizer_macs,
    readout_macs,
)

PRESETS = {
    "small": {"vocab": 50, "hidden": 128, "batch": 32},
    "paper": {"vocab": 50, "hidden": 1024, "batch": 256},
}
RATIOS = {  # name: (numerator, denominator)
    "dni_over_tbptt": ("dni", "tbptt"),
    "dni_aux_over_tbptt": ("dni_aux", "tbptt"),
    "dni_linear_over_tbptt": ("dni_linear", "tbptt"),
    "dni_rls_over_tbptt": ("dni_rls", "tbptt"),
    "dni_rls_h4_over_tbptt": ("dni_rls_h4", "tbptt"),
    "dni_rls_h4_block_over_tbptt": ("dni_rls_h4_block", "tbptt"),
    "dni_rls_lambda_over_tbptt": ("dni_rls_lambda", "tbptt"),
    "tbptt_deep4_over_tbptt": ("tbptt_deep4", "tbptt"),
    "hybrid4_over_tbptt": ("hybrid4", "tbptt"),
    "tbptt_over_bare": ("tbptt", "bare"),
    "bare_over_floor": ("bare", "floor"),
    "engine_dni_over_engine_tbptt": ("engine_dni", "engine_tbptt"),
    "engine_tbptt_over_bare": ("engine_tbptt", "bare"),
    "tbptt_over_engine_tbptt": ("tbptt", "engine_tbptt"),
    "dni_over_engine_dni": ("dni", "engine_dni"),
    "naive_lightning_over_bare": ("naive_lightning", "bare"),
}


@dataclass
class BenchConfig:
    """What is measured. ``steps`` and ``warmup`` are time steps per column; both must be
    multiples of ``span``, which every T must divide."""

    device: str = "cpu"
    preset: str = "small"
    vocab: int = 50
    hidden: int = 128
    batch: int = 32
    windows: tuple[int, ...] = (2, 8, 32)
    span: int = 64  # time steps per DNIModule training_step (windows_per_step = span // T)
    steps: int = 512
    warmup: int = 64
    reps: int = 5
    variants: tuple[str, ...] = VARIANTS
    memory: bool = True
    seed: int = 0
    threads: int = field(default_factory=torch.get_num_threads)
    clock: str = "wall"  # "wall" or "cpu" (process CPU time; CPU device only)

    def __post_init__(self) -> None:
        if self.clock not in CLOCKS or (self.clock == "cpu" and self.device != "cpu"):
            raise ValueError(f"clock must be 'wall' or (on the CPU) 'cpu', got {self.clock!r}")
        for t in self.windows:
            if self.span % t:
                raise ValueError(f"window T={t} must divide span={self.span}")
        if self.steps % self.span or self.warmup % self.span or self.steps < self.span:
            raise ValueError("steps and warmup must be multiples of span (steps >= span)")
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")

    @property
    def synthesizer_hidden(self) -> int:
        """The mlp synthesizer's hidden width: the state size 2H, as in every recipe."""
        return 2 * self.hidden

    @property
    def tokens(self) -> int:
        """Tokens processed (and timed) per variant per repetition."""
        return self.steps * self.batch


# ---- memory ------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated above the allocation before the run"
    return ("CPU peak RSS above the RSS before the run (after malloc_trim), sampled at ~1 kHz "
            "from /proc/self/statm; approximate (allocator reuse can hide allocations)")


def peak_memory(device: torch.device, fn: Callable[[], object]) -> int:
    """Peak memory (bytes) used by ``fn()`` above what was in use before it."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return max(0, torch.cuda.max_memory_allocated(device) - base)
    _malloc_trim()
    base = peak = _rss_bytes()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(0, max(peak, _rss_bytes()) - base)


# ---- the benchmark -------------------------------------------------------------------------


def flop_bound(cfg: BenchConfig, T: int) -> dict[str, float]:
    """The best ``dni*_over_tbptt`` a FLOP-bound device allows: core / (core + synthesizer),
    per sequence per window (``scripts/flops.py``'s counts).

    The core is ``3 T (4H(E+H) + HV)`` (forward and backward of an LSTM with embedding width
    E = H and a readout to V symbols; backward = 2x forward). A synthesizer on the flat state
    S = 2H: the mlp of width h ``7 S h``, the linear one fitted by Adam ``3 S^2``, the
    least-squares one (``rls``) its predictions and statistics every window and one solve a
    training step (``span / T`` windows of B sequences). Adam on the synthesizer's
    parameters is not counted.
    """
    H, V, S = cfg.hidden, cfg.vocab, 2 * cfg.hidden
    core = 3 * (lstm_macs(T, H, H) + readout_macs(T, H, V))
    rls = least_squares_macs(S, boundaries=1, solves=1 / (cfg.batch * (cfg.span // T)))
    return {"dni": core / (core + mlp_synthesizer_macs(S, cfg.synthesizer_hidden)),
            "dni_linear": core / (core + linear_synthesizer_macs(S)),
            "dni_rls": core / (core + rls)}


@contextlib.contextmanager
def _quiet():
    """Silences Lightning's banner and its advice about DataLoader workers."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric",
                                                "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)


def measure(cfg: BenchConfig, log: Callable[[str], None] = lambda s: None) -> dict:
    """Runs the benchmark; returns the JSON-able result (see ``--json``)."""
    use_clock(cfg.clock)
    device = torch.device(cfg.device)
    times: dict[int, dict[str, list[float]]] = {t: {v: [] for v in cfg.variants}
                                                for t in cfg.windows}
    pairs = [(t, v) for t in cfg.windows for v in cfg.variants]
    with _quiet():
        for rep in range(cfg.reps):
            shift = rep % len(pairs)
            for T, name in pairs[shift:] + pairs[:shift]:  # round-robin, rotated per rep
                times[T][name].append(runner(name)(cfg, T, device))
            log(f"rep {rep + 1}/{cfg.reps} done")
        memory: dict[int, dict[str, int]] = {t: {} for t in cfg.windows}
        if cfg.memory:
            for T, name in pairs:
                memory[T][name] = peak_memory(device, lambda: runner(name)(cfg, T, device))  # noqa: B023
    out: dict = {
        "config": {**asdict(cfg), "windows": list(cfg.windows), "variants": list(cfg.variants),
                   "tokens_per_variant_per_rep": cfg.tokens},
        "torch": torch.__version__, "lightning": L.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "memory_method": memory_method(device),
        "results": {},
    }
    for T in cfg.windows:
        tps = {v: cfg.tokens / statistics.median(times[T][v]) for v in cfg.variants}
        ratios = {k: tps[a] / tps[b] for k, (a, b) in RATIOS.items()
                  if a in tps and b in tps}
        spread = {v: (max(times[T][v]) - min(times[T][v])) / statistics.median(times[T][v])
                  for v in cfg.variants}
        out["results"][str(T)] = {
            "tokens_per_s": tps, "ratios": ratios, "peak_memory_bytes": memory[T],
            "rel_spread": spread, "flop_bound": flop_bound(cfg, T),
        }
    return out


def format_table(res: dict) -> str:
    cfg = res["config"]
    lines = [
        f"device={cfg['device']} ({res['device_name']}) preset={cfg['preset']} "
        f"vocab={cfg['vocab']} hidden={cfg['hidden']} batch={cfg['batch']} "
        f"threads={res['threads']} torch={res['torch']} lightning={res['lightning']}",
        f"tokens per variant per rep={cfg['tokens_per_variant_per_rep']} reps={cfg['reps']} "
        f"span={cfg['span']} clock={cfg.get('clock', 'wall')} "
        "(median over reps; interleaved round-robin)",
        f"memory: {res['memory_method']}",
        "",
    ]
    variants = cfg["variants"]
    head = f"{'variant':<16}" + "".join(f"{'T=' + t:>25}" for t in res["results"])
    lines += ["tokens/s  (peak MiB)  [max-min spread/median]", head]
    for v in variants:
        row = f"{v:<16}"
        for r in res["results"].values():
            mem = r["peak_memory_bytes"].get(v)
            mem_s = "" if mem is None else f" ({mem / 2**20:.1f})"
            row += f"{r['tokens_per_s'][v]:>10,.0f}{mem_s:>8} [{r['rel_spread'][v]:.2f}]"
        lines.append(row)
    lines += ["", "ratios (of median tokens/s)", f"{'ratio':<30}"
              + "".join(f"{'T=' + t:>10}" for t in res["results"])]
    for k in RATIOS:
        if all(k in r["ratios"] for r in res["results"].values()):
            lines.append(f"{k:<30}" + "".join(f"{r['ratios'][k]:>10.3f}"
                                              for r in res["results"].values()))
    lines += ["", "FLOP-bound ceiling of dni*_over_tbptt (see flop_bound)"]
    for k in ("dni", "dni_linear", "dni_rls"):
        lines.append(f"{k + '_over_tbptt (bound)':<30}" + "".join(
            f"{r['flop_bound'][k]:>10.3f}" for r in res["results"].values()))
    return "\n".join(lines)


def config_from_args(argv: list[str] | None = None) -> tuple[BenchConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--preset", choices=tuple(PRESETS), default="small")
    p.add_argument("--quick", action="store_true", help="few steps/reps (< 60 s on CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    p.add_argument("--windows", type=int, nargs="+", default=[2, 8, 32])
    p.add_argument("--steps", type=int, help="timed time steps per column per rep")
    p.add_argument("--warmup", type=int, help="untimed warm-up time steps per column")
    p.add_argument("--reps", type=int, help="repetitions (median reported)")
    p.add_argument("--span", type=int, default=64, help="time steps per DNIModule step")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                   help="wall time, or the process's CPU time (CPU only: robust to other "
                        "jobs sharing the cores)")
    p.add_argument("--profile", choices=VARIANTS, metavar="VARIANT",
                   help="instead of the benchmark: torch.profiler table of one variant per T")
    a = p.parse_args(argv)
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    quick = {"steps": 128, "warmup": 64, "reps": 3} if a.quick else {}
    full = {"steps": 1024, "warmup": 128, "reps": 5}
    if a.preset == "paper" and not a.quick:
        full = {"steps": 512, "warmup": 128, "reps": 3}
    pick = {k: getattr(a, k) if getattr(a, k) is not None else (quick or full)[k]
            for k in ("steps", "warmup", "reps")}
    cfg = BenchConfig(device=a.device, preset=a.preset, **PRESETS[a.preset],
                      windows=tuple(a.windows), span=a.span, variants=tuple(a.variants),
                      memory=not a.no_memory, threads=torch.get_num_threads(), clock=a.clock,
                      **pick)
    return cfg, a


def profile(cfg: BenchConfig, name: str, rows: int = 15) -> str:
    """torch.profiler's operator table (by self time) of one untimed run of ``name`` per T,
    after one warm-up run: where the time goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    device = torch.device(cfg.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    out = []
    with _quiet():
        for T in cfg.windows:
            runner(name)(cfg, T, device)
            with torch_profile(activities=activities) as prof:
                runner(name)(cfg, T, device)
            out += [f"== {name}, T={T} ==",
                    prof.key_averages().table(sort_by=key, row_limit=rows)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    cfg, args = config_from_args(argv)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.profile:
        print(profile(cfg, args.profile))
        return {}
    t0 = time.perf_counter()
    res = measure(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    res["wall_s"] = time.perf_counter() - t0
    print(format_table(res))
    print(f"wall: {res['wall_s']:.1f} s")
    if args.json:
        print(json.dumps(res, allow_nan=False, default=float))
    bad = [k for r in res["results"].values() for k, v in r["ratios"].items()
           if not math.isfinite(v)]
    if bad:
        raise SystemExit(f"non-finite ratios: {bad}")
    return res


if __name__ == "__main__":
    main()
