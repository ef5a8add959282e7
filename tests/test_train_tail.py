"""Training on a stream's tail (``data.train_tail``): word_language_model's last, shorter
``get_batch`` slice as one more update per epoch, its objective the mean over its own tokens;
with TBPTT it is that loop update for update (float64), DNI and the oracle take it too, and a
module whose steps must be whole refuses it before anything runs."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dnirnn.lit import DNIModule
from dnirnn.optim import Optimizers

from .test_ptb_reference import tiny_lm


@pytest.mark.parametrize("window,per_step", [(7, 1), (3, 3)])
def test_training_tail_is_word_language_models_last_shorter_update(float64, window, per_step):
    """With ``train_tail`` an epoch ends with one more, shorter step on the stream's tail, as
    WLM's last ``get_batch`` slice; every window's objective is the mean cross-entropy over
    its own tokens (a 1-step last window too), so the run is WLM's loop, update for update
    (the clip off, so that the tail's normalisation shows). Without it the tail is dropped."""
    task = tiny_lm(steps=26, train_tail=True)  # 25 targets per column: 25 = 3 * 7 + 4
    chunk = window * per_step
    assert tiny_lm(steps=26).num_batches("train", chunk) == 25 // chunk
    assert task.num_batches("train", chunk) == 25 // chunk + 1
    torch.manual_seed(0)
    module = DNIModule(task="lm", input_size=37, output_size=37, hidden_size=6, num_layers=2,
                       window=window, windows_per_step=per_step, boundary="tbptt",
                       lr=2.0, optim={"optimizer": "sgd", "clip": None})
    ref = copy.deepcopy(module.engine.core)
    module.task, module._trainer = task, SimpleNamespace(world_size=1)
    module._opts = Optimizers(module.configure_optimizers(), None, None, None)
    module.configure_task(world=1)
    ours = []
    for p in range(task.num_batches("train", chunk)):
        batch = task.batch("train", p, chunk)
        if batch.reset:
            module.carried = module.zero_state(3)
        results, module.carried = module.span_step(batch)()
        ours += [float(r.loss) for r in results]

    data, state, wlm = task.streams["train"], ref.zero_state(3), []
    for i in range(0, data.shape[0] - 1, window):  # WLM's train(): one update per slice
        seq = min(window, data.shape[0] - 1 - i)  # get_batch
        ref.zero_grad()
        logits, _, state = ref(data[i : i + seq], state)
        state = tuple(h.detach() for h in state)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1),
                                           data[i + 1 : i + 1 + seq].flatten())
        loss.backward()
        with torch.no_grad():
            for q in ref.parameters():
                q.add_(q.grad, alpha=-2.0)
        wlm.append(loss.item())
    assert len(ours) == len(wlm) == -(-25 // window)
    assert ours == pytest.approx(wlm, rel=1e-12)
    for (name, a), b in zip(module.engine.core.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize("boundary", ["dni", "oracle"])
def test_training_tail_with_synthetic_gradients(boundary):
    """DNI and the oracle train on the tail too: its 2-step last window gets the same
    boundary treatment as any stream's last window (no synthetic gradient at its end)."""
    task = tiny_lm(steps=24, train_tail=True)  # 23 targets per column = 7 * 3 + 2
    torch.manual_seed(0)
    module = DNIModule(task="lm", input_size=37, output_size=37, hidden_size=6, window=3,
                       windows_per_step=7, boundary=boundary,
                       targets={"oracle_windows": 6})
    module.task, module._trainer = task, SimpleNamespace(world_size=1)
    opts = module.configure_optimizers()
    opts = opts if isinstance(opts, list) else [opts]
    module._opts = Optimizers(opts[0], opts[1] if len(opts) > 1 else None, 1.0, 1.0)
    module.configure_task(world=1)
    module.carried = module.zero_state(3)
    for p in range(2):
        results, module.carried = module.span_step(task.batch("train", p, 21))()
    assert len(results) == 1 and results[0].count == 2 * 3
    assert torch.isfinite(results[0].loss) and bool(results[0].finite)


def test_train_tail_with_a_module_of_whole_spans_is_a_clear_error():
    """The module's pre-flight (``check_task``, run by the CLI before anything is written and
    by the hierarchy's set-up) refuses the tail for a module whose steps must be whole."""
    from dnirnn.decoupled.lit import DecoupledModule
    from dnirnn.lit_hierarchy import HierarchyModule

    hier = HierarchyModule(task="lm", input_size=37, output_size=37, hidden_size=5,
                           slow_hidden=4, k=2)
    with pytest.raises(ValueError, match="train_tail=true: HierarchyModule trains on whole"):
        hier.check_task(tiny_lm(train_tail=True), 1)
    hier.check_task(tiny_lm(), 1)
    decoupled = DecoupledModule(input_size=37, output_size=37, hidden_size=5)
    with pytest.raises(ValueError, match="train_tail=true: DecoupledModule trains on whole"):
        decoupled.check_task(tiny_lm(train_tail=True), 1)
    DNIModule(task="lm", input_size=37, output_size=37).check_task(tiny_lm(train_tail=True), 1)
