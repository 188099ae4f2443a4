"""The benchmark runs end to end on tiny sizes (its figures are not checked here: speed is
measured by ``python -m benchmarks``, never asserted in tests)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from benchmarks.__main__ import main


def test_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results" if importlib.util.find_spec("matplotlib") else None
    assert main(["--quick", *(["--out", str(out)] if out else [])]) == 0
    text = capsys.readouterr().out
    for section in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## Targets"):
        assert section in text
    assert "| NO |" not in text, "a correct contender came out with inexact seqs"
    if out:
        assert sorted(p.suffix for p in out.iterdir()) == [".json", ".md", ".png"]
