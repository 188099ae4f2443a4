"""Judging lines (attempt_ledger/_lines.py): what the mutation run of the module asked for.

The older tests of these functions (round trips, depth limits, ``could_open_object``'s cases,
validity at any stack depth) are in tests/test_codec.py, from before the module was split out
of ``_codec``.
"""

from __future__ import annotations

import json

import pytest

from attempt_ledger._lines import could_open_object, decode_record, line_seq, nests_too_deep
from attempt_ledger._records import MAX_LINE_DEPTH


@pytest.mark.parametrize("space", [b"\x0b", b"\x0c", b"\n", b"\x1c"])
def test_only_json_whitespace_may_come_before_the_brace(space: bytes) -> None:
    # Python's whitespace is wider than JSON's (space, tab, CR; a line holds no LF).
    assert could_open_object(space + b"{") is False
    assert could_open_object(b" \t\r{") is True


def test_depth_is_the_deepest_nesting_not_the_number_of_brackets() -> None:
    # Exactly as deep as upstream reads, with more brackets than that beside the deepest: valid.
    deep = b"[" * (MAX_LINE_DEPTH - 1) + b"]" * (MAX_LINE_DEPTH - 1)
    line = b'{"seq":4,"x":' + deep + b',"y":[[],{}]}'
    assert line.count(b"[") + line.count(b"{") > MAX_LINE_DEPTH
    assert not nests_too_deep(line)
    assert line_seq(line) == 4
    assert nests_too_deep(line.replace(b'"x":[', b'"x":[[', 1).replace(b"]]", b"]]]", 1))


def test_a_record_keeps_ints_beyond_64_bits_exact() -> None:
    # The quick parser (orjson) gives such ints as floats: a record is read by the reference's.
    big = {"up": 2**70, "down": -(2**63) - 1}
    fields = {"version": 1, "run_id": "r", "node_id": "n", "attempt": 1, "session_id": "s"}
    line = json.dumps({**fields, "seq": 1, "ts_ms": 0, "event_type": "e", "payload": big})
    record = decode_record(line.encode())
    assert record is not None
    assert record.payload == big
    assert all(type(value) is int for value in record.payload.values())  # type: ignore[union-attr]
    assert line_seq(line.encode()) == 1
