"""WallClock logs the training time (wall and CPU), monotone, and continues it across a
resume."""

from __future__ import annotations

import pytest

from .test_training import TINY, _ckpt_name, fit, rows

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
COPY = ["--data.init_args.steps_per_epoch=4", "--data.init_args.batch_size=4",
        "--trainer.log_every_n_steps=1", "--trainer.callbacks+=dnirnn.wallclock.WallClock",
        *TINY]


def times(version, key: str = "time/train_s") -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in rows(version) if r.get(key)}


@pytest.fixture(autouse=True)
def _sandbox(cli_sandbox):
    """The CLI sandbox (tests/conftest.py)."""


def test_training_time_is_logged_and_continues_after_a_resume(tmp_path):
    full = fit("copy_tbptt", tmp_path / "full", "--trainer.max_steps=8", "--checkpoint_every=4",
               *COPY)
    t, cpu = times(full), times(full, "time/train_cpu_s")
    assert sorted(t) == sorted(cpu) == list(range(1, 9))
    assert all(t[s] > t[s - 1] > 0 for s in range(2, 9))
    assert all(cpu[s] > cpu[s - 1] > 0 for s in range(2, 9))
    ckpt = full / "checkpoints" / _ckpt_name(full, 4)
    resumed = fit("copy_tbptt", tmp_path / "resumed", "--trainer.max_steps=8",
                  f"--ckpt_path={ckpt}", *COPY)
    r, r_cpu = times(resumed), times(resumed, "time/train_cpu_s")
    assert sorted(r) == sorted(r_cpu) == list(range(5, 9))
    assert r[5] > t[4]  # counted on from the checkpoint's value, not from zero
    assert r_cpu[5] > cpu[4]
