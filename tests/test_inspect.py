"""What ``show`` and ``tail`` print, for every record the reader accepts, in bounded memory."""

from __future__ import annotations

import io
import json
import os
import tracemalloc
from pathlib import Path

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from attempt_ledger import AttemptLedger, ReceiptEvent
from attempt_ledger._inspect import last_records, print_rows, record_row
from attempt_ledger._lines import decode_record
from attempt_ledger._records import ReceiptRecord
from tests.strategies import U64_MAX, file_contents, records

# Strings as JSON can spell them: lone surrogates ("\ud800") and control characters included.
any_text = st.text(max_size=12)
any_payload = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), any_text),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(any_text, children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def accepted_lines(draw: st.DrawFn) -> bytes:
    """Lines the reader may accept that the writer would never write."""
    fields = attrs.asdict(draw(records))
    fields["session_id"] = draw(any_text)
    fields["event_type"] = draw(any_text)
    fields["ts_ms"] = draw(st.one_of(st.just(U64_MAX), st.integers(0, U64_MAX)))
    fields["payload"] = None
    payload = json.dumps(draw(any_payload), sort_keys=True)  # \ud800 stays an escape
    payload = draw(st.sampled_from([payload, "1e400", "[-1e400,1e400]", '{"x":1E999}']))
    depth = draw(st.sampled_from([0, 0, 513, 700]))
    payload = "[" * depth + payload + "]" * depth
    line = json.dumps(fields).replace('"payload": null', f'"payload": {payload}')
    return line.encode()


@given(accepted_lines())
def test_every_accepted_record_prints(line: bytes) -> None:
    record = decode_record(line)
    assume(record is not None)
    assert record is not None
    out = io.StringIO()
    assert print_rows([record_row(record)], out) == 1
    text = out.getvalue()
    text.encode("utf-8")  # what stdout must be able to write, in any locale
    assert text.count("\n") == 2  # the header and one row: nothing in a cell breaks the line


def test_dates_past_the_year_9999_print_as_milliseconds() -> None:
    record = decode_record(
        b'{"version":1,"run_id":"r","node_id":"n","attempt":1,"session_id":"s","seq":1,'
        b'"ts_ms":18446744073709551615,"event_type":"e","payload":[1e400,"\\ud800\\u001b"]}'
    )
    assert record is not None
    row = record_row(record)
    assert row[1] == "ts_ms 18446744073709551615"
    assert row[5] == "-"  # unhashed
    assert row[6] == '[Infinity,"\\ud800\\u001b"]'
    limit = decode_record(record_line(253402300799999))
    assert limit is not None
    assert record_row(limit)[1] == "9999-12-31T23:59:59.999Z"
    epoch = decode_record(record_line(0))
    assert epoch is not None
    assert record_row(epoch)[1] == "1970-01-01T00:00:00.000Z"


def record_line(ts_ms: int) -> bytes:
    return (
        b'{"version":1,"run_id":"r","node_id":"n","attempt":1,"session_id":"s","seq":1,'
        b'"ts_ms":%d,"event_type":"e","payload":null}' % ts_ms
    )


MIB = 1 << 20


def _garbage(size: int) -> bytes:
    # Random bytes (raw control bytes, newlines now and then), NUL runs, lines that end like an
    # object but cannot be one: what a scan back must drop as it reads.
    pieces, total = [], 0
    while total < size:
        for piece in (os.urandom(64 * 1024), b"\x00" * 64 * 1024, b"x}\n" * 10):
            pieces.append(piece)
            total += len(piece)
    return b"".join(pieces)


def test_tail_over_a_large_garbage_tail_holds_no_more_than_a_block(root: Path) -> None:
    ledger = AttemptLedger(root, "run", "node")
    ledger.append(1, "s", [ReceiptEvent("early")])
    with ledger.path.open("ab") as f:
        f.write(b"\n" + _garbage(32 * MIB) + b"\n")
    ledger.append(1, "s", [ReceiptEvent("e", {"i": i}) for i in range(3)])
    with ledger.path.open("ab") as f:
        f.write(b"\n" + _garbage(32 * MIB))
    tracemalloc.start()
    try:
        last = last_records(ledger.path, 3)
        _, three = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        every = last_records(ledger.path, 10)  # all four: back over all the garbage
        _, four = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r.seq for r, _ in last] == [2, 3, 4]
    assert [r.seq for r, _ in every] == [1, 2, 3, 4]
    assert all(json.loads(line)["seq"] == record.seq for record, line in every)
    assert max(three, four) < MIB, (three, four)


@given(file_contents, st.integers(min_value=1, max_value=40), st.lists(records, max_size=3))
def test_reading_back_finds_what_reading_forward_finds(
    tmp_path_factory: pytest.TempPathFactory,
    content: bytes,
    block: int,
    extra: list[ReceiptRecord],
) -> None:
    from attempt_ledger._codec import encode_record
    from attempt_ledger._reader import lines_backward

    # Garbage and seq lines, with records among them; the last may lack its newline.
    lines = content.split(b"\n") + [encode_record(r)[:-1] for r in extra]
    data = b"\n".join(lines)
    path = tmp_path_factory.mktemp("back") / "ledger.jsonl"
    path.write_bytes(data)
    forward = [r for r in map(decode_record, data.split(b"\n")) if r is not None]
    fd = os.open(path, os.O_RDONLY)
    try:
        backward = [decode_record(line) for line in lines_backward(fd, len(data), block)]
    finally:
        os.close(fd)
    assert [r for r in reversed(backward) if r is not None] == forward
    assert [r for r, _ in last_records(path, len(forward) + 1)] == forward


def test_ls_skips_a_ledger_removed_while_listing(tmp_path: Path) -> None:
    # A ledger removed between the listing and its size (prune running meanwhile) made `ls`
    # fail with "cannot read the ledger: No such file" (exit 3).
    from attempt_ledger import remove_ledger
    from attempt_ledger._inspect import ledger_summaries

    for node in ("m", "n"):
        AttemptLedger(tmp_path, "a", node).append(1, "s", [ReceiptEvent("e")])
    summaries = ledger_summaries(tmp_path)
    assert next(summaries)["node"] == "m"
    assert remove_ledger(tmp_path, "a", "n").ledgers
    assert list(summaries) == []
