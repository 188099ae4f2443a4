"""Durable mode: which fsyncs an append makes, and that the default makes none."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import attempt_ledger._ledger as ledger_module
from attempt_ledger import AttemptLedger, LedgerIOError, ReceiptEvent

EV = [ReceiptEvent("attempt_summary", {"ok": True})]


def test_durable_mode_fsyncs_file_and_new_directories(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(ledger_module.os, "fsync", fsync)
    ledger = AttemptLedger(root, "r", "n", durable=True)
    ledger.append(1, "s", EV)
    # The root was missing too: its entry is in its parent, which is fsynced as well.
    assert synced == [str(ledger.path.parent), str(root), str(root.parent), str(ledger.path)]
    synced.clear()
    ledger.append(1, "s", EV * 3)
    assert synced == [str(ledger.path)]
    synced.clear()
    AttemptLedger(root, "r", "other", durable=True).append(1, "s", EV)
    assert synced == [str(ledger.path.parent), str(ledger.path.with_name("other.jsonl"))]


def test_default_mode_never_fsyncs(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(ledger_module.os, "fsync", calls.append)
    AttemptLedger(root, "r", "n").append(1, "s", EV * 2)
    assert calls == []


def test_durable_mode_fsyncs_every_directory_it_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A missing root and its missing parents: each new entry is in its parent directory.
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(ledger_module.os, "fsync", fsync)
    root = tmp_path / "a" / "b" / "receipts"
    ledger = AttemptLedger(root, "r", "n", durable=True)
    ledger.append(1, "s", EV)
    run = ledger.path.parent
    parents = [str(root), str(root.parent), str(tmp_path / "a"), str(tmp_path)]
    assert synced == [str(run), *parents, str(ledger.path)]
    synced.clear()
    AttemptLedger(tmp_path / "c" / "receipts", "r", "n", durable=True).append(1, "s", EV)
    made = tmp_path / "c" / "receipts"
    assert synced == [str(made / "r"), str(made), str(made.parent), str(tmp_path), synced[-1]]


def test_a_failed_directory_fsync_is_done_again_by_the_next_append(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    failures = [1]
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if failures[0] and os.path.isdir(target):
            failures[0] -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        synced.append(target)
        real_fsync(fd)

    (root / "r").mkdir(parents=True)
    monkeypatch.setattr(ledger_module.os, "fsync", fsync)
    ledger = AttemptLedger(root, "r", "n", durable=True)
    with pytest.raises(LedgerIOError) as info:
        ledger.append(1, "s", EV)
    assert info.value.errno == errno.EIO
    assert ledger.path.read_bytes() == b""  # created, not yet written
    assert ledger.append(1, "s", EV).seq == 1
    # The new file's entry is fsynced into its directory before the append is acknowledged.
    assert synced == [str(ledger.path.parent), str(ledger.path)]
