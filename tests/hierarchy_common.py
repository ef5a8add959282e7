"""The hierarchy tests' shared pieces: a tiny float64 net, its data and state, optimizers that
record the gradients they are given, and ``reference_forward``, the whole two-level system as
one graph (tests/test_hierarchy.py, tests/test_hierarchy_schedule.py)."""



import torch
from torch import nn

from dnirnn.hierarchy import (
    HierarchyConfig,
    HierarchyOptimizers,
    HierarchyState,
    TwoTimescaleRNN,
)
from dnirnn.model import Window
from dnirnn.optim import Optimizers, adam
from dnirnn.options import SynthesizerOptions

from .conftest import mse_steps

B, IN, OUT = 3, 4, 2


def adam_optimizers(
    net: TwoTimescaleRNN,
    lr: float = 1e-3,
    synthesizer_lr: float | None = None,
    clip: float | None = None,
    synthesizer_clip: float | None = None,
) -> HierarchyOptimizers:
    """Adam for every part (``synthesizer_lr`` defaults to ``lr``); none for a synthesizer
    fitted by least squares."""
    slr = lr if synthesizer_lr is None else synthesizer_lr

    def opt(module: nn.Module | None, rate: float) -> torch.optim.Optimizer | None:
        return None if module is None or module.fit != "adam" else adam(module.parameters(), rate)

    return HierarchyOptimizers(
        fast=Optimizers(adam(net.fast_parameters(), lr),
                        opt(net.fast_synthesizer, slr), clip, synthesizer_clip),
        slow=Optimizers(adam(net.slow_parameters(), lr),
                        opt(net.slow_synthesizer, slr), clip, synthesizer_clip),
        interface=opt(net.interface_synthesizer, slr),
        interface_clip=synthesizer_clip,
    )





def synth_options(kind: str = "mlp", **kw) -> SynthesizerOptions:
    """A synthesizer's options as the tests build them (mlp width 6)."""
    return SynthesizerOptions(kind=kind, hidden=6, **kw)


def make_net(seed: int = 0, **kw) -> TwoTimescaleRNN:
    cfg = dict(input_size=IN, output_size=OUT, k=2, fast_hidden=5, fast_layers=2, slow_hidden=4,
               slow_layers=2, fast_window=4, slow_window=4, fast_synthesizer=synth_options(),
               slow_synthesizer=synth_options(), interface_synthesizer=synth_options())
    cfg.update(kw)
    torch.manual_seed(seed)
    return TwoTimescaleRNN(HierarchyConfig(**cfg), mse_steps, loss_norm=B)


def randomise(module: nn.Module | None, seed: int = 1) -> None:
    """Makes a (zero-initialised) synthesizer non-trivial."""
    assert module is not None
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


def data(n_steps: int, seed: int = 2) -> Window:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n_steps, B, IN, generator=g), torch.randn(n_steps, B, OUT, generator=g)
    return Window(x, y, (torch.rand(n_steps, B, generator=g) > 0.3).double())


def random_state(net: TwoTimescaleRNN, seed: int = 3) -> HierarchyState:
    g = torch.Generator().manual_seed(seed)
    z = net.zero_state(B)
    rnd = [tuple(torch.randn(t.shape, generator=g) for t in s) for s in (z.fast, z.slow)]
    return HierarchyState(*rnd)


class RecordGrads(torch.optim.Optimizer):
    """A 'step' records the gradients and leaves the parameters frozen."""

    def __init__(self, params):
        super().__init__(params, {})
        self.history: list[list[torch.Tensor]] = []

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        self.history.append(
            [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params])

    def total(self) -> list[torch.Tensor]:
        return [torch.stack(gs).sum(0) for gs in zip(*self.history)]


def recorders(net: TwoTimescaleRNN) -> HierarchyOptimizers:
    def rec(m):
        return None if m is None or m.fit != "adam" else RecordGrads(m.parameters())

    return HierarchyOptimizers(
        Optimizers(RecordGrads(net.fast_parameters()), rec(net.fast_synthesizer)),
        Optimizers(RecordGrads(net.slow_parameters()), rec(net.slow_synthesizer)),
        rec(net.interface_synthesizer),
    )


def reference_forward(net: TwoTimescaleRNN, x: torch.Tensor, state: HierarchyState):
    """The whole system as one graph, ONE fast step per nn.LSTM call.

    Returns the logits and the interface nodes: ``m`` (the top-down input of each segment),
    ``u`` (each tick's message, a node read only by the slow core), ``fast_in`` (the state
    each fast window after the first starts from, a clone read only by that window) and
    ``slow_end`` (the slow state at the end of each span).
    """
    cfg = net.cfg
    emb = net.encoder(x)
    s, z, outs = state.fast, state.slow, []
    nodes = {"m": [], "u": [], "fast_in": [], "slow_end": []}
    for t in range(x.shape[0]):  # t = 0..N-1 is fast step t+1
        if t > 0 and t % cfg.fast_window == 0:
            s = (s[0].clone(), s[1].clone())
            nodes["fast_in"].append(s)
        if t % cfg.k == 0:  # a segment starts: it reads the top h of the slow state
            nodes["m"].append(z[0][-1])
        out, s = net.fast(torch.cat([emb[t : t + 1], nodes["m"][-1][None]], -1), s)
        outs.append(out)
        if (t + 1) % cfg.k == 0:  # tick after fast steps k, 2k, ...
            u = s[0][-1]
            _, z = net.slow(u[None], z)
            nodes["u"].append(u)
            if (t + 1) % cfg.span == 0:
                nodes["slow_end"].append(z)
    return net.readout(torch.cat(outs)), nodes


def total_loss(net: TwoTimescaleRNN, logits: torch.Tensor, d: Window) -> torch.Tensor:
    return net.task_loss(logits, d)[0]
