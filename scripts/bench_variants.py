"""The variants ``scripts/bench.py`` times (its docstring lists them), each a function
``(cfg, T, device) -> seconds`` that trains on a random token stream and returns the seconds
of its timed part, measured by ``Clock`` (wall or process CPU time: ``use_clock``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dnirnn.data.ptb_corpus import Corpus
from dnirnn.data.vocab import Vocab
from dnirnn.datamodules import _TaskDataModule
from dnirnn.dni import train_span
from dnirnn.engine.build import (
    EngineSpec,
    assemble,
    engine_optimizers,
    make_optimizers,
    make_parts,
)
from dnirnn.lit import DNIModule
from dnirnn.model import split_windows
from dnirnn.optim import adam
from dnirnn.options import OptimOptions, SynthesizerOptions
from dnirnn.tasks import LanguageModelTask

if TYPE_CHECKING:
    from bench import BenchConfig

VARIANTS = (
    "floor", "bare", "engine_tbptt", "engine_dni", "engine_dni_aux",
    "tbptt", "dni", "dni_aux", "dni_linear", "dni_rls", "dni_rls_h4", "dni_rls_h4_block",
    "dni_rls_lambda", "tbptt_deep4", "hybrid4", "naive_lightning",
)
LR, CLIP = 1e-3, 1.0


# ---- timing --------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCKS["wall"]


def use_clock(name: str) -> None:
    """Every ``Clock`` from now on reads ``CLOCKS[name]`` (``BenchConfig.clock``)."""
    global _clock
    _clock = CLOCKS[name]


class Clock:
    """Seconds between ``start()`` and ``stop()``, with device syncs: wall time, or the
    process's CPU time (``--clock cpu``: on a shared CPU, the time this process ran, not the
    time it waited for a core; one thread, so CPU time is the busy time)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.t0, self.elapsed = device, None, None

    def start(self) -> None:
        sync(self.device)
        self.t0 = _clock()

    def stop(self) -> None:
        sync(self.device)
        self.elapsed = _clock() - self.t0


# ---- data ----------------------------------------------------------------------------------


