"""The block chain of the kept windows (``targets.chain: block``, docs/design.md §1): one
chain every H windows gives a block of H boundaries their targets at once. In float64 with
frozen parameters each boundary's target equals the truncated λ-return with the horizon it
gets (H .. 2H - 1 windows, cut at an episode's end), computed independently by autograd, on
episodes (with and without the deeper backward) and on streams; the chain walks about
2 (H - 1) / H windows per window; at most 2H - 1 graphs are held, all freed; a stream resumes
from ``KeptWindows.state_dict`` bit for bit."""

from __future__ import annotations

import weakref

import pytest
import torch

from dnirnn.dni import DNIRNN, train_span
from dnirnn.engine.kept import KeptWindows
from dnirnn.engine.truth import future_gradients
from dnirnn.model import CoreConfig, LSTMCore, flatten_state
from dnirnn.options import OptionError, TargetOptions

from .conftest import mse_steps
from .test_horizon import boundary_states, frozen_opts, run_episode, truncated_lambda_return
from .test_synthesizers import IN, OUT, B, H, episode, random_synthesizer

FIT_READY = DNIRNN.fit_ready


def make(horizon: int, lam: float = 1.0, beta: float = 1.0, chain: str = "block",
         depth: int = 1, positions: int = 8, resumable: bool = False) -> DNIRNN:
    torch.manual_seed(0)
    core = LSTMCore(CoreConfig(input_size=IN, output_size=OUT, hidden_size=H, num_layers=1))
    return DNIRNN(core, mse_steps, loss_norm=B, boundary="dni",
                  synthesizer=random_synthesizer(2 * H, positions=positions),
                  targets=TargetOptions(scale=beta, lam=lam, horizon=horizon, chain=chain),
                  resumable=resumable, depth=depth)


def block_horizon(k: int, horizon: int, first: int = 1, end: int | None = None) -> int:
    """The windows of exact credit in boundary k's block-chain target: the boundaries from
    ``first`` on go in blocks of H, each served by the chain headed H - 1 windows past the
    block's last boundary (horizons 2H - 1 .. H); at an episode's ``end`` (its window count)
    the horizon is cut there."""
    block = (k - first) // horizon
    head = first + (block + 1) * horizon - 1 + horizon - 1  # the chain's newest window
    got = head - k + 1
    return got if end is None else min(got, end - k)


def test_block_horizons_span_h_to_2h_minus_1():
    assert [block_horizon(k, 3) for k in range(1, 8)] == [5, 4, 3, 5, 4, 3, 5]
    assert [block_horizon(k, 2, end=6) for k in range(1, 6)] == [3, 2, 3, 2, 1]


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("n_windows", [7, 12])
@pytest.mark.parametrize("horizon", [2, 3, 4])
@pytest.mark.parametrize("lam,beta", [(1.0, 1.0), (0.5, 1.0), (0.0, 1.0), (0.7, 0.5)])
def test_block_targets_equal_the_lambda_return_of_their_horizon(n_windows, horizon, lam, beta,
                                                                monkeypatch):
    windows = episode(2 * n_windows, 2)
    net = make(horizon, lam, beta, positions=n_windows + 1)
    got = run_episode(net, frozen_opts(net), windows, monkeypatch)
    assert sorted(got) == list(range(1, n_windows))
    states = boundary_states(net, windows)
    for k, target in got.items():
        h = block_horizon(k, horizon, end=n_windows)
        want = truncated_lambda_return(net, windows, states, k, h, lam, beta)
        torch.testing.assert_close(target, want, rtol=1e-10, atol=1e-12,
                                   msg=lambda m, k=k, h=h: f"boundary {k} (horizon {h}): {m}")
    assert net.targets.max_held == min(2 * horizon - 1, n_windows - 1)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("depth", [2, 3, 6])
def test_block_targets_under_the_deeper_backward(depth, monkeypatch):
    """With the hybrid's deeper backward (K windows, the episode's start kept for it), the
    targets are the same λ-returns: the deeper backward changes the core's gradient only."""
    windows = episode(2 * 9, 2)
    net = make(3, 0.8, 0.7, depth=depth, positions=10)
    got = run_episode(net, frozen_opts(net), windows, monkeypatch)
    assert sorted(got) == list(range(1, 9))
    states = boundary_states(net, windows)
    for k, target in got.items():
        want = truncated_lambda_return(net, windows, states, k, block_horizon(k, 3, end=9),
                                       0.8, 0.7)
        torch.testing.assert_close(target, want, rtol=1e-10, atol=1e-12)
    assert net.targets.max_held == max(5, depth)


def count_vjps(monkeypatch) -> list[int]:
    calls = [0]
    vjp = KeptWindows._vjp

    def counted(self, link, v):
        calls[0] += 1
        return vjp(self, link, v)

    monkeypatch.setattr(KeptWindows, "_vjp", counted)
    return calls


@pytest.mark.parametrize("horizon", [2, 4])
def test_the_block_chain_walks_each_window_about_twice_per_block(horizon, monkeypatch):
    """An episode of 1 + 5H windows: the window chain walks H - 1 windows per boundary;
    the block chain 2H - 2 per block of H (and the episode end's flush, as the window
    chain's: the last chain walks back to the oldest waiting boundary)."""
    n = 1 + 5 * horizon
    windows = episode(2 * n, 2)
    counts = {}
    for chain in ("window", "block"):
        net = make(horizon, chain=chain, positions=n + 1)
        calls = count_vjps(monkeypatch)
        got = run_episode(net, frozen_opts(net), windows, monkeypatch)
        monkeypatch.undo()
        assert len(got) == n - 1
        counts[chain] = calls[0]
    # window: windows H .. n-2 each H - 1 (boundaries 1 .. n-H-1), then the flush from
    # n-1 back to boundary n-H
    assert counts["window"] == (n - horizon) * (horizon - 1)
    # block: chains at windows 2H-1, 3H-1, .., 5H-1 (4 blocks), then the flush from n-1 = 5H
    # back to boundary 4H+1
    assert counts["block"] == 4 * (2 * horizon - 2) + (horizon - 1)


