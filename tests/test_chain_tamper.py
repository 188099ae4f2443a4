"""Schema v2: every change to a valid ledger is caught; histories, crash points, the fast path,
hostile input and racing writers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attempt_ledger import (
    ReceiptEvent,
    ReceiptRecord,
    _verify_chain,
    encode_chained_record,
    verify_receipt_ledger,
)
from attempt_ledger._chain import SKIPPED, FastJudge, judge_line, record_hash_of

from ._chain_model import (
    chain,
    fatal,
    kinds,
    last_valid_line,
    model_append,
    rehash,
    verify_bytes,
)
from .strategies import chain_histories, records, text


@settings(max_examples=25)
@given(history=chain_histories)
def test_mixed_histories_verify_as_the_model_says(tmp_path: Path, history: list) -> None:
    data = b""
    hashed = records = 0
    for kind, item in history:
        if kind == "junk":
            data += item
            continue
        chained = kind == "v2" or record_hash_of(last_valid_line(data) or b"") is not None
        data = model_append(data, item, v2=kind == "v2")
        records += len(item)
        hashed += len(item) if chained else 0
    result = verify_bytes(tmp_path, data)
    ends_in_junk = bool(history) and history[-1][0] == "junk"
    assert result.valid == (not ends_in_junk), result.problems
    assert (result.record_count, result.hashed_record_count) == (records, hashed)
    assert set(fatal(result)) <= {"trailing_junk"}
    if result.valid and hashed:
        assert result.root_hash == record_hash_of(last_valid_line(data) or b"")


SMALL_BATCHES = st.lists(
    st.builds(ReceiptEvent, st.sampled_from(["a", " b", "é"]), st.one_of(st.none(), text)),
    min_size=1,
    max_size=3,
)
TORN = st.sampled_from([b"", b'{"seq":9', b"\xff", b'{"version":2,"run_id":"r'])


def _crashed_then_appended(
    tmp_path: Path, history: list, batch: list[ReceiptEvent], torn: bytes, points: object
) -> None:
    before = b""
    for kind, item in history:
        before = before + item if kind == "junk" else model_append(before, item, v2=kind == "v2")
    before = chain(1, before) + torn  # hashed, then perhaps torn by an earlier crash
    written = model_append(before, batch)[len(before) :]
    for k in points(len(written)):  # type: ignore[operator]
        for tail in (b"", b"\0" * (len(written) - k)):
            after = model_append(before + written[:k] + tail, [ReceiptEvent("next")])
            result = verify_bytes(tmp_path, after)
            assert result.valid, (k, result.problems)
            assert set(kinds(result)) <= {"skipped_line"}


@given(history=chain_histories, batch=SMALL_BATCHES, torn=TORN, data=st.data())
def test_a_crash_point_of_a_v2_append_verifies_after_the_next(
    tmp_path: Path, history: list, batch: list[ReceiptEvent], torn: bytes, data: st.DataObject
) -> None:
    def points(size: int) -> list[int]:
        return [data.draw(st.integers(0, size)), size]

    _crashed_then_appended(tmp_path, history, batch, torn, points)


@pytest.mark.stress
@settings(max_examples=50)
@given(history=chain_histories, batch=SMALL_BATCHES, torn=TORN)
def test_every_crash_point_of_a_v2_append_verifies_after_the_next(
    tmp_path: Path, history: list, batch: list[ReceiptEvent], torn: bytes
) -> None:
    _crashed_then_appended(tmp_path, history, batch, torn, lambda size: range(size + 1))


# -- every single change to a valid v2 ledger is caught --------------------------------------------

VALID = chain(5)


@given(st.data())
def test_every_byte_flip_is_caught(tmp_path: Path, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(VALID) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda b: b != VALID[index]))
    changed = VALID[:index] + bytes([value]) + VALID[index + 1 :]
    assert not verify_bytes(tmp_path, changed).valid


@given(st.data())
def test_every_byte_deletion_is_caught(tmp_path: Path, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(VALID) - 2))
    assert not verify_bytes(tmp_path, VALID[:index] + VALID[index + 1 :]).valid


def test_deleting_the_final_newline_changes_no_record(tmp_path: Path) -> None:
    # The last record, without its newline, still parses on its own: every reader counts it.
    result = verify_bytes(tmp_path, VALID[:-1])
    assert result.valid
    assert result.root_hash == verify_bytes(tmp_path, VALID).root_hash


def test_every_line_swap_and_removal_is_caught(tmp_path: Path) -> None:
    lines = VALID.split(b"\n")[:-1]
    root = record_hash_of(lines[-1])
    for i in range(len(lines)):
        for j in range(i + 1, len(lines)):
            swapped = list(lines)
            swapped[i], swapped[j] = swapped[j], swapped[i]
            assert not verify_bytes(tmp_path, b"\n".join(swapped) + b"\n").valid
        removed = b"".join(line + b"\n" for k, line in enumerate(lines) if k != i)
        result = verify_bytes(tmp_path, removed, expected_root_hash=root)
        assert not result.valid
        # Only the last line's removal needs the root hash: the rest is a valid shorter chain.
        assert verify_bytes(tmp_path, removed).valid == (i == len(lines) - 1)


# -- the fast path judges as the slow path ----------------------------------------------------


INSERTS = [b" ", b"\\", b'"', b"\xff", b"-", b"0", b"e", b"{}", b',"seq":1', b"\\u00e9"]


def _mutations(line: bytes) -> st.SearchStrategy[bytes]:
    index = st.integers(0, len(line) - 1)
    return st.one_of(
        st.just(line),
        st.tuples(index, st.integers(0, 255)).map(
            lambda t: line[: t[0]] + bytes([t[1]]) + line[t[0] + 1 :]
        ),
        index.map(lambda i: line[:i] + line[i + 1 :]),
        st.tuples(
            index, st.sampled_from([b" ", b"\\", b'"', b"\xff", b"-", b"0", b"e", b"{}"])
        ).map(lambda t: line[: t[0]] + t[1] + line[t[0] :]),
    )


@given(
    st.data(),
    records.map(lambda r: attrs.evolve(r, version=2)),
    st.one_of(st.none(), st.just("ab" * 32)),
)
def test_fast_path_agrees_with_the_slow_path(
    data: st.DataObject, record: ReceiptRecord, prev: str | None
) -> None:
    line = encode_chained_record(record, prev)[0][:-1]
    changed = data.draw(_mutations(line))
    fast = FastJudge()
    for candidate in (line, changed, changed):  # the second time, with the head cached
        judged = fast.judge(candidate)
        if judged is not None:
            assert judged == judge_line(candidate)
    assert fast.judge(line) == judge_line(line)  # canonical lines take the fast path


# -- hostile input, racing writers ------------------------------------------------------------


def test_numbers_out_of_range_or_too_long_for_int(tmp_path: Path) -> None:
    # int() refuses over 4300 digits: the fast path must not raise where the scanner refuses.
    line = chain(1).split(b"\n")[0]
    for field in (b'"seq":1,', b'"attempt":0,', b'"ts_ms":1700000000000,'):
        key = field.split(b":")[0]
        for digits in (b"18446744073709551616", b"4294967296", b"9" * 5000):
            changed = rehash(line.replace(field, key + b":" + digits + b","))
            fast = FastJudge().judge(changed)
            assert fast is None or fast == judge_line(changed)
            result = verify_bytes(tmp_path, changed + b"\n")
            if len(digits) > 20:
                assert judge_line(changed)[0] == SKIPPED
                assert fatal(result) == ["trailing_junk"]


def test_a_writer_appending_during_verification_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ledger.jsonl"
    data = chain(3)
    path.write_bytes(data)
    real_iter_lines = _verify_chain.iter_lines

    def racing(fd: int) -> Iterator[tuple[bytes | None, int]]:
        for index, item in enumerate(real_iter_lines(fd)):
            if index == 0:  # a writer appends a record and starts another while we read
                with path.open("ab") as f:
                    f.write(chain(2, data)[len(data) :] + b'{"version":2,"ru')
            yield item

    monkeypatch.setattr(_verify_chain, "iter_lines", racing)
    result = verify_receipt_ledger(path)
    assert (result.valid, result.record_count, result.problems) == (True, 3, ())
    assert result.root_hash == record_hash_of(data.split(b"\n")[-2])


def test_a_rollback_during_verification_is_no_torn_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ledger.jsonl"
    data = chain(3)
    path.write_bytes(data + b'{"version":2,"run_id"')  # an append in flight...
    real_iter_lines = _verify_chain.iter_lines

    def racing(fd: int) -> Iterator[tuple[bytes | None, int]]:
        for index, item in enumerate(real_iter_lines(fd)):
            if index == 0:
                os.truncate(path, len(data))  # ...that failed and was rolled back
            yield item

    monkeypatch.setattr(_verify_chain, "iter_lines", racing)
    assert verify_receipt_ledger(path).valid


@pytest.mark.parametrize(
    ("field", "value"),
    [("run_id", "a\ud800"), ("event_type", "\udfff"), ("payload", {"k": "\ud800"}), ("seq", -1)],
)
def test_encoder_refuses_what_utf8_or_the_format_cannot_hold(field: str, value: object) -> None:
    record = attrs.evolve(ReceiptRecord(2, "r", "n", 1, "s", 1, 2, "e", None), **{field: value})
    with pytest.raises(ValueError, match=r"UTF-8|seq|payload"):
        encode_chained_record(record, None)


def test_odd_ids_verify(tmp_path: Path) -> None:
    data, prev = b"", None
    odd = [("", "", ""), ("a\x00b", "\u2028", "é" * 10_000), ("\\", '"', "\n")]
    for seq, (run, node, session) in enumerate(odd, 1):
        record = ReceiptRecord(2, run, node, 0, session, seq, 2, " e ", {"": [None]})
        line, prev = encode_chained_record(record, prev)
        data += line
    result = verify_bytes(tmp_path, data)
    assert (result.valid, result.hashed_record_count) == (True, 3)
    for line in data.split(b"\n")[:-1]:
        assert FastJudge().judge(line) == judge_line(line)