def make_stream(cfg: BenchConfig, steps: int, seed: int) -> torch.Tensor:
    """A random ``(steps + 1, batch)`` token stream (inputs are rows ``:-1``, targets ``1:``)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(cfg.vocab, (steps + 1, cfg.batch), generator=g)


def make_task(cfg: BenchConfig, steps: int, seed: int) -> LanguageModelTask:
    """A ``LanguageModelTask`` over a synthetic corpus of random tokens, long enough for
    ``steps`` time steps per column plus one spare span (so no epoch ends while measured)."""
    g = torch.Generator().manual_seed(seed)
    n = (steps + cfg.span + 2) * cfg.batch
    corpus = Corpus(
        train=torch.randint(cfg.vocab, (n,), generator=g),
        valid=torch.randint(cfg.vocab, (64,), generator=g),
        test=torch.randint(cfg.vocab, (64,), generator=g),
        vocab=Vocab([f"t{i}" for i in range(cfg.vocab)]),
        level="char",
    )
    return LanguageModelTask(corpus, cfg.batch, eval_batch_size=2)


class _TaskData(_TaskDataModule):
    """A dnirnn data module over an in-memory task."""

    def __init__(self, task: LanguageModelTask) -> None:
        super().__init__()
        self.task = task

    def _epoch_length(self) -> int:
        return self.task.num_batches("train", self._module().chunk)


# ---- variants: plain PyTorch ---------------------------------------------------------------


class BareLM(nn.Module):
    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.lstm = nn.LSTM(hidden, hidden)
        self.readout = nn.Linear(hidden, vocab)

    def forward(self, x, state):
        out, state = self.lstm(self.embed(x), state)
        return self.readout(out), state


def run_bare(cfg: BenchConfig, T: int, device: torch.device, *, step: bool = True) -> float:
    """Bare PyTorch TBPTT (``step``) or its forward+backward floor; returns timed seconds."""
    stream = make_stream(cfg, cfg.warmup + cfg.steps, cfg.seed).to(device)
    model = BareLM(cfg.vocab, cfg.hidden).to(device)
    opt = adam(model.parameters(), LR)
    params = list(model.parameters())
    h = torch.zeros(1, cfg.batch, cfg.hidden, device=device)
    state = (h, torch.zeros_like(h))
    clock = Clock(device)
    for t0 in range(0, cfg.warmup + cfg.steps, T):
        if t0 == cfg.warmup:
            clock.start()
        x, y = stream[t0 : t0 + T], stream[t0 + 1 : t0 + T + 1]
        state = (state[0].detach(), state[1].detach())
        logits, state = model(x, state)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step:
            torch.nn.utils.clip_grad_norm_(params, CLIP, foreach=True)
            opt.step()
    clock.stop()
    return clock.elapsed


def engine_spec(cfg: BenchConfig, boundary: str) -> EngineSpec:
    """The bench's model as ``DNIModule`` takes it: the paper's synthesizer (an Adam-fitted
    mlp), Adam on the core, both clipped."""
    return EngineSpec("lm", cfg.vocab, cfg.vocab, cfg.hidden, 1, boundary, lr=LR,
                      synthesizer=SynthesizerOptions(kind="mlp", fit="adam",
                                                     hidden=cfg.synthesizer_hidden, layers=1,
                                                     lr=1e-4, clip=CLIP),
                      optim=OptimOptions(clip=CLIP))


def run_engine(cfg: BenchConfig, T: int, device: torch.device, boundary: str) -> float:
    """The dnirnn engine without Lightning (``dnirnn.engine.build``): ``train_span`` over the
    stream's windows."""
    stream = make_stream(cfg, cfg.warmup + cfg.steps, cfg.seed).to(device)
    spec = engine_spec(cfg, boundary)
    net = assemble(spec, make_parts(spec), loss_norm=float(cfg.batch * T)).to(device)
    opts = engine_optimizers(spec, make_optimizers(net, spec))
    clock = Clock(device)
    state = net.core.zero_state(cfg.batch)
    for s0 in range(0, cfg.warmup + cfg.steps, cfg.span):  # one "training_step" per span
        if s0 == cfg.warmup:
            clock.start()
        windows = split_windows(stream[s0 : s0 + cfg.span], stream[s0 + 1 : s0 + cfg.span + 1], T)
        state = train_span(net, opts, windows, state, reset=s0 == 0)[1]
    clock.stop()
    return clock.elapsed


# ---- variants: Lightning -------------------------------------------------------------------


class _TimerCallback(L.Callback):
    """Starts the clock at the training_step of ``start_batch``, stops it at train end."""

    def __init__(self, device: torch.device, start_batch: int) -> None:
        self.clock, self.start_batch = Clock(device), start_batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.start_batch:
            self.clock.start()

    def on_train_end(self, trainer, pl_module) -> None:
        self.clock.stop()


def _trainer(device: torch.device, max_steps: int, timer: L.Callback, **kw) -> L.Trainer:
    return L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        max_steps=max_steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer], **kw,
    )


