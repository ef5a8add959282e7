"""Shared fixtures of the tests."""

import urllib.error

import pytest
import torch


@pytest.fixture
def cli_sandbox(monkeypatch, tmp_path):
    """For tests that run the CLI: W&B offline and quiet, no DNIRNN_DEBUG tracebacks, the
    working directory in tmp (anything written by accident stays there), and no network."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("DNIRNN_DEBUG", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the PTB default root
    monkeypatch.chdir(tmp_path)

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr("urllib.request.urlopen", no_network)


@pytest.fixture
def float64():
    """Exactness is checked in float64; the default dtype is restored afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def mse_steps(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-step squared error, ``(T, B, O), (T, B, O) -> (T, B)``."""
    return 0.5 * (logits - y).pow(2).sum(-1)


def pytest_terminal_summary(terminalreporter):
    """One line when the Penn Treebank tests were skipped for want of the data."""
    skipped = terminalreporter.stats.get("skipped", [])
    ptb = [r for r in skipped if "PTB" in str(r.longrepr) or "ptb" in str(r.longrepr)]
    if ptb:
        terminalreporter.write_line(
            f"{len(ptb)} Penn Treebank tests skipped: no PTB files in DNIRNN_DATA, the "
            f"per-user cache or ../shared/data/ptb. Run them with "
            f"DNIRNN_DATA=/path/to/ptb make test (the folder holding ptb.{{train,valid,test}}"
            f".txt; any `dnirnn fit --config ptb_char_dni` downloads them to "
            f"~/.cache/dnirnn/ptb).")
