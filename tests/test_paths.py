from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attempt_ledger import (
    iter_ledgers,
    receipt_path_for_state_dir,
    receipts_path,
    receipts_root,
    receipts_root_for_state_dir,
    sanitize_segment,
)
from attempt_ledger._paths import lock_path_for

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


@pytest.mark.parametrize("length", [7, 100, 249, 250])
def test_lock_name_is_unchanged_where_it_fits(length: int) -> None:
    # Existing lock files keep working: every "<ledger name>.lock" of at most 255 bytes stays.
    ledger = Path("/r/run") / ("n" * (length - 6) + ".jsonl")
    assert lock_path_for(ledger) == ledger.with_name(ledger.name + ".lock")


@given(st.integers(min_value=245, max_value=249), st.text("ab-_09", min_size=1, max_size=3))
def test_lock_name_is_shortened_where_it_would_not_fit(length: int, tail: str) -> None:
    # Ledger names of 251..255 bytes: "<name>.lock" would pass the 255-byte limit.
    stem = ("n" * length + tail)[:length]
    ledger = Path("/r/run") / f"{stem}.jsonl"
    lock = lock_path_for(ledger)
    assert lock.parent == ledger.parent
    assert lock.name.endswith(".lock")
    assert len(os.fsencode(lock.name)) <= 255
    assert lock.name.startswith(stem[:200])
    assert not lock.name.endswith(".jsonl.lock")  # never another ledger's lock name
    assert lock_path_for(ledger) == lock  # stable
    other = ledger.with_name(f"{stem[:-1]}x.jsonl")
    assert lock_path_for(other) != lock


def test_lock_name_of_a_non_ascii_ledger_name_counts_bytes() -> None:
    ledger = Path("/r") / ("é" * 124 + ".jsonl")  # 254 bytes, 130 characters
    lock = lock_path_for(ledger)
    assert len(os.fsencode(lock.name)) <= 255
    assert lock.name.endswith(".lock")
    os.fsdecode(os.fsencode(lock.name))  # whole characters, not a split one


def test_iter_ledgers_lists_regular_files_only(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "a.jsonl").write_bytes(b"")
    (run / "link.jsonl").symlink_to(run / "a.jsonl")
    os.mkfifo(run / "fifo.jsonl")
    (tmp_path / "linked-run").symlink_to(run)  # run directories may be symlinks
    assert [(r, n) for r, n, _ in iter_ledgers(tmp_path)] == [("linked-run", "a"), ("run", "a")]


def test_iter_ledgers_skips_a_run_removed_while_listing(tmp_path: Path) -> None:
    # The runs are listed first, then each is read: a run that prune removed in between raised
    # FileNotFoundError, so `ls` and `verify --all` failed (exit 3) whenever prune ran meanwhile.
    from attempt_ledger import AttemptLedger, ReceiptEvent, iter_ledgers, remove_run

    for run in ("a", "b"):
        AttemptLedger(tmp_path, run, "n").append(1, "s", [ReceiptEvent("e")])
    listing = iter_ledgers(tmp_path)
    assert next(listing)[:2] == ("a", "n")
    assert remove_run(tmp_path, "b").dir_removed
    assert list(listing) == []