@pytest.mark.parametrize("windows_per_episode", [6, 25])
def test_block_graphs_held_stay_at_2h_minus_1_and_are_freed(windows_per_episode, monkeypatch):
    windows = episode(2 * windows_per_episode, 2)
    net = make(3, positions=30)
    opts = frozen_opts(net)
    for g in opts.core.param_groups:
        g["lr"] = 1e-3  # (a moving core: the kept graphs use their windows' parameters)
    alive: list[weakref.ref] = []
    push = KeptWindows.push

    def watch(self, link, episode_end):
        alive.append(weakref.ref(link.end[0]))
        out = push(self, link, episode_end)
        held = sum(r() is not None for r in alive)
        assert held <= 5, f"{held} window graphs alive with H = 3, block chain"
        return out

    monkeypatch.setattr(KeptWindows, "push", watch)
    got = run_episode(net, opts, windows, monkeypatch)
    assert len(got) == windows_per_episode - 1
    assert net.targets.max_held == 5 and len(net.targets) == 0
    assert all(r() is None for r in alive)


# ---- streams: chains across training steps, and resume ---------------------------------

def stream(n_windows: int, window: int = 2, seed: int = 3):
    windows = episode(n_windows * window, window, seed)
    for w in windows:
        w.position = 0  # (a stream uses map 0)
    return windows


def run_stream(net: DNIRNN, windows, per_step: int, monkeypatch, steps: range,
               state=None, got=None):
    """Training steps ``steps`` of ``per_step`` windows each over the stream (reset at its
    start only, never ended). Boundaries are handed out oldest first from boundary 1, so the
    n-th target is boundary n's (its regression input is checked to be s_n). Returns
    ({boundary: target}, the state after the last step)."""
    got = {} if got is None else got
    states = [flatten_state(s) for s in boundary_states(net, windows)]

    def record(self, opts, ready, prediction=None):
        for r in ready:
            k = len(got) + 1
            torch.testing.assert_close(r.state, states[k], rtol=1e-12, atol=1e-14)
            got[k] = r.target.clone()
        return FIT_READY(self, opts, ready, prediction)

    monkeypatch.setattr(DNIRNN, "fit_ready", record)
    opts = frozen_opts(net)
    state = net.core.zero_state(B) if state is None else state
    for step in steps:
        span = windows[step * per_step:(step + 1) * per_step]
        _, state = train_span(net, opts, span, state, reset=step == 0)
    monkeypatch.undo()
    return got, state


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("horizon, per_step", [(2, 3), (3, 2), (4, 5)])
def test_block_targets_on_a_stream(horizon, per_step, monkeypatch):
    """Chains cross the training steps; boundary k's target is the λ-return over its
    2H - 1 .. H windows, bootstrapped by the synthesizer (a stream does not end)."""
    lam, beta = 0.6, 0.9
    n = 6 * per_step
    windows = stream(n)
    net = make(horizon, lam, beta, positions=1)
    got, _ = run_stream(net, windows, per_step, monkeypatch, range(n // per_step))
    served = [k for k in range(1, n) if k + block_horizon(k, horizon) <= n]
    assert sorted(got) == served and len(served) >= 2 * horizon
    states = boundary_states(net, windows)
    for k, target in got.items():
        h = block_horizon(k, horizon)
        want = future_gradients(net, windows[k:k + h], states[k], lam=lam, beta=beta,
                                predict=lambda f, j: net.synthetic_gradient(f, None, 0),
                                episode_end=False).targets[0]
        torch.testing.assert_close(target, want, rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("float64")
def test_a_stream_resumes_exactly_with_a_block_in_flight(monkeypatch):
    """The kept windows' ``state_dict`` taken after 4 steps (H = 3, 2 windows per step:
    boundaries 4 .. 7 wait, one window short of their chain), loaded into a fresh engine
    whose graphs ``rebuild``: the targets after the resume equal the uninterrupted run's bit
    for bit."""
    windows, per_step = stream(16), 2
    full = make(3, 0.8, positions=1, resumable=True)
    want, _ = run_stream(full, windows, per_step, monkeypatch, range(8))

    first = make(3, 0.8, positions=1, resumable=True)
    got, state = run_stream(first, windows, per_step, monkeypatch, range(4))
    saved = first.targets.state_dict()
    assert sum(link["waiting"] for link in saved["links"]) == 4
    second = make(3, 0.8, positions=1, resumable=True)
    second.load_state_dict(first.state_dict())
    second.targets.load_state_dict(saved)
    got, _ = run_stream(second, windows, per_step, monkeypatch, range(4, 8), state, got)
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_the_chain_option_is_validated():
    with pytest.raises(OptionError, match="model.targets.chain: must be one of"):
        TargetOptions(chain="blocks")
    for kw in ({}, {"lam": 1.0}, {"lam": 1.0, "horizon": 1}):
        with pytest.raises(OptionError, match="model.targets.chain: the block chain"):
            TargetOptions(chain="block", **kw)
    assert TargetOptions(lam=1.0, horizon=2, chain="block").chain == "block"
