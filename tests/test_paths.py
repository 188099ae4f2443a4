from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attempt_ledger import (
    receipt_path_for_state_dir,
    receipts_path,
    receipts_root,
    receipts_root_for_state_dir,
    sanitize_segment,
)

any_text = st.text(st.characters(), max_size=40)


@given(any_text)
def test_sanitized_segment_is_safe(raw: str) -> None:
    segment = sanitize_segment(raw)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", segment)
    assert not segment.startswith("-")
    assert not segment.endswith("-")
    assert segment not in {".", ".."}


@given(any_text)
def test_sanitize_is_idempotent(raw: str) -> None:
    assert sanitize_segment(sanitize_segment(raw)) == sanitize_segment(raw)


@given(any_text, any_text)
def test_path_stays_under_root(run_id: str, node_id: str) -> None:
    root = Path("/tmp/receipts")
    path = receipts_path(root, run_id, node_id)
    assert path.parent.parent == root
    assert os.path.normpath(path) == str(path)
    assert path.name.endswith(".jsonl")


@pytest.mark.parametrize(
    ("raw", "segment"),
    [
        ("automation/v2/run", "automation-v2-run"),
        ("research:sources", "research-sources"),
        ("..", "unknown"),
        ("", "unknown"),
        ("   ", "unknown"),
        ("--a--", "a"),
        ("a\x00b", "a-b"),
        ("é", "unknown"),
        ("\u3000run_1\u3000", "run_1"),
        ("\x1crun\x1c", "run"),  # not whitespace to Rust, so it becomes "-" and is trimmed
    ],
)
def test_sanitize_examples(raw: str, segment: str) -> None:
    assert sanitize_segment(raw) == segment


def test_seed_automation_attempt_receipts_path_sanitizes_segments() -> None:
    path = receipts_path(Path("/tmp/receipts"), "automation/v2/run", "research:sources")
    assert path == Path("/tmp/receipts/automation-v2-run/research-sources.jsonl")


def test_state_dir_paths() -> None:
    assert receipts_root_for_state_dir("/s") == Path("/s/automation_attempt_receipts")
    assert receipt_path_for_state_dir("/s", "r", "n") == Path(
        "/s/automation_attempt_receipts/r/n.jsonl"
    )


def test_receipts_root_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ATTEMPT_LEDGER_DIR", str(tmp_path))
    assert receipts_root() == tmp_path


def test_receipts_root_default_is_the_user_state_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ATTEMPT_LEDGER_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert receipts_root() == tmp_path / "attempt_ledger" / "automation_attempt_receipts"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert receipts_root() == (
        tmp_path / ".local" / "state" / "attempt_ledger" / "automation_attempt_receipts"
    )
