"""Hash chains written by the ledger itself: AttemptLedger and the module functions, checked
byte for byte against the model of the append rule (tests/_chain_model.py) and by the verifier."""

from __future__ import annotations

import pickle
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import attempt_ledger._ledger as ledger_module
from attempt_ledger import (
    AttemptLedger,
    ReceiptEvent,
    append_receipt,
    append_receipts,
    read_receipt_records,
    receipt_path_for_state_dir,
    verify_receipt_ledger,
)
from attempt_ledger._chain import record_hash_of
from attempt_ledger._lines import line_seq
from attempt_ledger._records import ReceiptDraft

from ._chain_model import NODE, RUN, model_append
from .strategies import chain_histories, junk_lines, text

TS_NS = 1_700_000_000_000 * 1_000_000  # the model's ts_ms, in the clock the ledger reads
EV = [ReceiptEvent("e", {"x": 0.00001})]


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module.time, "time_ns", lambda: TS_NS)


def _ledgers(root: Path) -> tuple[AttemptLedger, AttemptLedger]:
    return AttemptLedger(root, RUN, NODE), AttemptLedger(root, RUN, NODE, hash_chain=True)


@settings(max_examples=40)
@given(history=chain_histories)
def test_the_ledger_writes_what_the_model_says(history: list) -> None:
    root = Path(tempfile.mkdtemp())
    try:
        v1, v2 = _ledgers(root)
        expected = b""
        for kind, item in history:
            if kind == "junk":
                v1.path.parent.mkdir(parents=True, exist_ok=True)
                with v1.path.open("ab") as f:
                    f.write(item)
                expected += item
                continue
            (v2 if kind == "v2" else v1).append(1, "s", item)
            expected = model_append(expected, item, v2=kind == "v2")
        assert (v1.path.read_bytes() if v1.path.exists() else b"") == expected
        if any(kind == "v2" for kind, _ in history) and history[-1][0] != "junk":
            assert verify_receipt_ledger(v1.path).valid
    finally:
        shutil.rmtree(root)


def test_a_chain_is_continued_whatever_the_option(root: Path) -> None:
    v1, v2 = _ledgers(root)
    v1.append(1, "s", EV)  # schema 1
    v2.append(1, "s", EV * 2)  # starts a chain: prev_hash null
    v1.append(1, "s", EV)  # the last line is hashed: continued as schema 2
    lines = root.joinpath(v1.path).read_bytes().split(b"\n")[:-1]
    assert [line[:12] for line in lines] == [b'{"version":1'] + [b'{"version":2'] * 3
    assert b'"prev_hash":null' in lines[1]
    assert lines[3].count(record_hash_of(lines[2]).encode()) == 1  # type: ignore[union-attr]
    result = verify_receipt_ledger(v1.path)
    assert (result.valid, result.record_count, result.hashed_record_count) == (True, 4, 3)
    assert result.root_hash == record_hash_of(lines[3])
    assert [r.version for r in read_receipt_records(v1.path)] == [1, 2, 2, 2]


def test_the_cached_tail_keeps_the_hash(root: Path) -> None:
    # Appends from one object skip the tail read while the size is theirs: the hash must carry.
    v1, v2 = _ledgers(root)
    for _ in range(3):
        v2.append(1, "s", EV)
        v1.append(1, "s", EV)
    assert verify_receipt_ledger(v1.path).hashed_record_count == 6
    assert verify_receipt_ledger(v1.path).valid


def test_a_foreign_line_after_a_chain_starts_a_new_one(root: Path) -> None:
    # The rule follows the last valid line: an unhashed one (here foreign) is not chained from.
    v1, v2 = _ledgers(root)
    v2.append(1, "s", EV)
    with v1.path.open("ab") as f:
        f.write(b'{"seq":1}\n')
    assert v1.append(1, "s", EV).seq == 2  # unhashed last line, v1 ledger: schema 1
    v2.append(1, "s", EV)
    lines = v1.path.read_bytes().split(b"\n")[:-1]
    assert b'"prev_hash":null' in lines[-1]


@settings(max_examples=25)
@given(
    batch=st.lists(st.builds(ReceiptEvent, st.just("a"), text), min_size=1, max_size=3),
    torn=st.sampled_from([b"", b'{"seq":9', b"\xff", b'{"version":2,"run_id":"r']),
    junk=st.lists(junk_lines, max_size=2),
    data=st.data(),
)
def test_after_any_crash_point_the_next_append_keeps_the_chain(
    batch: list[ReceiptEvent], torn: bytes, junk: list[bytes], data: st.DataObject
) -> None:
    root = Path(tempfile.mkdtemp())
    try:
        _, v2 = _ledgers(root)
        v2.append(1, "s", EV * 2)
        v2.close()
        with v2.path.open("ab") as f:
            f.write(b"".join(junk) + torn)
        before = v2.path.read_bytes()
        v2.append(2, "crash", batch)
        v2.close()
        written = v2.path.read_bytes()[len(before) :]
        k = data.draw(st.integers(0, len(written)))
        padding = data.draw(st.sampled_from([b"", b"\0" * (len(written) - k)]))
        v2.path.write_bytes(before + written[:k] + padding)
        after = AttemptLedger(root, RUN, NODE)  # not asking for a chain: it continues one
        after.append(3, "after", [ReceiptEvent("next")])
        after.close()
        result = verify_receipt_ledger(v2.path)
        assert result.valid, (k, result.problems)
        assert {p.kind for p in result.problems} <= {"skipped_line"}
        lines = v2.path.read_bytes().split(b"\n")[:-1]
        seqs = [s for s in map(line_seq, lines) if s is not None]
        assert len(seqs) == len(set(seqs)), "a valid seq appears twice"
    finally:
        shutil.rmtree(root)


def test_module_functions_take_the_option(tmp_path: Path) -> None:
    root = tmp_path / "receipts"
    append_receipts(root, RUN, NODE, 1, "s", EV, hash_chain=True)
    append_receipts(root, RUN, NODE, 1, "s", EV)  # continues the chain
    summary = append_receipt(tmp_path, ReceiptDraft(RUN, NODE, 1, "s", "e"), hash_chain=True)
    assert summary.record_count == 1
    path = receipt_path_for_state_dir(tmp_path, RUN, NODE)
    assert verify_receipt_ledger(path).hashed_record_count == 1
    result = verify_receipt_ledger(append_receipts(root, RUN, NODE, 1, "s", EV).path)
    assert (result.valid, result.hashed_record_count) == (True, 3)


@pytest.mark.parametrize("value", [1, 0, "yes", None, 1.0])
def test_hash_chain_must_be_a_bool(root: Path, value: object) -> None:
    with pytest.raises(TypeError, match="hash_chain"):
        AttemptLedger(root, RUN, NODE, hash_chain=value)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="hash_chain"):
        append_receipts(root, RUN, NODE, 1, "s", EV, hash_chain=value)  # type: ignore[arg-type]
    assert not root.exists()


def test_a_pickled_ledger_keeps_the_option(root: Path) -> None:
    ledger = pickle.loads(pickle.dumps(AttemptLedger(root, RUN, NODE, hash_chain=True)))
    assert ledger.hash_chain
    ledger.append(1, "s", EV)
    assert verify_receipt_ledger(ledger.path).hashed_record_count == 1
