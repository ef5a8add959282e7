"""Decoupled layers (issue 19), the maths and the schedule in one process, float64 on tiny
models: the groups are the stacked core; with a zero interface synthesizer and no delay the
groups' updates are the locked model's as stated in dnirnn/decoupled/layers.py; with the
true gradient as the interface (the oracle) they ARE the locked TBPTT updates; the messages
are used exactly when the schedule says and are as old as it says; and the pipelined run
equals a plain window-by-window loop (the delay changes when things run, not the floats)."""

from __future__ import annotations

import pytest
import torch

from dnirnn.decoupled import (
    Group,
    GroupRunner,
    LoopbackTransport,
    Schedule,
    WindowData,
    group_bounds,
    group_optimizers,
    run_step,
    split_core,
)
from dnirnn.dni import DNIRNN, window_update
from dnirnn.model import CoreConfig, LSTMCore, Window, lm_step_loss
from dnirnn.optim import Optimizers
from dnirnn.options import SynthesizerOptions
from dnirnn.synthesizers import build_synthesizer

V, H, B, T = 6, 5, 3, 4


def core(layers: int = 3, seed: int = 0) -> LSTMCore:
    torch.manual_seed(seed)
    return LSTMCore(CoreConfig(V, V, H, layers, embed=True, embed_size=4))


def windows(n: int, seed: int = 1, length: int = T) -> list[Window]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (n * length + 1, B), generator=g)
    return [Window(tokens[i:i + length], tokens[i + 1:i + length + 1])
            for i in range(0, n * length, length)]


def groups(c: LSTMCore, n: int, temporal: str | None = None, interface: str | None = "linear",
           fit: str = "adam", sg_scale: float = 1.0, context: str = "none") -> list[Group]:
    out = []
    for layers in split_core(c, n):
        synth = None if temporal is None else build_synthesizer(
            layers.state_size, SynthesizerOptions(kind=temporal, hidden=7, fit=fit))
        face = None if interface is None or layers.readout is not None else build_synthesizer(
            H, SynthesizerOptions(kind=interface, hidden=7, fit=fit),
            context_size=V if context == "target" else 0)
        out.append(Group(layers, lm_step_loss, B * T, synthesizer=synth, interface=face,
                         sg_scale=sg_scale, context=context))
    return out


def sgd(gs: list[Group], lr: float = 0.1):
    opts = [group_optimizers(g, 1e-2, 1e-2) for g in gs]
    for g, o in zip(gs, opts):  # (plain SGD on θ_g: equal to the locked model's step exactly)
        o.core = Optimizers(torch.optim.SGD(g.layers.parameters(), lr=lr), o.core.synthesizer)
    return opts


