"""Every Python block of the README runs as it stands (each starts with `# example:`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3
    assert all(b.startswith("# example:") for b in BLOCKS), "label every Python block"


@pytest.mark.parametrize("code", BLOCKS, ids=[b.splitlines()[0][11:40] for b in BLOCKS])
def test_readme_example_runs(code, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, str(README), "exec"), namespace)
