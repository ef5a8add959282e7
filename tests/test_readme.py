"""The README's engine example runs as printed (on a shorter stream)."""

import re
from pathlib import Path


def test_readme_engine_example_runs(capsys):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    assert "train_span" in code and "10_000" in code
    exec(compile(code.replace("10_000", "200"), "README.md", "exec"), {})
    assert "tensor(" in capsys.readouterr().out
