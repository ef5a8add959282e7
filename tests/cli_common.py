"""The CLI tests' shared pieces: a tiny copy_dni, a run of it, an expected exit and a run's
logged rows (tests/test_cli_results.py, tests/test_cli_errors.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from dnirnn.main import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model.hidden_size=8", "--data.init_args.batch_size=4",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--wandb=false", "--trainer.log_every_n_steps=1"]


def fit(root: Path, *extra: str, stage: str = "fit") -> None:
    main([stage, "--config", "copy_dni", f"--trainer.default_root_dir={root}", *TINY, *extra])


def exits(code: int, *args: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    assert info.value.code == code
    return info.value


def rows(version: Path) -> list[dict]:
    with open(version / "metrics.csv") as f:
        return list(csv.DictReader(f))
