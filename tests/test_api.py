"""The seed's functions: thin wrappers over the ledger, with a bounded cache of open ledgers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import attempt_ledger._api as api
from attempt_ledger import (
    ReceiptDraft,
    ReceiptEvent,
    append_receipt,
    append_receipts,
    clear_cache,
    read_last_seq,
    read_receipt_records,
    receipt_path_for_state_dir,
    reconcile_receipts,
)


def test_append_receipt_counts_the_whole_file_as_the_seed_does(tmp_path: Path) -> None:
    draft = ReceiptDraft("run", "node", 1, "s", " start ", {"k": 1})
    first = append_receipt(tmp_path, draft)
    path = receipt_path_for_state_dir(tmp_path, "run", "node")
    assert (first.path, first.seq, first.record_count) == (path, 1, 1)
    with path.open("ab") as f:
        f.write(b'not-json\n{"seq": 5}\n')  # neither is a record, the second has a valid seq
    second = append_receipt(tmp_path, draft)
    assert (second.seq, second.record_count) == (6, 2)
    assert read_receipt_records(path)[0].event_type == "start"


def test_batch_form_counts_what_it_appended(tmp_path: Path) -> None:
    append_receipts(tmp_path, "r", "n", 1, "s", [ReceiptEvent("a")] * 3)
    summary = append_receipts(tmp_path, "r", "n", 1, "s", [ReceiptEvent("b")] * 2)
    assert (summary.seq, summary.record_count) == (5, 2)


def test_readers_of_a_missing_ledger(tmp_path: Path) -> None:
    missing = tmp_path / "run" / "node.jsonl"
    assert read_last_seq(missing) == 0
    assert read_receipt_records(missing) == []
    summary = reconcile_receipts(missing, 1, 0, 1)
    assert (summary.found, summary.last_seq, summary.attempts) == (False, 0, 1)
    assert not (tmp_path / "run").exists()


def test_cache_is_bounded_and_evicts_the_least_recently_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "CACHE_SIZE", 3)
    fds = len(os.listdir("/proc/self/fd"))
    for node in ["a", "b", "c"]:
        append_receipts(tmp_path, "r", node, 1, "s", [ReceiptEvent("e")])
    append_receipts(tmp_path, "r", "a", 1, "s", [ReceiptEvent("e")])  # a is now the newest
    append_receipts(tmp_path, "r", "d", 1, "s", [ReceiptEvent("e")])  # evicts b, not a
    assert [key[2] for key in api._cache] == ["c", "a", "d"]
    assert len(os.listdir("/proc/self/fd")) == fds + 2 * 3
    # An evicted ledger is simply opened again.
    assert append_receipts(tmp_path, "r", "b", 1, "s", [ReceiptEvent("e")]).seq == 2
    clear_cache()
    assert len(os.listdir("/proc/self/fd")) == fds
    assert not api._cache


def test_append_receipt_refuses_what_is_not_a_draft(tmp_path: Path) -> None:
    # It raised AttributeError ('NoneType' object has no attribute 'run_id').
    draft = ReceiptDraft("run", "node", 1, "s", "start", None)
    for wrong in (None, "draft", ReceiptEvent("start"), vars_of(draft)):
        with pytest.raises(TypeError, match="ReceiptDraft"):
            append_receipt(tmp_path, wrong)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


def vars_of(draft: ReceiptDraft) -> dict[str, object]:
    return {name: getattr(draft, name) for name in ("run_id", "node_id", "attempt", "session_id")}