def core_params(c: LSTMCore, gs: list[Group]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(locked parameter, the group's copy of it) for every parameter of the stack."""
    pairs, bounds = [], group_bounds(c.cfg.num_layers, len(gs))
    for g, first in zip(gs, bounds):
        lay = g.layers
        if lay.encoder is not None:
            pairs += list(zip(c.encoder.parameters(), lay.encoder.parameters()))
        if lay.readout is not None:
            pairs += list(zip(c.readout.parameters(), lay.readout.parameters()))
        for name, p in lay.lstm.named_parameters():
            stem, i = name.rsplit("_l", 1)
            pairs.append((getattr(c.lstm, f"{stem}_l{first + int(i)}"), p))
    return pairs


@pytest.mark.parametrize("n", [1, 2, 3])
def test_groups_one_after_another_are_the_stacked_core(n, float64):
    c, (w,) = core(), windows(1)
    state = tuple(torch.randn(3, B, H) for _ in range(2))
    logits, _, (h, cc) = c(w.x, state)
    bounds, x, hs, cs = group_bounds(3, n), w.x, [], []
    for lay, a, b in zip(split_core(c, n), bounds, bounds[1:]):
        x, (hg, cg) = lay(x, (state[0][a:b], state[1][a:b]))
        hs.append(hg)
        cs.append(cg)
    torch.testing.assert_close(lay.logits(x), logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat(hs), h, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat(cs), cc, rtol=0, atol=1e-12)


def test_bounds_and_bad_cuts():
    assert group_bounds(5, 2) == [0, 3, 5] and group_bounds(2, 2) == [0, 1, 2]
    with pytest.raises(ValueError, match="model.groups"):
        group_bounds(2, 3)
    with pytest.raises(ValueError, match="model.core.dropout"):
        split_core(LSTMCore(CoreConfig(V, V, H, 2, embed=True, dropout=0.1)), 2)


@pytest.mark.parametrize("temporal", [None, "mlp"])
def test_zero_interface_no_delay_is_the_top_of_the_locked_model(temporal, float64):
    """Fresh (zero) synthesizers, one window: the last group's gradients are the locked
    model's on its parameters; the groups below get exactly none; the gradient the last group
    sends down is the locked model's gradient of the window loss at its input, and the
    groups below it, given zero from above, send zero."""
    c, (w,) = core(), windows(1)
    state = tuple(torch.randn(3, B, H) for _ in range(2))
    locked = DNIRNN(c, lm_step_loss, B * T, "tbptt")
    for p in c.parameters():
        p.grad = None
    locked.window_gradients(w, state)
    gs = groups(c, 3, temporal=temporal)
    reference = [p.grad.clone() for p, _ in core_params(c, gs)]
    bounds, fws, x = group_bounds(3, 3), [], w.x
    for g, a, b in zip(gs, bounds, bounds[1:]):
        fws.append(g.forward_window(x, (state[0][a:b], state[1][a:b]), w))
        x = fws[-1].out
    # the locked gradient at each cut: the groups chained without a cut, by autograd
    chained, outs = w.x, []
    for g, a, b in zip(gs, bounds, bounds[1:]):
        chained, _ = g.layers(chained, (state[0][a:b], state[1][a:b]))
        outs.append(chained)
    loss = lm_step_loss(gs[-1].layers.logits(chained), w.y).sum() / (B * T)
    truth = torch.autograd.grad(loss, outs[:-1])
    results = [g.update(fw, o) for g, fw, o in zip(gs, fws, sgd(gs, lr=0.0))]
    top = [id(p) for p in gs[-1].layers.parameters()]
    for (_, p), ref in zip(core_params(c, gs), reference):
        if id(p) in top:
            torch.testing.assert_close(p.grad, ref, rtol=1e-10, atol=1e-13)
        else:
            assert p.grad is None or not p.grad.any()
    torch.testing.assert_close(results[2].input_grad, truth[1], rtol=1e-10, atol=1e-13)
    assert truth[0].abs().min() > 0 and not results[1].input_grad.any()


def test_oracle_interface_no_delay_is_the_locked_tbptt_update(float64):
    """With the true gradient of the same window injected at each cut (group g + 1's backward
    first) and TBPTT at the boundaries, three windows of the groups' SGD updates are the
    locked model's, gradients and parameters, and the carried states agree."""
    c = core()
    gs = groups(c, 3, interface=None)
    opts = sgd(gs)
    locked = DNIRNN(c, lm_step_loss, B * T, "tbptt")
    lopts = Optimizers(torch.optim.SGD(c.parameters(), lr=0.1))
    state = tuple(torch.randn(3, B, H) for _ in range(2))
    states = [(state[0][a:b], state[1][a:b]) for a, b in zip([0, 1, 2], [1, 2, 3])]
    for w in windows(3):
        res = window_update(locked, lopts, w, state)
        state, x, fws = res.state, w.x, []
        for g, s in zip(gs, states):
            fws.append(g.forward_window(x, s, w))
            x = fws[-1].out
        oracle, new = None, [None] * 3
        for i in (2, 1, 0):  # top down: G^g_k of the same window
            new[i] = gs[i].update(fws[i], opts[i], interface_grad=oracle)
            oracle = new[i].input_grad
        states = [r.state for r in new]
        for p, q in core_params(c, gs):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(torch.cat([s[0] for s in states]), state[0], rtol=1e-9,
                                   atol=1e-12)


# ---- the schedule: when messages are used, and how old they are --------------------------

def simulate(gs, schedule: Schedule, data: list[list[Window]], log=None, resets=(),
             warmup: int = 0):
    opts = [group_optimizers(g, 1e-2, 1e-2) for g in gs]
    transport = LoopbackTransport()
    runners = [GroupRunner(i, g, o, schedule, transport, log, warmup) for i, (g, o)
               in enumerate(zip(gs, opts))]
    k, out = 0, []
    for step in data:
        ws = []
        for w in step:
            ws.append(WindowData(k, w, reset=k in resets or k == 0))
            k += 1
        out.append(run_step(runners, ws))
    return runners, out


@pytest.mark.parametrize("lag, delay", [(1, 2), (1, 3), (1, 1), (0, 0)])
def test_messages_are_used_when_the_schedule_says_and_are_as_old_as_it_says(lag, delay):
    n, steps, per = 3, 4, 3
    log: list = []
    schedule = Schedule(n, lag, delay)
    runners, _ = simulate(groups(core(), n, temporal="linear"), schedule,
                          [windows(per, seed=s) for s in range(steps)], log)
    sent = {(kind, src, k): (tick, upd) for ev, kind, src, _, k, tick, upd in log
            if ev == "sent"}
    used = {(kind, g, k): (tick, upd) for ev, kind, g, _, k, tick, upd in log if ev == "used"}
    total = steps * per
    for (kind, src, k), (tick, upd) in sent.items():
        assert tick == k + src * lag  # sent in the tick the sender runs window k
        # an activation leaves before its sender's update k, a gradient after it
        assert upd == (k if kind == "F" else k + 1)
    for (kind, g, k), (tick, upd) in used.items():
        if kind == "F":  # used by g at its update k, lag ticks after it left g - 1
            assert (tick, upd) == (k + g * lag, k)
            assert tick - sent[("F", g - 1, k)][0] == lag
        else:  # I_g fitted to G^g_k after g's update k + delay: delay + 1 updates later
            assert (tick, upd) == (k + delay + g * lag, k + delay + 1)
            assert tick - sent[("B", g + 1, k)][0] == delay - lag
    assert schedule.ages() == {"F": {"ticks": lag, "sender_offset": 0, "receiver_offset": 0},
                               "B": {"ticks": delay - lag, "receiver_updates": delay + 1}}
    # every message is used once, or waits (received) in its receiver's inbox
    waiting = {(kind, r.g, k) for r in runners for kind, k in r.inbox}
    expect = {("F", g + 1, k) for g in range(n - 1) for k in range(total - g * lag)} | {
        ("B", g, k) for g in range(n - 1) for k in range(total - (g + 1) * lag)}
    assert set(used) | waiting == expect and not set(used) & waiting
    flight = schedule.in_flight()
    for r in runners[:-1]:  # per cut, what crosses the step boundary
        assert sum(kind == "B" for kind, _ in r.inbox) == flight["B"]
        assert len(r.outputs) == flight["outputs"]
    for r in runners[1:]:
        assert sum(kind == "F" for kind, _ in r.inbox) == flight["F"]
        assert len(r.backlog) == r.g * lag


@pytest.mark.parametrize("lag, delay, context", [(1, 2, "target"), (0, 0, "none")])
@pytest.mark.parametrize("fit", ["adam", "rls"])
def test_the_pipeline_computes_what_a_plain_window_loop_computes(lag, delay, context, fit,
                                                                 float64):
    """The schedule decides when each group runs a window, not what it computes: the pipelined
    run over 3 steps (windows and messages in flight across steps, an episode reset inside,
    the interface warming up for 2 windows) equals a window-by-window loop of the same
    updates with each I_g fitted ``delay`` windows late, bit for bit. (Least squares is
    solved at each training step's end, which a group ``g·lag`` windows behind reaches after
    its own window ``K - 1 - g·lag``.)"""
    data = [windows(3, seed=s) for s in range(3)]
    resets, warmup = {0, 4}, 2
    temporal = "mlp" if fit == "adam" else "linear"
    sim = groups(core(), 2, temporal=temporal, fit=fit, context=context)
    runners, steps = simulate(sim, Schedule(2, lag, delay), data, resets=resets,
                              warmup=warmup)
    injected = [r.interfaced for results, _, _ in steps for r in results if not r.count]
    assert injected == [0] * warmup + [1] * (9 - warmup)  # (group 0's windows, in order)
    ref = groups(core(), 2, temporal=temporal, fit=fit, context=context)
    opts = [group_optimizers(g, 1e-2, 1e-2) for g in ref]
    flat = [w for step in data for w in step]
    states, outs, grads = [None, None], {}, {}
    ran = len(flat) - lag  # the upper group is `lag` windows behind when the run stops
    for k, w in enumerate(flat):
        x = w.x
        for i, g in enumerate(ref):
            if i == 1 and k >= ran:
                break
            s = g.layers.zero_state(B) if k in resets or states[i] is None else states[i]
            res = g.update(g.forward_window(x, s, w), opts[i], episode_start=k in resets,
                           inject=k >= warmup)
            states[i], x = res.state, res.out
            if i == 0:
                outs[k] = (res.out, res.context)
            else:
                grads[k] = res.input_grad
        if k - delay in grads and (k - delay) in outs:
            out, ctx = outs.pop(k - delay)
            assert (ctx is None) == (context == "none")
            ref[0].fit_interface(opts[0], out, grads[k - delay], ctx)
        for i, g in enumerate(ref):  # the least-squares solves: at the end of each training
            if (k + i * lag + 1) % 3 == 0:  # step, which group i reaches i * lag windows later
                g.end_step()
    for a, b in zip(sim, ref):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name
    assert runners[1].updates == ran


def test_the_decoupled_model_starts_from_the_locked_models_weights():
    """Same seed, same core config: DecoupledModule's groups hold DNIModule's (locked) initial
    weights, so (a), (b) and (c) of issue 19 start from one model."""
    import lightning as L

    from dnirnn.decoupled.lit import DecoupledModule
    from dnirnn.lit import DNIModule

    kw = {"task": "lm", "input_size": V, "output_size": V, "hidden_size": H, "num_layers": 3,
          "core": {"embed_size": 4, "forget_bias": 1.0}}
    L.seed_everything(3)
    locked = DNIModule(boundary="tbptt", **kw).engine.core
    L.seed_everything(3)
    decoupled = DecoupledModule(groups=2, **kw)
    pairs = core_params(locked, list(decoupled.groups))
    assert len(pairs) == len(list(locked.parameters()))
    for p, q in pairs:
        assert torch.equal(p, q)


@pytest.mark.parametrize("fit, kind", [("adam", "mlp"), ("rls", "linear")])
def test_one_group_is_the_dni_engine(fit, kind, float64):
    """A single group (the whole stack, no cut) is dnirnn.dni's window update: three windows
    with its temporal synthesizer (β = 0.5), the same parameters, synthesizer and state."""
    import copy

    c = core(layers=2)
    synth = build_synthesizer(c.state_size, SynthesizerOptions(kind=kind, hidden=7, fit=fit))
    torch.nn.init.normal_(synth.maps[0][-1].weight if fit == "adam" else synth.W, std=0.1)
    net = DNIRNN(copy.deepcopy(c), lm_step_loss, B * T, "dni", copy.deepcopy(synth),
                 targets={"scale": 0.5})
    (layers,) = split_core(c, 1)
    group = Group(layers, lm_step_loss, B * T, synthesizer=synth, sg_scale=0.5)
    opts = group_optimizers(group, 1e-2, 1e-2)
    lopts = Optimizers(torch.optim.Adam(net.core.parameters(), lr=1e-2),
                       None if fit == "rls" else torch.optim.Adam(net.synthesizer.parameters(),
                                                                  lr=1e-2))
    opts.core = Optimizers(torch.optim.Adam(group.layers.parameters(), lr=1e-2),
                           opts.core.synthesizer)
    state = tuple(torch.randn(2, B, H) for _ in range(2))
    mine = state
    for i, w in enumerate(windows(3)):
        state = window_update(net, lopts, w, state, episode_start=i == 0).state
        mine = group.update(group.forward_window(w.x, mine, w), opts,
                            episode_start=i == 0).state
        net.end_step(lopts)
        group.end_step()
        torch.testing.assert_close(mine[0], state[0], rtol=1e-9, atol=1e-12)
    for p, q in core_params(net.core, [group]):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-12)
    for p, q in zip(net.synthesizer.state_dict().values(), synth.state_dict().values()):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-12)
