"""Copy and Repeat Copy (Graves et al. 2014, NTM), laid out as DeepMind's dnc/repeat_copy.py.

Everything is time-major: observations (T, B, C_in), targets (T, B, C_out), mask (T, B).
The task owns its error (:func:`bits_per_step`, over the per-step loss of ``dnirnn.model``),
its rendering
(:func:`to_human_readable`) and its curriculum (:func:`next_level`, :func:`level_size`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dnirnn.model import copy_step_loss

__all__ = [
    "Episode",
    "RepeatCopy",
    "bits_per_step",
    "level_size",
    "next_level",
    "to_human_readable",
]

_LN2 = math.log(2.0)


@dataclass
class Episode:
    """A batch of episodes that share one length.

    Attributes:
        obs: float (T, B, C_in), the inputs.
        target: float (T, B, C_out), binary targets.
        mask: float (T, B), 1 on the answer steps (where the loss counts), else 0.
    """

    obs: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Episode:
        """Returns a copy on ``device``."""
        return Episode(
            obs=self.obs.to(device, non_blocking=non_blocking),
            target=self.target.to(device, non_blocking=non_blocking),
            mask=self.mask.to(device, non_blocking=non_blocking),
        )

    @property
    def num_steps(self) -> int:
        """T, the timeline length."""
        return self.obs.shape[0]

    @property
    def batch_size(self) -> int:
        """B."""
        return self.obs.shape[1]


class RepeatCopy:
    """The Repeat Copy task (``repeat=True``) or the plain Copy task (``repeat=False``).

    Repeat copy with pattern length L = 3, R = 2 repeats, W = ``num_bits`` (here 2);
    T = L*R + L + 3 = 12 steps, the mask covers the L*R + 1 = 7 answer steps::

        time            0 1 2 3 4 5 6 7 8 9 10 11
                        ---------------------------
        obs  bit 0      . 1 0 1 . . . . . . .  .     the pattern, steps 1..L
             bit 1      . 0 1 1 . . . . . . .  .
             start      1 . . . . . . . . . .  .     start marker, step 0 only
             count      . . . . R . . . . . .  .     R / norm_max at step L+1
        target bit 0    . . . . . 1 0 1 1 0 1  .     the pattern R times, steps L+2..
             bit 1      . . . . . 0 1 1 0 1 1  .
             end        . . . . . . . . . . .  1     end marker, last step only
        mask            0 0 0 0 0 1 1 1 1 1 1  1     the L*R + 1 answer steps

    Inputs are zero while the answer plays. Copy is the case R = 1 without the count
    channel and without the count step: obs channels W + 1, T = 2L + 2, the answer starts
    at step L + 1 and the mask covers L + 1 steps.

    A ``delay`` D inserts D silent, unscored steps between the input (the pattern, and the
    count) and the answer: T grows by D and the answer starts D steps later, so the first
    answer step depends on an input L + D + 1 (copy) steps back.

    Channel order: obs = [bits..., start, (count)], target = [bits..., end].

    Args:
        num_bits: pattern width W.
        repeat: repeat copy (True) or copy (False).
        norm_max: the count channel carries R / norm_max (R > norm_max is allowed and
            gives values above 1).
        delay: D >= 0 silent steps between the input and the answer.
    """

    def __init__(self, num_bits: int = 8, repeat: bool = True, norm_max: float = 10,
                 delay: int = 0) -> None:
        if num_bits < 1:
            raise ValueError(f"num_bits must be >= 1, got {num_bits}")
        if not norm_max > 0:
            raise ValueError(f"norm_max must be > 0, got {norm_max}")
        if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
            raise ValueError(f"delay must be an int >= 0, got {delay!r}")
        self.num_bits = int(num_bits)
        self.repeat = bool(repeat)
        self.norm_max = float(norm_max)
        self.delay = delay

    def __repr__(self) -> str:
        return (
            f"RepeatCopy(num_bits={self.num_bits}, repeat={self.repeat}, "
            f"norm_max={self.norm_max:g}, delay={self.delay})"
        )

    @property
    def obs_size(self) -> int:
        """C_in: the pattern bits, the start marker and (repeat copy only) the count."""
        return self.num_bits + (2 if self.repeat else 1)

    @property
    def target_size(self) -> int:
        """C_out: the pattern bits and the end marker."""
        return self.num_bits + 1

    def num_steps(self, length: int, repeats: int = 1) -> int:
        """T: L*R + L + 3 for repeat copy, 2L + 2 for copy, each + D."""
        return length * repeats + length + (3 if self.repeat else 2) + self.delay

    def answer_start(self, length: int) -> int:
        """First answer step: L + 2 for repeat copy (after the count step), L + 1 for copy,
        each + D."""
        return length + (2 if self.repeat else 1) + self.delay

    def _check(self, batch_size: int, length: int, repeats: int) -> None:
        for name, value in (("batch_size", batch_size), ("length", length), ("repeats", repeats)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not self.repeat and repeats != 1:
            raise ValueError(f"the copy task (repeat=False) needs repeats == 1, got {repeats}")

    def sample(
        self,
        batch_size: int,
        length: int,
        repeats: int = 1,
        generator: torch.Generator | None = None,
    ) -> Episode:
        """Samples a batch of episodes with Bernoulli(0.5) patterns, on the CPU.

        All episodes of the batch share the pattern length and the repeat count.

        Args:
            batch_size: B.
            length: pattern length L >= 1.
            repeats: repeat count R >= 1 (must be 1 for copy).
            generator: CPU random generator, for reproducible batches.

        Returns:
            Episode with obs (T, B, obs_size), target (T, B, target_size), mask (T, B),
            float32, T = :meth:`num_steps`.
        """
        self._check(batch_size, length, repeats)
        bits, L, R = self.num_bits, length, repeats
        T = self.num_steps(L, R)
        start = self.answer_start(L)
        pattern = torch.randint(0, 2, (L, batch_size, bits), generator=generator).float()

        obs = torch.zeros(T, batch_size, self.obs_size)
        obs[0, :, bits] = 1.0  # start marker
        obs[1 : L + 1, :, :bits] = pattern  # (L, B, W)
        if self.repeat:
            obs[L + 1, :, bits + 1] = R / self.norm_max  # repeat count

        target = torch.zeros(T, batch_size, self.target_size)
        target[start : start + L * R, :, :bits] = pattern.repeat(R, 1, 1)  # (L*R, B, W)
        target[T - 1, :, bits] = 1.0  # end marker

        mask = torch.zeros(T, batch_size)
        mask[start:] = 1.0  # L*R + 1 answer steps
        return Episode(obs=obs, target=target, mask=mask)

    def next_level(self, length: int, repeats: int) -> tuple[int, int]:
        """The curriculum level after (length, repeats); see :func:`next_level`."""
        return next_level(length, repeats, self.repeat)

    def to_human_readable(
        self, episode: Episode, output: torch.Tensor | None = None, index: int = 0
    ) -> str:
        """Renders one episode; see :func:`to_human_readable`."""
        return to_human_readable(episode, output, index, norm_max=self.norm_max)


# ---------------------------------------------------------------------------------------
# Cost
# ---------------------------------------------------------------------------------------


def bits_per_step(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The curriculum's error: masked cross-entropy in bits per answer step.

    ``sum(copy_step_loss * mask) / ln 2 / sum(mask)`` (``dnirnn.model``). No host sync; a
    mask of all zeros gives 0.

    Args:
        logits: (T, B, C_out).
        target: (T, B, C_out).
        mask: (T, B).

    Returns:
        Scalar tensor.
    """
    total = (copy_step_loss(logits, target) * mask).sum()
    return total / _LN2 / mask.sum().clamp_min(1.0)


