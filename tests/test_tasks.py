"""Copy / Repeat Copy: the episode layout of DeepMind's dnc/repeat_copy.py, cost, curriculum."""

import math

import pytest
import torch

from dnirnn.data.repeat_copy import (
    Episode,
    RepeatCopy,
    bits_per_step,
    level_size,
    next_level,
    to_human_readable,
)
from dnirnn.model import copy_step_loss as step_loss

BITS = 5
CASES = [(1, 1), (1, 3), (2, 2), (3, 1), (4, 3), (7, 10), (6, 12)]


def _sample(task, batch, L, R, seed=0):
    return task.sample(batch, L, R, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("L,R", CASES)
def test_repeat_copy_layout(L, R):
    task = RepeatCopy(num_bits=BITS, repeat=True, norm_max=10)
    B = 4
    ep = _sample(task, B, L, R)
    T = L * R + L + 3
    start, count, end = BITS, BITS + 1, BITS
    ans = L + 2  # first answer step

    assert task.obs_size == BITS + 2 and task.target_size == BITS + 1
    assert ep.obs.shape == (T, B, BITS + 2)
    assert ep.target.shape == (T, B, BITS + 1)
    assert ep.mask.shape == (T, B)
    assert ep.obs.dtype == ep.target.dtype == ep.mask.dtype == torch.float32
    assert task.num_steps(L, R) == T

    # start marker at step 0 only, and nothing else at step 0
    assert torch.all(ep.obs[0, :, start] == 1)
    assert torch.all(ep.obs[1:, :, start] == 0)
    assert torch.all(ep.obs[0, :, :BITS] == 0) and torch.all(ep.obs[0, :, count] == 0)

    # the pattern: binary, at steps 1..L, on the bit channels only
    pattern = ep.obs[1 : L + 1, :, :BITS]
    assert set(pattern.unique().tolist()) <= {0.0, 1.0}
    assert torch.all(ep.obs[1 : L + 1, :, BITS:] == 0)

    # the repeat count: R / norm_max at step L + 1 only, nothing else on that step
    assert torch.allclose(ep.obs[L + 1, :, count], torch.full((B,), R / 10))
    assert torch.all(ep.obs[torch.arange(T) != L + 1][:, :, count] == 0)
    assert torch.all(ep.obs[L + 1, :, : BITS + 1] == 0)

    # inputs are zero during the answer
    assert torch.all(ep.obs[ans:] == 0)

    # the target plays the pattern R times from step L + 2, then the end marker
    assert torch.all(ep.target[:ans] == 0)
    for r in range(R):
        block = ep.target[ans + r * L : ans + (r + 1) * L]
        assert torch.equal(block[:, :, :BITS], pattern)
        assert torch.all(block[:, :, end] == 0)
    assert torch.all(ep.target[T - 1, :, end] == 1)
    assert torch.all(ep.target[T - 1, :, :BITS] == 0)
    assert torch.all(ep.target[: T - 1, :, end] == 0)

    # the mask covers exactly the L*R + 1 answer steps
    expected_mask = torch.zeros(T, B)
    expected_mask[ans:] = 1
    assert torch.equal(ep.mask, expected_mask)
    assert ep.mask[:, 0].sum() == L * R + 1


@pytest.mark.parametrize("L", [1, 2, 5, 9])
def test_copy_layout(L):
    task = RepeatCopy(num_bits=BITS, repeat=False)
    B = 3
    ep = _sample(task, B, L, 1)
    T = 2 * L + 2
    assert task.obs_size == BITS + 1 and task.target_size == BITS + 1
    assert ep.obs.shape == (T, B, BITS + 1) and ep.target.shape == (T, B, BITS + 1)

    assert torch.all(ep.obs[0, :, BITS] == 1) and torch.all(ep.obs[1:, :, BITS] == 0)
    assert torch.all(ep.obs[0, :, :BITS] == 0)
    pattern = ep.obs[1 : L + 1, :, :BITS]
    assert torch.all(ep.obs[L + 1 :] == 0)

    assert torch.all(ep.target[: L + 1] == 0)
    assert torch.equal(ep.target[L + 1 : 2 * L + 1, :, :BITS], pattern)
    assert torch.all(ep.target[: T - 1, :, BITS] == 0)
    assert torch.all(ep.target[T - 1, :, BITS] == 1)
    assert torch.all(ep.target[T - 1, :, :BITS] == 0)

    assert torch.all(ep.mask[: L + 1] == 0) and torch.all(ep.mask[L + 1 :] == 1)
    assert ep.mask[:, 0].sum() == L + 1


@pytest.mark.parametrize("repeat, L, R, D", [(False, 1, 1, 5), (False, 3, 1, 8),
                                             (True, 2, 2, 4)])
def test_delay_inserts_silent_unscored_steps_before_the_answer(repeat, L, R, D):
    """With a delay D the episode is the undelayed one with D silent, unscored steps
    inserted after the input: the answer starts D steps later, the same pattern."""
    plain, delayed = RepeatCopy(BITS, repeat=repeat), RepeatCopy(BITS, repeat=repeat, delay=D)
    a, b = _sample(plain, 3, L, R, seed=7), _sample(delayed, 3, L, R, seed=7)
    start = plain.answer_start(L)
    assert b.obs.shape[0] == a.obs.shape[0] + D == delayed.num_steps(L, R)
    assert delayed.answer_start(L) == start + D
    assert torch.equal(b.obs[:start], a.obs[:start]) and torch.all(b.obs[start:] == 0)
    assert torch.all(b.target[: start + D] == 0) and torch.all(b.mask[: start + D] == 0)
    assert torch.equal(b.target[start + D :], a.target[start:])
    assert torch.equal(b.mask[start + D :], a.mask[start:])
    with pytest.raises(ValueError, match="delay"):
        RepeatCopy(BITS, delay=-1)
    from dnirnn.datamodules import CopyDataModule

    with pytest.raises(ValueError, match="data.delay"):
        CopyDataModule(delay=-2)
    assert CopyDataModule(delay=D, repeat=repeat).task.generator.delay == D


def test_patterns_are_random_and_seeded():
    task = RepeatCopy(num_bits=8)
    a = _sample(task, 64, 6, 2, seed=123)
    b = _sample(task, 64, 6, 2, seed=123)
    c = _sample(task, 64, 6, 2, seed=124)
    assert torch.equal(a.obs, b.obs) and torch.equal(a.target, b.target)
    assert not torch.equal(a.obs, c.obs)
    # Bernoulli(0.5) bits: 64 * 6 * 8 = 3072 draws; the mean is within ~6 sigma of 0.5
    mean = a.obs[1:7, :, :8].mean().item()
    assert abs(mean - 0.5) < 0.06
    # episodes of the batch differ
    assert not torch.equal(a.obs[:, 0], a.obs[:, 1])


def test_sample_validates_arguments():
    task = RepeatCopy(num_bits=4)
    with pytest.raises(ValueError, match="length"):
        task.sample(2, 0)
    with pytest.raises(ValueError, match="repeats"):
        task.sample(2, 3, 0)
    with pytest.raises(ValueError, match="batch_size"):
        task.sample(0, 3)
    with pytest.raises(ValueError, match="repeats == 1"):
        RepeatCopy(num_bits=4, repeat=False).sample(2, 3, 2)
    with pytest.raises(ValueError, match="num_bits"):
        RepeatCopy(num_bits=0)
    with pytest.raises(ValueError, match="norm_max"):
        RepeatCopy(norm_max=0)


def test_episode_to():
    ep = _sample(RepeatCopy(num_bits=3), 2, 2, 2)
    moved = ep.to("cpu")
    assert isinstance(moved, Episode)
    assert torch.equal(moved.obs, ep.obs) and moved.num_steps == 2 * 2 + 2 + 3
    assert moved.batch_size == 2


def test_step_loss_and_bits_per_step_hand_computed():
    task = RepeatCopy(num_bits=BITS)
    ep = _sample(task, 3, 3, 2)
    zeros = torch.zeros_like(ep.target)
    # logits 0: sigmoid 1/2 on every channel, ln 2 nats each, whatever the target
    assert torch.allclose(
        step_loss(zeros, ep.target), torch.full(ep.mask.shape, BITS + 1.0) * math.log(2)
    )
    assert torch.allclose(bits_per_step(zeros, ep.target, ep.mask), torch.tensor(BITS + 1.0))

    # confident and right: ~0 bits; one channel confidently wrong on one answer step
    logits = (ep.target * 2 - 1) * 30.0
    assert bits_per_step(logits, ep.target, ep.mask) < 1e-9
    wrong = logits.clone()
    wrong[-1, 0, BITS] = -30.0  # miss the end marker of episode 0
    n_answer = ep.mask.sum()
    expected = torch.nn.functional.softplus(torch.tensor(30.0)) / math.log(2) / n_answer
    assert torch.allclose(bits_per_step(wrong, ep.target, ep.mask), expected, rtol=1e-5)

    # errors off the mask do not count
    off = logits.clone()
    off[0] = -off[0] + 5.0
    assert bits_per_step(off, ep.target, ep.mask) < 1e-9


def test_step_loss_single_channel_value():
    logits = torch.tensor([[[2.0, -1.0]]])  # (1, 1, 2)
    target = torch.tensor([[[1.0, 1.0]]])
    expected = math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.0))
    assert step_loss(logits, target).shape == (1, 1)
    assert step_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_next_level_sequences():
    seq, level = [], (1, 1)
    for _ in range(7):
        seq.append(level)
        level = next_level(*level, repeat=True)
    assert seq == [(1, 1), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3), (4, 1)]

    seq, level = [], (1, 1)
    for _ in range(4):
        seq.append(level)
        level = next_level(*level, repeat=False)
    assert seq == [(1, 1), (2, 1), (3, 1), (4, 1)]
    assert RepeatCopy(repeat=True).next_level(3, 2) == (3, 3)
    assert level_size(3, 2) == 6 and level_size(5) == 5
    with pytest.raises(ValueError):
        next_level(0, 1, repeat=True)