def run_dnimodule(cfg: BenchConfig, T: int, device: torch.device, boundary: str,
                  synthesizer: str = "mlp", fit: str = "adam", **options) -> float:
    """The real dnirnn training path: ``DNIModule`` fitted by a Lightning Trainer."""
    task = make_task(cfg, cfg.warmup + cfg.steps, cfg.seed)
    module = DNIModule(task="lm", input_size=cfg.vocab, output_size=cfg.vocab,
                       hidden_size=cfg.hidden, boundary=boundary, window=T,
                       windows_per_step=cfg.span // T, lr=LR, optim={"clip": CLIP},
                       synthesizer={"kind": synthesizer, "hidden": cfg.synthesizer_hidden,
                                    "fit": fit, "positions": 1, **options.pop("synth", {})},
                       **options)
    timer = _TimerCallback(device, cfg.warmup // cfg.span)
    trainer = _trainer(device, (cfg.warmup + cfg.steps) // cfg.span, timer)
    trainer.fit(module, datamodule=_TaskData(task))
    return timer.clock.elapsed


class _Windows(Dataset):
    """One TBPTT window ``(x, y)`` per item, as Lightning's TBPTT docs feed them."""

    def __init__(self, stream: torch.Tensor, T: int) -> None:
        self.stream, self.T = stream, T

    def __len__(self) -> int:
        return (self.stream.shape[0] - 1) // self.T

    def __getitem__(self, i: int):
        t0 = i * self.T
        return self.stream[t0 : t0 + self.T], self.stream[t0 + 1 : t0 + self.T + 1]


class NaiveTBPTT(L.LightningModule):
    """Lightning's documented TBPTT pattern: automatic optimisation, one window per step."""

    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.model = BareLM(vocab, hidden)
        self.hidden = None

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits, hidden = self.model(x, self.hidden)
        self.hidden = tuple(h.detach() for h in hidden)  # truncate
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return adam(self.parameters(), LR)


def run_naive_lightning(cfg: BenchConfig, T: int, device: torch.device) -> float:
    stream = make_stream(cfg, cfg.warmup + cfg.steps, cfg.seed)  # on the host, as in the docs
    loader = DataLoader(_Windows(stream, T), batch_size=None, shuffle=False, num_workers=0)
    timer = _TimerCallback(device, cfg.warmup // T)
    trainer = _trainer(device, (cfg.warmup + cfg.steps) // T, timer, gradient_clip_val=CLIP)
    trainer.fit(NaiveTBPTT(cfg.vocab, cfg.hidden), train_dataloaders=loader)
    return timer.clock.elapsed


def runner(name: str) -> Callable[[BenchConfig, int, torch.device], float]:
    if name == "floor":
        return lambda cfg, T, dev: run_bare(cfg, T, dev, step=False)
    if name == "bare":
        return run_bare
    if name.startswith("engine_"):
        boundary = name.removeprefix("engine_")
        return lambda cfg, T, dev: run_engine(cfg, T, dev, boundary)
    if name in ("tbptt", "dni", "dni_aux"):
        return lambda cfg, T, dev: run_dnimodule(cfg, T, dev, name)
    if name == "dni_linear":
        return lambda cfg, T, dev: run_dnimodule(cfg, T, dev, "dni", synthesizer="linear")
    if name == "dni_rls":
        return lambda cfg, T, dev: run_dnimodule(cfg, T, dev, "dni", synthesizer="linear",
                                                 fit="rls")
    if name == "dni_rls_h4":
        return lambda cfg, T, dev: run_dnimodule(cfg, T, dev, "dni", synthesizer="linear",
                                                 fit="rls", synth={"guard": 2.0},
                                                 targets={"lam": 1.0, "horizon": 4})
    if name == "dni_rls_h4_block":
        return lambda cfg, T, dev: run_dnimodule(cfg, T, dev, "dni", synthesizer="linear",
                                                 fit="rls", synth={"guard": 2.0},
                                                 targets={"lam": 1.0, "horizon": 4,
                                                          "chain": "block"})
    if name == "tbptt_deep4":
        return lambda cfg, T, dev: run_dnimodule(cfg, T, dev, "tbptt", depth=4)
    if name == "hybrid4":
        return lambda cfg, T, dev: run_dnimodule(cfg, T, dev, "dni", synthesizer="linear",
                                                 fit="rls", synth={"guard": 2.0},
                                                 targets={"lam": 1.0, "horizon": 4}, depth=4)
    if name == "dni_rls_lambda":
        return lambda cfg, T, dev: run_dnimodule(cfg, T, dev, "dni", synthesizer="linear",
                                                 fit="rls", synth={"guard": 2.0},
                                                 targets={"lam": 1.0})
    if name == "naive_lightning":
        return run_naive_lightning
    raise ValueError(name)
