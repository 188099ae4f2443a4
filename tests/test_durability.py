"""Durable mode: which fsyncs an append makes, and that the default makes none."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import attempt_ledger._ledger as ledger_module
from attempt_ledger import AttemptLedger, ReceiptEvent

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
    assert synced == [str(ledger.path.parent), str(root), str(ledger.path)]
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