# ---------------------------------------------------------------------------------------
# Curriculum
# ---------------------------------------------------------------------------------------


def next_level(length: int, repeats: int, repeat: bool) -> tuple[int, int]:
    """The next curriculum level.

    Copy: L -> L + 1 (R stays 1). Repeat copy: raise R up to L, then L + 1 with R = 1:
    (1,1) -> (2,1) -> (2,2) -> (3,1) -> (3,2) -> (3,3) -> (4,1) -> ...

    Args:
        length: current pattern length L >= 1.
        repeats: current repeat count R >= 1.
        repeat: True for repeat copy, False for copy.

    Returns:
        (length, repeats) of the next level.
    """
    if length < 1 or repeats < 1:
        raise ValueError(f"length and repeats must be >= 1, got ({length}, {repeats})")
    if repeat and repeats < length:
        return length, repeats + 1
    return length + 1, 1


def level_size(length: int, repeats: int = 1) -> int:
    """L * R: the number of pattern steps the model must reproduce at a level.

    This is the "sequence length solved" metric: the largest ``level_size`` whose error
    fell below the curriculum threshold. (The end-marker step is not counted.)
    """
    return length * repeats


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------


def _row(label: str, values: torch.Tensor, symbol: str = "1") -> str:
    cells = "".join(symbol if v != 0 else "." for v in values.tolist())
    return f"  {label:<7}|{cells}|"


def _channel_rows(x: torch.Tensor, num_bits: int, names: list[str]) -> list[str]:
    """x: (T, C) -> one row per channel; bit channels first, then the named extras."""
    rows = [_row(f"bit {j}", x[:, j]) for j in range(num_bits)]
    rows += [_row(name, x[:, num_bits + k]) for k, name in enumerate(names)]
    return rows


def to_human_readable(
    episode: Episode,
    output: torch.Tensor | None = None,
    index: int = 0,
    *,
    norm_max: float | None = None,
) -> str:
    """Text rendering of episode ``index`` of a batch: rows = channels, columns = time.

    ``1`` marks a one, ``.`` a zero; the count channel shows ``#`` at its step, and its
    value (and R, if ``norm_max`` is given) at the end of the row. Copy vs. repeat copy is
    told from the shapes (C_in = C_out + 1 means a count channel).

    Args:
        episode: the batch.
        output: optional model logits (T, B, C_out), shown thresholded at sigmoid > 0.5,
            with the number of wrong bits on the answer steps.
        index: which episode of the batch.
        norm_max: the task's count normaliser, to print R.

    Returns:
        A multi-line string.
    """
    obs = episode.obs[:, index].detach().cpu()  # (T, C_in)
    target = episode.target[:, index].detach().cpu()  # (T, C_out)
    mask = episode.mask[:, index].detach().cpu()  # (T,)
    num_bits = target.shape[1] - 1
    has_count = obs.shape[1] == num_bits + 2

    lines = [f"observation (T = {obs.shape[0]}):"]
    lines += _channel_rows(obs, num_bits, ["start"])
    if has_count:
        count = obs[:, num_bits + 1]
        value = float(count.abs().max())
        note = f" value {value:g}"
        if norm_max is not None:
            note += f" (R = {round(value * norm_max)})"
        lines.append(_row("count", count, "#") + note)
    lines.append("target:")
    lines += _channel_rows(target, num_bits, ["end"])
    lines.append(_row("mask", mask))
    if output is not None:
        predicted = (output[:, index].detach().cpu() > 0).float()  # sigmoid > 0.5
        wrong = int(((predicted != target).float().sum(-1) * mask).sum())
        lines.append(f"output (sigmoid > 0.5), {wrong} wrong bits on answer steps:")
        lines += _channel_rows(predicted, num_bits, ["end"])
    return "\n".join(lines)
