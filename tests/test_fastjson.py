"""The fast line encoder (orjson) writes the reference encoder's bytes, or declines."""

from __future__ import annotations

import enum
import json
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attempt_ledger._codec import _check_payload, _dump_text, encode_record, encode_tail
from attempt_ledger._fastjson import dump_plain
from attempt_ledger._floats import format_float
from attempt_ledger._lines import _load, line_seq
from attempt_ledger._records import MAX_PAYLOAD_DEPTH

from .strategies import records, wide_payloads


def reference(payload: object) -> bytes:
    return _dump_text(payload).encode("utf-8", "surrogatepass")


@given(wide_payloads)
def test_fast_bytes_are_the_reference_bytes(payload: object) -> None:
    assert _check_payload(payload)  # builtins only: the fast path's input
    fast = dump_plain(payload)
    assert fast is None or fast == reference(payload)
    assert encode_tail("e", payload) == b'"e","payload":%s}\n' % reference(payload)


@settings(max_examples=3000)
@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_every_finite_double_is_written_as_upstream_writes_it(bits: int) -> None:
    (value,) = struct.unpack("<d", bits.to_bytes(8, "little"))
    if not math.isfinite(value):
        assert dump_plain([value]) is None  # orjson writes null; the reference refuses
        return
    assert dump_plain(value) == format_float(value).encode()
    assert dump_plain({"a": [value, -value]}) == reference({"a": [value, -value]})


@pytest.mark.parametrize(
    "value",
    [
        0.0,
        -0.0,
        1e-5,
        1e-7,
        9.999999999999999e-5,
        1e-4,
        1e16,
        9999999999999998.0,
        1e20,
        100.0,
        5e-324,
        2.2250738585072014e-308,
        1.7976931348623157e308,
        0.1 + 0.2,
        123456789.125,
    ],
)
def test_float_boundaries(value: float) -> None:
    assert dump_plain([value, -value]) == reference([value, -value])


def test_deep_payloads_up_to_the_cap() -> None:
    deepest: object = [1e-7, "x\u2028", {"b": 1, "a": 2}]
    for level in range(MAX_PAYLOAD_DEPTH - 1):
        deepest = {"k": deepest} if level % 2 else [deepest]
    assert dump_plain(deepest) == reference(deepest)
    with pytest.raises(ValueError, match="nests more than"):
        encode_tail("e", [deepest])


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**40])
def test_ints_beyond_64_bits_are_written_by_the_reference_encoder(value: int) -> None:
    assert dump_plain({"n": value}) is None
    assert encode_tail("e", {"n": value}) == b'"e","payload":{"n":%d}}\n' % value


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_still_refused(value: float) -> None:
    assert dump_plain({"x": value}) is None
    with pytest.raises(ValueError, match="payload is not JSON"):
        encode_tail("e", {"x": value})


def test_lone_surrogates_are_still_refused() -> None:
    assert dump_plain({"k": "\udfff"}) is None
    with pytest.raises(ValueError, match="UTF-8"):
        encode_tail("e", {"\ud800": 1})


class Odd(int, enum.Enum):
    A = "5"  # an int 5 whose value is the str "5": orjson would write the value


class Items(dict):  # type: ignore[type-arg]
    def items(self):  # type: ignore[no-untyped-def, override]
        return [("z", 1)]


class Score(float):
    pass


@pytest.mark.parametrize(
    "payload", [Odd.A, {"n": Odd.A}, Items(a=2), [Score(1e-5)], {type("K", (str,), {})("k"): 1}]
)
def test_subclasses_take_the_reference_path(payload: object) -> None:
    assert not _check_payload(payload)
    assert encode_tail("e", payload) == b'"e","payload":%s}\n' % reference(payload)


# -- reading: a line's seq through orjson is the reference reader's ------------------------------


def reference_seq(line: bytes) -> int | None:
    obj = _load(line)  # the stdlib parser alone
    seq = obj.get("seq") if type(obj) is dict else None
    return seq if type(seq) is int and 0 <= seq <= 2**64 - 1 else None


_seqs = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)
_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def _json_lines(draw: st.DrawFn) -> bytes:
    members = draw(st.dictionaries(st.text(max_size=4), _values, max_size=3))
    members["seq"] = draw(_seqs)
    text = json.dumps(members, ensure_ascii=draw(st.booleans()), separators=(",", ":"))
    if draw(st.booleans()):  # a duplicate key: the last one counts, for both parsers
        text = text[:-1] + f',"seq":{json.dumps(draw(_seqs))}}}'
    return text.encode("utf-8", "surrogatepass")


@st.composite
def _mutated(draw: st.DrawFn, lines: st.SearchStrategy[bytes]) -> bytes:
    line = draw(lines)
    at = draw(st.integers(0, len(line)))
    cut = draw(st.integers(0, 4))
    junk = draw(
        st.sampled_from([b"", b"\x00", b" ", b"\\", b'"', b"}", b"{", b",", b"NaN", b"\xff"])
    )
    return line[:at] + junk + line[at + cut :]


_lines = st.one_of(
    records.map(lambda record: encode_record(record).rstrip(b"\n")),
    _json_lines(),
    st.binary(max_size=40),
)


@settings(max_examples=800)
@given(st.one_of(_lines, _mutated(_lines)))
def test_quick_seq_is_the_reference_seq(line: bytes) -> None:
    assert line_seq(line) == reference_seq(line)


@pytest.mark.parametrize(
    "line",
    [
        b'{"seq":1,"seq":2}',
        b'{"seq":18446744073709551616}',
        b'{"seq":18446744073709551615}',
        b'{"seq":-0}',
        b'{"seq":1e400}',
        b'{"a":NaN,"seq":1}',
        b'{"a":"\\ud800","seq":3}',
        b'{"a":1e999999,"seq":4}',
        b' \t{"seq":5} \r',
        b'\xef\xbb\xbf{"seq":6}',
    ],
)
def test_quick_seq_on_the_lines_where_the_parsers_differ(line: bytes) -> None:
    assert line_seq(line) == reference_seq(line)


def test_a_valid_line_is_read_without_the_stdlib_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    # The append's tail read after another writer's append (the two-process hand-over).
    import attempt_ledger._lines as lines_module

    def refuse(text: str) -> tuple[object, int]:
        raise AssertionError("the stdlib parser ran")

    line = b'{"version":1,"seq":7,"payload":{}}'
    monkeypatch.setattr(lines_module, "_raw_decode", refuse)
    assert line_seq(line) == 7
    with pytest.raises(AssertionError, match="stdlib parser"):
        line_seq(b'{"a":NaN,"seq":7}')  # orjson refuses: the reference decides
