"""Shared fixtures of the property tests."""

import pytest
import torch


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