def test_the_largest_length_solved_is_kept_beside_the_level():
    """Repeat copy: (1,1) (2,1) (2,2) (3,1) solved -> level 4 = 2·2, length 3; the length
    survives the checkpoint's task state (and an older state without it reads as 0)."""
    from dnirnn.tasks import CopyTask

    task = CopyTask(repeat=True)
    for _ in range(4):
        task.advance()
    assert (task.max_level_solved, task.max_length_solved) == (4, 3)
    again = CopyTask(repeat=True)
    again.load_state_dict(task.state_dict())
    assert again.max_length_solved == 3
    old = {k: v for k, v in task.state_dict().items() if k != "max_length_solved"}
    again.load_state_dict(old)
    assert again.max_length_solved == 0


def test_a_delay_curriculum_raises_the_delay_at_a_fixed_level():
    """grow="delay": each solve raises D by one from ``delay`` and keeps (L, R); the episodes
    grow by the delay; the largest D solved survives the checkpoint's task state; a
    delay-mode checkpoint is scored at its largest D solved, then restored."""
    from types import SimpleNamespace

    from dnirnn.curriculum import ScoreAtSolvedLevel
    from dnirnn.tasks import CopyTask

    task = CopyTask(start_length=2, delay=3, grow="delay")
    assert (task.delay, task.max_delay_solved) == (3, -1)
    g = torch.Generator().manual_seed(0)
    assert task.sample(g)[0].shape[0] == 2 * 2 + 2 + 3
    for _ in range(3):
        task.advance()
    assert (task.length, task.repeats, task.delay, task.max_delay_solved) == (2, 1, 6, 5)
    assert task.max_level_solved == 2 and task.sample(g)[0].shape[0] == 2 * 2 + 2 + 6
    again = CopyTask(start_length=2, delay=3, grow="delay")
    again.load_state_dict(task.state_dict())
    assert (again.delay, again.max_delay_solved) == (6, 5)
    score = ScoreAtSolvedLevel()
    module = SimpleNamespace(task=again)
    score._choose(module)
    assert again.delay == 5 and score.scored["delay"] == 5
    score._restore(module)
    assert again.delay == 6
    with pytest.raises(ValueError, match="data.grow must be one of"):
        CopyTask(grow="lenght")
    from dnirnn.datamodules import CopyDataModule
    from dnirnn.runs import curriculum_figure, monitor_for

    # the headline (best checkpoint, summary) is the largest delay solved
    assert monitor_for(CopyDataModule(grow="delay")) == ("curriculum/max_delay_solved", "max")
    assert monitor_for(CopyDataModule()) == ("curriculum/max_level_solved", "max")
    assert curriculum_figure("curriculum/max_delay_solved", again) == 6 - 1
    assert curriculum_figure("val/loss", again) is None
    fixed = CopyTask(delay=4)  # grow="length": D stays, the length grows
    fixed.advance()
    assert (fixed.length, fixed.delay, fixed.max_delay_solved) == (2, 4, 4)


