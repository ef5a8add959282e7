"""Penn Treebank word level at pytorch/examples word_language_model's reference:
evaluation memory bounded in bytes with a result independent of how it is cut, tied
weights, and ``ptb_word_wlm`` being word_language_model (WLM): its batches, its initial
weights and first loss at the same seed, its configuration, exact resume with its schedule.

The WLM side is written out here from what its script does (``batchify``: the stream cut
into columns; ``get_batch``: 35-row slices, the last one shorter; ``RNNModel``: Embedding,
LSTM, Linear built in that order, then uniform +-0.1 weights and a zero readout bias); its
code is not part of this repository."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from dnirnn.data.ptb_corpus import Corpus
from dnirnn.data.vocab import Vocab
from dnirnn.datamodules import PTBDataModule
from dnirnn.lit import DNIModule
from dnirnn.main import main
from dnirnn.sweep.grid import load_grid
from dnirnn.tasks import LanguageModelTask

from .test_training import PTB, ROOT, _resume_matches, fit, needs_ptb, train_losses

WLM = {"hidden_size": 200, "num_layers": 2, "window": 35, "windows_per_step": 1,
       "boundary": "tbptt", "lr": 20.0,
       "core": {"embed_size": 200, "dropout": 0.2, "init_range": 0.1, "tied": False},
       "optim": {"optimizer": "sgd", "clip": 0.25, "lr_scheduler": "plateau"}}


@pytest.fixture
def _sandbox(cli_sandbox):
    """The CLI tests run in the CLI sandbox (tests/conftest.py)."""


def recipe(name: str) -> dict:
    return yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())


# ---- evaluation: bounded in bytes, independent of the cut ------------------------------


def tiny_lm(vocab: int = 37, steps: int = 204, batch: int = 3,
            train_tail: bool = False) -> LanguageModelTask:
    g = torch.Generator().manual_seed(0)
    split = [torch.randint(0, vocab, (steps * batch + 1,), generator=g) for _ in range(3)]
    corpus = Corpus(*split, vocab=Vocab([str(i) for i in range(vocab)]), level="word")
    return LanguageModelTask(corpus, batch_size=batch, eval_batch_size=batch,
                             train_tail=train_tail)


def evaluate(module: DNIModule, split: str = "valid") -> tuple[float, int, list[int]]:
    """The module's evaluation of ``split`` (``_eval_step`` over every batch): mean nats,
    token count, and the bytes of logits of each forward call."""
    calls, forward = [], module.eval_forward

    def recording(x, state):
        logits, state = forward(x, state)
        calls.append(logits.numel() * logits.element_size())
        return logits, state

    module.eval_forward = recording
    module._eval = {}
    module.eval()
    with torch.no_grad():
        for p in range(module.task.num_batches(split, module.hparams.eval_chunk)):
            module._eval_step(split, p)
    e = module._eval
    return float(e["nats"] / e["count"]), int(e["count"]), calls


@pytest.mark.parametrize("hier", [False, True])
def test_evaluation_is_independent_of_chunk_and_byte_budget(float64, hier):
    """The same mean loss over the whole stream (state carried) however evaluation is cut:
    by ``eval_chunk`` (Lightning's batches) or by the byte budget of each forward call; and
    no forward call holds more logits than the budget allows (one step, or the hierarchy's
    k steps, at the least)."""
    task = tiny_lm()  # (203 targets per column: the hierarchy ends on a tail shorter than k)
    n, per_step = 203 * 3, 3 * 37 * 8  # tokens, bytes of one step's float64 logits
    results = []
    for chunk, budget in ((512, 10**9), (64, 10**9), (64, 5 * per_step), (7, per_step),
                          (512, 1)):
        torch.manual_seed(0)
        if hier:
            from dnirnn.lit_hierarchy import HierarchyModule
            module = HierarchyModule(task="lm", input_size=37, output_size=37, hidden_size=5,
                                     slow_hidden=4, k=2, eval_chunk=chunk + chunk % 2)
        else:
            module = DNIModule(task="lm", input_size=37, output_size=37, hidden_size=5,
                               num_layers=2, eval_chunk=chunk)
        module.task, module.eval_logits_bytes = task, budget
        loss, count, calls = evaluate(module)
        k = 2 if hier else 1
        assert count == n and max(calls) <= max(budget, k * per_step)
        results.append(loss)
    assert len({round(r, 12) for r in results}) == 1, results


def test_ptb_word_evaluation_holds_a_bounded_number_of_bytes():
    """PTB word's sizes (10,000 words, 10 evaluation columns): at most 41 steps of logits
    (16 MiB) per forward call, where eval_chunk = 512 steps held 205 MB."""
    module = DNIModule(task="lm", input_size=10_000, output_size=10_000, hidden_size=4)
    assert module.eval_span(10) == 41
    assert 41 * 10 * 10_000 * 4 <= module.eval_logits_bytes < 42 * 10 * 10_000 * 4


# ---- tied weights and the initial weights ------------------------------------------------


def test_tied_weights_are_one_parameter_trained_by_both_uses(float64):
    """One (V, H) parameter less than untied, and its gradient is the sum of the gradients
    the embedding and the readout would get untied, from the same values."""
    lm = {"task": "lm", "input_size": 11, "output_size": 11, "hidden_size": 6,
          "boundary": "tbptt"}
    tied = DNIModule(**lm, core={"embed_size": 6, "tied": True})
    untied = DNIModule(**lm, core={"embed_size": 6})
    a, b = tied.engine.core, untied.engine.core
    assert a.readout.weight is a.encoder.weight
    assert sum(p.numel() for p in untied.parameters()) \
        - sum(p.numel() for p in tied.parameters()) == 11 * 6
    with torch.no_grad():
        for name, p in a.named_parameters():
            b.get_parameter(name).copy_(p)
        b.readout.weight.copy_(a.encoder.weight)
    x, y = torch.tensor([[1, 3], [2, 2], [4, 1]]), torch.tensor([[2, 2], [4, 1], [9, 0]])
    for core in (a, b):
        logits, _, _ = core(x, core.zero_state(2))
        nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
    torch.testing.assert_close(a.encoder.weight.grad,
                               b.encoder.weight.grad + b.readout.weight.grad)
    assert b.encoder.weight.grad.abs().sum() > 0 and b.readout.weight.grad.abs().sum() > 0


@pytest.mark.usefixtures("_sandbox")
def test_tied_with_unequal_sizes_is_one_line_naming_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "copy_dni", f"--trainer.default_root_dir={tmp_path / 'r'}",
              "--model.core.tied=true", "--wandb=false"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "dnirnn: error: model.core.tied: tying the embedding to the readout needs token " \
           "inputs" in err
    with pytest.raises(ValueError,
                       match=r"model.core.tied: .* set model.core.embed_size=6 \(or null\)"):
        DNIModule(task="lm", input_size=11, output_size=11, hidden_size=6,
                  core={"embed_size": 4, "tied": True})
    assert not (tmp_path / "r").exists()


def wlm_model(vocab: int, seed: int) -> tuple[nn.Embedding, nn.LSTM, nn.Linear]:
    """word_language_model's RNNModel(LSTM, V, 200, 200, 2, 0.2), built as its script does
    after ``torch.manual_seed(seed)``: the modules in this order, then its init_weights."""
    torch.manual_seed(seed)
    enc, rnn, dec = nn.Embedding(vocab, 200), nn.LSTM(200, 200, 2, dropout=0.2), \
        nn.Linear(200, vocab)
    nn.init.uniform_(enc.weight, -0.1, 0.1)
    nn.init.zeros_(dec.bias)
    nn.init.uniform_(dec.weight, -0.1, 0.1)
    return enc, rnn, dec


def test_initial_weights_are_word_language_models_at_the_same_seed():
    enc, rnn, dec = wlm_model(10_000, 1111)
    torch.manual_seed(1111)
    core = DNIModule(task="lm", input_size=10_000, output_size=10_000,
                     **{k: v for k, v in WLM.items() if k != "window"}).engine.core
    assert torch.equal(core.encoder.weight, enc.weight)
    assert torch.equal(core.readout.weight, dec.weight) and not core.readout.bias.any()
    for name, p in rnn.named_parameters():
        assert torch.equal(getattr(core.lstm, name), p), name


# ---- ptb_word_wlm is word_language_model ---------------------------------------------------


def test_wlm_recipe_is_word_language_models_configuration():
    cfg = recipe("ptb_word_wlm")
    assert {k: cfg["model"][k] for k in WLM} == WLM
    assert cfg["data"]["init_args"] | {"class_path": cfg["data"]["class_path"]} == {
        "class_path": "dnirnn.datamodules.PTBDataModule", "level": "word", "batch_size": 20,
        "eval_batch_size": 10, "train_tail": True}
    assert cfg["seed_everything"] == 1111 and cfg["trainer"]["max_epochs"] == 6
    assert cfg["trainer"]["val_check_interval"] == 1.0  # the plateau sees one per epoch
    DNIModule(task="lm", input_size=10_000, output_size=10_000, **cfg["model"])


def test_wlm_dni_recipe_is_the_wlm_recipe_with_ptb_word_dnis_synthesizer():
    """ptb_word_dni's synthesizer, but for beta 0.1 and the guard at 1: the settings measured
    best for WLM's SGD core (results/ptb_reference.md)."""
    wlm, dni, paper = recipe("ptb_word_wlm"), recipe("ptb_word_wlm_dni"), recipe("ptb_word_dni")
    synth = {"kind", "hidden", "layers", "lr", "clip"}
    d, p = dni["model"]["synthesizer"], paper["model"]["synthesizer"]
    assert {k: d[k] for k in synth} == {k: p[k] for k in synth}
    assert (dni["model"]["targets"]["scale"], d["guard"]) == (0.1, 1.0)
    assert dni["model"]["boundary"] == "dni"
    rest = {k: v for k, v in dni["model"].items()
            if k not in {"synthesizer", "targets", "boundary"}}
    assert rest == {k: v for k, v in wlm["model"].items() if k != "boundary"}
    for part in ("data", "seed_everything"):
        assert dni[part] == wlm[part]
    assert {k: v for k, v in dni["trainer"].items() if k != "default_root_dir"} == \
        {k: v for k, v in wlm["trainer"].items() if k != "default_root_dir"}


@needs_ptb
def test_batches_are_word_language_models():
    """Training steps are WLM's get_batch slices of its batchify layout, every one, its
    shorter last (the 33-word tail) included (``train_tail``; without it the tail is
    dropped); evaluation covers every target of WLM's evaluation, the tail included, in
    (N - 1) x 10 tokens."""
    cfg = recipe("ptb_word_wlm")["data"]["init_args"]
    dm = PTBDataModule(**{**cfg, "root": PTB})
    dm.setup("fit")
    task, corpus = dm.task, dm.task.corpus
    for split, bsz in (("train", 20), ("valid", 10), ("test", 10)):
        stream = getattr(corpus, split)
        wlm = stream[: len(stream) // bsz * bsz].view(bsz, -1).t()  # batchify
        assert torch.equal(task.streams[split], wlm)
        starts = range(0, wlm.shape[0] - 1, 35)  # get_batch(source, i)
        chunk = 35 if split == "train" else 512
        n = task.num_batches(split, chunk)
        ours_x = torch.cat([task.batch(split, p, chunk).x for p in range(n)])
        ours_y = torch.cat([task.batch(split, p, chunk).y for p in range(n)])
        assert torch.equal(ours_x, wlm[:-1]) and torch.equal(ours_y, wlm[1:])
        assert ours_y.numel() == (wlm.shape[0] - 1) * bsz
        if split == "train":
            assert len(starts) == n == 1328 and wlm.shape[0] - 1 - starts[-1] == 33
            for p in (0, 1, n // 2, n - 2, n - 1):
                i, seq = starts[p], min(35, wlm.shape[0] - 1 - starts[p])
                b = task.batch(split, p, chunk)
                assert torch.equal(b.x, wlm[i : i + seq])
                assert torch.equal(b.y, wlm[i + 1 : i + 1 + seq])
                assert b.last == (p == n - 1)
            task.train_tail = False
            assert task.num_batches(split, chunk) == 1327  # (the tail dropped)


@needs_ptb
@pytest.mark.usefixtures("_sandbox")
def test_training_steps_are_word_language_models_at_the_same_seed(tmp_path):
    """``dnirnn fit --config ptb_word_wlm`` at seed 1111 is WLM's training loop: the same
    initial weights, dropout masks, carried state, clip and SGD step, so its first training
    losses are those of WLM's loop (written out below), to float32 rounding. (Further on,
    lr 20 amplifies the rounding of the two loss implementations: about 1e-6 at step 5,
    1e-3 by step 30; results/ptb_reference.md.)"""
    steps = 6
    version = fit("ptb_word_wlm", tmp_path / "run", f"--trainer.max_steps={steps}",
                  "--trainer.log_every_n_steps=1", "--trainer.limit_val_batches=1")
    enc, rnn, dec = wlm_model(10_000, 1111)
    params = [*enc.parameters(), *rnn.parameters(), *dec.parameters()]
    dm = PTBDataModule(level="word", root=PTB, batch_size=20)
    dm.setup("fit")
    data = dm.task.streams["train"]
    drop = nn.Dropout(0.2)
    hidden = (torch.zeros(2, 20, 200), torch.zeros(2, 20, 200))
    losses = []
    for i in range(0, 35 * steps, 35):  # WLM's train(): one update per get_batch slice
        for p in params:
            p.grad = None
        hidden = tuple(h.detach() for h in hidden)  # repackage_hidden
        output, hidden = rnn(drop(enc(data[i : i + 35])), hidden)
        logp = nn.functional.log_softmax(dec(drop(output)).view(-1, 10_000), dim=1)
        loss = nn.functional.nll_loss(logp, data[i + 1 : i + 36].reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(params, 0.25)
        with torch.no_grad():
            for p in params:
                p.add_(p.grad, alpha=-20.0)
        losses.append(loss.item())
    ours = train_losses(version)
    assert [ours[s] for s in range(steps)] == pytest.approx(losses, rel=1e-5)
    assert len(set(losses)) == steps  # the weights moved: every step's loss differs
    assert 9.0 < losses[0] < 9.4  # ~ log 10,000: an untrained model


@needs_ptb
@pytest.mark.usefixtures("_sandbox")
def test_wlm_recipe_resumes_exactly_with_its_plateau_mid_epoch(tmp_path):
    """SGD, the plateau schedule and dropout on PTB word, stopped mid-epoch and resumed:
    validations every 3 steps, each a bad one (threshold 1) so that patience 1 anneals at
    every second, the checkpoint of step 5 holding one bad validation."""
    _resume_matches("ptb_word_wlm", tmp_path, 10, 5, "--trainer.val_check_interval=3",
                    "--keep_checkpoints=0",
                    "--trainer.limit_val_batches=1", "--model.eval_chunk=64",
                    "--model.optim.lr_scheduler_args={threshold: 1.0, patience: 1}")
    ckpt = torch.load(tmp_path / "resumed" / "version_0" / "checkpoints" / "last.ckpt",
                      weights_only=False)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == 20.0 / 4**2


# ---- the grids of item 5 ------------------------------------------------------------------


def cell_args(cell) -> dict[str, str]:
    """A grid cell's ``--key=value`` options of its fit command."""
    return dict(a[2:].split("=", 1) for a in cell.fit_args() if a.startswith("--") and "=" in a)


def cell_model(cell, args: dict[str, str]) -> dict:
    """Its model options: the recipe's, then the cell's overrides."""
    model = {}
    for k, v in recipe(cell.recipe)["model"].items():  # (groups as dotted keys)
        model.update({f"{k}.{f}": x for f, x in v.items()} if isinstance(v, dict) else {k: v})
    model.update({k[6:]: yaml.safe_load(v) for k, v in args.items() if k.startswith("model.")})
    return model


def test_reference_grid_has_the_cells_issue_20_asks_for():
    """WLM's configuration for 6 epochs and DNI / TBPTT at T = 5 and 35 for 3, over 3 seeds;
    the oracle at T = 5 on one; 35 words per training step everywhere and the epoch's tail
    dropped, as when its cells were measured (so epoch e ends at step 1327 e, where the
    grid's per-epoch metrics read), the oracle's look-ahead the rest of the step."""
    grid = load_grid(str(ROOT / "grids" / "ptb_reference.yaml"))
    cells = {c.name: c for c in grid.cells}
    seeds = ("s1111", "s1112", "s1113")
    want = [f"T{t}_{m}_{s}" for t, m in (("35", "tbptt"), ("5", "tbptt"), ("5", "dni"),
                                         ("35", "dni")) for s in seeds] + ["T5_oracle_s1111"]
    assert sorted(cells) == sorted(want)
    for name, c in cells.items():
        args = cell_args(c)
        model = cell_model(c, args)
        assert model["window"] * model["windows_per_step"] == 35, name
        assert args["trainer.max_epochs"] == ("6" if name.startswith("T35_tbptt") else "3")
        assert args["seed_everything"] == name.rsplit("_s", 1)[1]
        assert args["data.init_args.train_tail"] == "false"
        expected = {"tbptt": ("ptb_word_wlm", "tbptt"), "dni": ("ptb_word_wlm_dni", "dni"),
                    "oracle": ("ptb_word_wlm", "oracle")}[name.split("_")[1]]
        assert (c.recipe, model["boundary"]) == expected, name
        if model["boundary"] == "oracle":
            assert model["targets.oracle_windows"] == model["windows_per_step"] - 1
        assert c.test == "best"


def test_wlm_grid_reads_each_epoch_at_its_last_of_1328_steps():
    """grids/ptb_wlm.yaml runs the recipes as they stand (the tail trained: 1,328 steps per
    epoch, ``test_batches_are_word_language_models``), so epoch e's validation is read at
    step 1328 e; TBPTT at seeds 1111-1115, DNI at T = 35 at 1111-1113."""
    grid = load_grid(str(ROOT / "grids" / "ptb_wlm.yaml"))
    cells = {c.name: c for c in grid.cells}
    assert sorted(cells) == sorted([f"tbptt_s{s}" for s in range(1111, 1116)]
                                   + [f"dni_s{s}" for s in range(1111, 1114)])
    for name, c in cells.items():
        args = cell_args(c)
        assert not any("train_tail" in k for k in args)
        assert recipe(c.recipe)["data"]["init_args"]["train_tail"] is True
        assert c.recipe == {"tbptt": "ptb_word_wlm", "dni": "ptb_word_wlm_dni"}[name[:-6]]
        epochs = {"1111": "6", "1114": "1", "1115": "1"}.get(name[-4:], "3")
        assert args["trainer.max_epochs"] == ("3" if name.startswith("dni") else epochs)
    for e in range(1, 7):
        assert grid.metrics[f"e{e}"].at == 1328 * e


def test_t5_lr_grid_holds_the_learning_rate_per_word():
    """grids/ptb_t5_lr.yaml: T = 5 in 35-word steps at lr 20 and at 20 / 7, the rate per
    word of one update per 35 words; the oracle sees the rest of the step."""
    grid = load_grid(str(ROOT / "grids" / "ptb_t5_lr.yaml"))
    cells = {c.name: c for c in grid.cells}
    assert sorted(cells) == sorted(["lr2.857_oracle_s1111", "lr2.857_tbptt_s1111",
                                    "lr20_tbptt_s1111", "lr2.857_dni_s1111"])
    for name, c in cells.items():
        args = cell_args(c)
        model = cell_model(c, args)
        assert (model["window"], model["windows_per_step"]) == (5, 7)
        assert model["lr"] == pytest.approx(20.0 if name.startswith("lr20_") else 20.0 / 7)
        assert model["boundary"] == name.split("_")[1]
        if model["boundary"] == "oracle":
            assert model["targets.oracle_windows"] == 6
    assert grid.metrics["e1"].at == 1328