def test_to_human_readable_shows_pattern():
    task = RepeatCopy(num_bits=4, norm_max=10)
    L, R = 5, 3
    ep = _sample(task, 2, L, R, seed=7)
    index = 1
    text = task.to_human_readable(ep, index=index)
    for j in range(4):
        bits = "".join("1" if v else "." for v in ep.obs[1 : L + 1, index, j].tolist())
        obs_row = "." + bits + "." * (L * R + 2)
        target_row = "." * (L + 2) + bits * R + "."
        assert f"|{obs_row}|" in text
        assert f"|{target_row}|" in text
    assert "R = 3" in text
    assert "|" + "1" + "." * (L * R + L + 2) + "|" in text  # the start marker row
    assert "|" + "." * (L + 2) + "1" * (L * R + 1) + "|" in text  # the mask row

    # perfect output: 0 wrong bits; flip one answer bit: 1 wrong bit
    logits = (ep.target * 2 - 1) * 5.0
    assert "0 wrong bits" in to_human_readable(ep, logits, index=index)
    logits[L + 2, index, 0] *= -1
    assert "1 wrong bits" in to_human_readable(ep, logits, index=index)


def test_lm_step_loss_is_pytorchs_cross_entropy_in_value_and_gradient(float64):
    """``CrossEntropyNats`` (one (N, V) buffer in its backward) equals ``F.cross_entropy``
    with ``reduction="none"``: values and gradients under any incoming gradient, logits far
    from zero included (the log-sum-exp's shift)."""
    from dnirnn.model import lm_step_loss

    torch.manual_seed(0)
    logits = torch.randn(5, 3, 11) * 4
    logits[0, 0] += 300.0  # (exp would overflow without the shift)
    y = torch.randint(0, 11, (5, 3))
    upstream = torch.randn(5, 3)
    ours_in = logits.clone().requires_grad_(True)
    ref_in = logits.clone().requires_grad_(True)
    ours = lm_step_loss(ours_in, y)
    ref = torch.nn.functional.cross_entropy(ref_in.flatten(0, 1), y.flatten(),
                                            reduction="none").view_as(y)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    (ours * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours_in.detach(), logits)  # (the saved logits untouched)


def test_lm_step_loss_computes_half_precision_logits_in_float32():
    """bfloat16 logits (mixed precision): the loss is float32 cross-entropy of their values,
    their gradient comes back in bfloat16."""
    from dnirnn.model import lm_step_loss

    torch.manual_seed(0)
    logits = (torch.randn(4, 2, 9) * 3).to(torch.bfloat16).requires_grad_(True)
    y = torch.randint(0, 9, (4, 2))
    ref_in = logits.detach().float().requires_grad_(True)
    ours = lm_step_loss(logits, y)
    ref = torch.nn.functional.cross_entropy(ref_in.flatten(0, 1), y.flatten(),
                                            reduction="none").view_as(y)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref)
    ours.sum().backward()
    ref.sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logits.grad, ref_in.grad.to(torch.bfloat16))
