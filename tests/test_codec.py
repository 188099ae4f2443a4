from __future__ import annotations

import json
import math
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attempt_ledger import RECEIPT_SCHEMA_VERSION, ReceiptEvent, ReceiptRecord, encode_record
from attempt_ledger._codec import (
    RUST_WHITESPACE,
    _payload_encoder,
    encode_payload,
    encode_tail,
    rust_trim,
)
from attempt_ledger._floats import dump_json
from attempt_ledger._lines import decode_record, line_seq, nests_too_deep
from attempt_ledger._records import MAX_LINE_DEPTH, MAX_PAYLOAD_DEPTH, converter

from .strategies import U64_MAX, payloads, records

FIELDS = [
    "version",
    "run_id",
    "node_id",
    "attempt",
    "session_id",
    "seq",
    "ts_ms",
    "event_type",
    "payload",
]


def _sorted_everywhere(value: object) -> bool:
    if isinstance(value, dict):
        keys = list(value)
        return keys == sorted(keys) and all(_sorted_everywhere(v) for v in value.values())
    if isinstance(value, list):
        return all(_sorted_everywhere(v) for v in value)
    return True


@given(records)
def test_record_line_round_trips(record: ReceiptRecord) -> None:
    line = encode_record(record)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert decode_record(line[:-1]) == record
    assert line_seq(line[:-1]) == record.seq


@given(records)
def test_line_format_is_compact_ordered_and_unescaped(record: ReceiptRecord) -> None:
    line = encode_record(record)
    text = line.decode("utf-8")
    obj = json.loads(text)
    assert list(obj) == FIELDS
    assert _sorted_everywhere(obj["payload"])
    # Compact separators and raw non-ASCII: exactly what json.dumps gives with those options
    # (floats aside: dump_json is the stdlib's loop with upstream's float writer).
    expected = (
        json.dumps({k: obj[k] for k in FIELDS[:-1]}, separators=(",", ":"), ensure_ascii=False)[:-1]
        + ',"payload":'
        + dump_json(obj["payload"])
        + "}\n"
    )
    assert text == expected


def test_converter_unstructures_in_field_order() -> None:
    record = ReceiptRecord(1, "r", "n", 2, "s", 3, 4, "e", {"b": 1, "a": 2})
    assert list(converter.unstructure(record)) == FIELDS


@given(payloads)
def test_fast_payload_encoder_matches_stdlib(payload: object) -> None:
    # The stdlib writes floats with repr; the ledger as upstream does (tests/test_floats.py).
    assert json.loads(encode_payload(payload)) == json.loads(_payload_encoder.encode(payload))


@pytest.mark.parametrize(
    "payload",
    [
        math.nan,
        {"x": math.inf},
        [-math.inf],
        {1: "a"},
        {"a": {None: 1}},
        {"a": object()},
        {1, 2},
        b"bytes",
    ],
)
def test_payloads_that_are_not_json_are_rejected(payload: object) -> None:
    with pytest.raises(ValueError, match="payload"):
        encode_payload(payload)


def test_circular_and_deep_payloads_are_rejected() -> None:
    circular: list[object] = []
    circular.append(circular)
    with pytest.raises(ValueError, match="circular"):
        encode_payload(circular)
    deep: object = 1
    for _ in range(sys.getrecursionlimit() * 2):
        deep = [deep]
    with pytest.raises(ValueError, match="nests more than"):
        encode_payload(deep)


def test_lone_surrogates_are_rejected() -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        encode_tail("\ud800", None)
    with pytest.raises(ValueError, match="UTF-8"):
        encode_tail("e", {"k": "\udfff"})


def test_rust_whitespace_is_the_unicode_white_space_property() -> None:
    # White_Space per the Unicode PropList; Python's str.isspace() adds U+001C..U+001F.
    white_space = {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()} - set(
        "\x1c\x1d\x1e\x1f"
    )
    assert set(RUST_WHITESPACE) == white_space
    assert unicodedata.category("\x1c") == "Cc"


@given(st.text(st.sampled_from([*RUST_WHITESPACE, "\x1c", "\x1f", "a", "é"])))
def test_rust_trim_matches_the_definition(raw: str) -> None:
    trimmed = rust_trim(raw)
    assert not trimmed or (trimmed[0] not in RUST_WHITESPACE and trimmed[-1] not in RUST_WHITESPACE)
    assert trimmed in raw
    start = raw.index(trimmed) if trimmed else len(raw)
    assert all(ch in RUST_WHITESPACE for ch in raw[:start])


def test_rust_trim_keeps_information_separators() -> None:
    assert rust_trim("\x1c start \x1f") == "\x1c start \x1f"
    assert rust_trim("\u3000\x85 start \u2029") == "start"


@pytest.mark.parametrize(
    ("line", "seq"),
    [
        (b'{"seq":5}', 5),
        (b' {"seq":0} \r', 0),
        (b'{"seq":18446744073709551615}', U64_MAX),
        (b'{"seq":18446744073709551616}', None),
        (b'{"seq":-1}', None),
        (b'{"seq":"5"}', None),
        (b'{"seq":5.0}', None),
        (b'{"seq":true}', None),
        (b'{"seq":5,"x":NaN}', None),
        (b'{"seq":5,"x":Infinity}', None),
        (b"[5]", None),
        (b"", None),
        (b'{"seq":5}\x00', None),
        (b'{"s\\u0065q":5}', 5),
        (b'\xef\xbb\xbf{"seq":5}', None),
        (b'{"seq":5,"t":"\xff"}', None),
        (b'{"seq":5} {"seq":6}', None),
    ],
)
def test_line_seq(line: bytes, seq: int | None) -> None:
    assert line_seq(line) == seq


@pytest.mark.parametrize(
    "change",
    [
        {"seq": "1"},
        {"seq": 1.0},
        {"attempt": True},
        {"attempt": 2**32},
        {"ts_ms": -1},
        {"run_id": 5},
        {"event_type": None},
        {"version": "1"},
    ],
)
def test_decode_record_never_coerces(change: dict[str, object]) -> None:
    good = dict(zip(FIELDS, [1, "r", "n", 1, "s", 1, 1, "e", None], strict=True))
    assert decode_record(json.dumps(good).encode()) is not None
    assert decode_record(json.dumps({**good, **change}).encode()) is None


def test_decode_record_needs_every_field_and_ignores_extra_keys() -> None:
    good = dict(zip(FIELDS, [1, "r", "n", 1, "s", 1, 1, "e", None], strict=True))
    assert decode_record(json.dumps({**good, "extra": [1]}).encode()) == ReceiptRecord(
        1, "r", "n", 1, "s", 1, 1, "e", None
    )
    for field in FIELDS:
        partial = {k: v for k, v in good.items() if k != field}
        assert decode_record(json.dumps(partial).encode()) is None


def test_encode_record_refuses_what_the_ledger_would_not_write() -> None:
    with pytest.raises(ValueError, match="version"):
        encode_record(ReceiptRecord(RECEIPT_SCHEMA_VERSION + 1, "r", "n", 1, "s", 1, 1, "e", None))
    with pytest.raises(ValueError, match="seq"):
        encode_record(ReceiptRecord(1, "r", "n", 1, "s", -1, 1, "e", None))
    with pytest.raises(ValueError, match="attempt"):
        encode_record(ReceiptRecord(1, "r", "n", True, "s", 1, 1, "e", None))


def _nested(levels: int) -> object:
    payload: object = 0
    for _ in range(levels):
        payload = [payload]
    return payload


@pytest.mark.parametrize("levels", [MAX_PAYLOAD_DEPTH - 1, MAX_PAYLOAD_DEPTH])
def test_payloads_as_deep_as_upstream_reads_are_written_and_read(levels: int) -> None:
    line = encode_payload(_nested(levels))
    record = ReceiptRecord(1, "r", "n", 0, "s", 1, 0, "e", json.loads(line))
    assert line_seq(encode_record(record)[:-1]) == 1


def test_payloads_deeper_than_upstream_reads_are_refused() -> None:
    # serde_json reads 127 nested containers: the line's object and 126 in its payload.
    assert MAX_PAYLOAD_DEPTH == 126
    for payload in (_nested(MAX_PAYLOAD_DEPTH + 1), {"a": _nested(MAX_PAYLOAD_DEPTH)}):
        with pytest.raises(ValueError, match="126"):
            encode_payload(payload)


@pytest.mark.parametrize(
    ("levels", "valid"),
    [(MAX_LINE_DEPTH - 1, True), (MAX_LINE_DEPTH, True), (MAX_LINE_DEPTH + 1, False)],
)
def test_lines_deeper_than_upstream_reads_are_not_valid(levels: int, valid: bool) -> None:
    line = b'{"seq":4,"x":' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"
    assert (line_seq(line) == 4) is valid
    # Brackets inside strings are not nesting.
    deep_text = b'{"seq":4,"x":"' + b"[{" * levels + b'\\"]"}'
    assert line_seq(deep_text) == 4


def _at_stack_depth(frames_left: int, function: Callable[[], object]) -> object:
    # Recurse until only ``frames_left`` frames remain below the recursion limit.
    depth = 0
    frame = sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back

    def descend(n: int) -> object:
        return function() if n <= 0 else descend(n - 1)

    return descend(sys.getrecursionlimit() - depth - frames_left)


def test_encoding_and_reading_do_not_depend_on_the_callers_stack() -> None:
    payload = _nested(MAX_PAYLOAD_DEPTH)
    shallow = encode_payload(payload)
    assert _at_stack_depth(40, lambda: encode_payload(payload)) == shallow
    record = ReceiptRecord(1, "r", "n", 0, "s", 9, 0, "e", payload)
    line = encode_record(record)[:-1]
    assert not nests_too_deep(line)
    assert _at_stack_depth(40, lambda: line_seq(line)) == 9
    assert _at_stack_depth(40, lambda: decode_record(line)) == record


def test_on_fresh_stack_returns_and_raises_what_the_function_does() -> None:
    import threading

    from attempt_ledger._lines import on_fresh_stack

    assert on_fresh_stack(lambda n: (n, threading.current_thread().name), 7) == (
        7,
        "attempt-ledger-fresh-stack",  # named, for whoever looks at a stuck process's threads
    )
    error = ValueError("bad")

    def fail(_: object) -> None:
        raise error

    with pytest.raises(ValueError, match=r"^bad$") as info:
        on_fresh_stack(fail, None)
    assert info.value is error


@pytest.mark.parametrize(
    ("prefix", "could"),
    [
        (b"", True),  # too short to tell
        (b" \t\r", True),
        (b"{", True),
        (b'{ \t"a', True),  # whitespace after the brace is skipped
        (b"{}", True),
        (b'{\x0c"a', False),  # form feed is whitespace to Python, not to JSON
        (b"{\n", False),
        (b"{X", False),
        (b"[", False),
        (b' x{"', False),
    ],
)
def test_could_open_object(prefix: bytes, could: bool) -> None:
    from attempt_ledger._lines import could_open_object

    assert could_open_object(prefix) is could


def test_brackets_only_inside_strings_do_not_nest() -> None:
    assert not nests_too_deep(b'"' + b"[{" * MAX_LINE_DEPTH + b'"')


def test_check_expected_last_seq_names_the_wrong_type(tmp_path: Path) -> None:
    from attempt_ledger import InvalidEvent
    from attempt_ledger._codec import check_expected_last_seq

    for value, kind in (("3", "str"), (True, "bool"), (3.0, "float")):
        with pytest.raises(InvalidEvent, match=f"must be an int or None, not {kind}$"):
            check_expected_last_seq(tmp_path, value)


def test_check_expected_last_seq_takes_the_whole_u64_range(tmp_path: Path) -> None:
    from attempt_ledger import InvalidEvent
    from attempt_ledger._codec import check_expected_last_seq

    class Seq(int):
        pass

    for value in (0, 5, U64_MAX):
        assert check_expected_last_seq(tmp_path, value) == value
    passed_on = check_expected_last_seq(tmp_path, Seq(5))
    assert (type(passed_on), passed_on) == (int, 5)
    assert check_expected_last_seq(tmp_path, None) is None
    for value in (-1, U64_MAX + 1):
        with pytest.raises(
            InvalidEvent, match=f"expected_last_seq {value} is outside 0..{U64_MAX}"
        ):
            check_expected_last_seq(tmp_path, value)


@pytest.mark.parametrize(
    ("events", "index", "reason"),
    [
        ([ReceiptEvent("a"), "not an event"], 1, "expected a ReceiptEvent, got str"),
        ([ReceiptEvent("a"), ReceiptEvent(1)], 1, "event_type must be str, not int"),  # type: ignore[arg-type]
        ([ReceiptEvent("a", {1: 2})], 0, "payload has a non-string object key 1"),  # type: ignore[dict-item]
    ],
)
def test_encode_batch_names_the_first_bad_event(
    tmp_path: Path, events: list[object], index: int, reason: str
) -> None:
    from attempt_ledger import InvalidEvent
    from attempt_ledger._codec import encode_batch

    with pytest.raises(InvalidEvent) as info:
        encode_batch(tmp_path, "r", "n", 1, "s", events)  # type: ignore[arg-type]
    assert info.value.index == index
    assert reason in str(info.value)


def test_encode_batch_names_the_bad_event_of_a_generator(tmp_path: Path) -> None:
    from attempt_ledger import InvalidEvent
    from attempt_ledger._codec import encode_batch

    events = (event for event in [ReceiptEvent("a"), ReceiptEvent("b", float("nan"))])
    with pytest.raises(InvalidEvent) as info:
        encode_batch(tmp_path, "r", "n", 1, "s", events)
    assert info.value.index == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((5, "n", 1, "s"), "run_id must be str, not int"),
        (("r", b"n", 1, "s"), "node_id must be str, not bytes"),
        (("r", "n", 1, None), "session_id must be str, not NoneType"),
        (("r", "n", 1.0, "s"), "attempt must be int, not float"),
        (("r", "n", True, "s"), "attempt must be int, not bool"),
        (("r", "n", -1, "s"), "attempt -1 is outside 0..4294967295"),
        (("r", "n", 2**32, "s"), "attempt 4294967296 is outside 0..4294967295"),
    ],
)
def test_check_ids_names_the_first_wrong_field(args: tuple[object, ...], message: str) -> None:
    from attempt_ledger._codec import check_ids

    with pytest.raises(ValueError, match=f"^{message}$"):
        check_ids(*args)


def test_check_ids_takes_the_edges_and_subclasses() -> None:
    from attempt_ledger._codec import check_ids

    class Text(str):
        pass

    class Number(int):
        pass

    for args in (("r", "n", 0, "s"), ("r", "n", 2**32 - 1, "s"), (Text("r"), "n", Number(1), "s")):
        check_ids(*args)  # does not raise


def test_a_payload_the_c_encoder_returns_in_several_pieces_is_joined_as_is() -> None:
    # CPython 3.11's C encoder hands back a long output in chunks; they join with nothing.
    payload = list(range(100_000))
    assert encode_payload(payload) == json.dumps(payload, separators=(",", ":"))


# -- the hot path's shortcuts: a flat payload, a repeated event type ------------------------------

flat_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # past 64 bits too: orjson declines those, the reference writes them
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.sampled_from('\x00\x1f\x7f\u2028"\\é\U0001f600e-0null')),
)


def _reference_tail(event_type: str, payload: object) -> bytes:
    return b'"%s","payload":%s}\n' % (
        rust_trim(event_type).encode(),
        encode_payload(payload).encode(),
    )


@given(st.dictionaries(st.text(max_size=8), flat_scalars, max_size=6))
def test_a_flat_payload_is_written_as_the_reference_writes_it(payload: dict[str, object]) -> None:
    assert encode_tail("e", payload) == _reference_tail("e", payload)


_non_finite = st.sampled_from([math.nan, -math.nan, math.inf, -math.inf])


@given(st.dictionaries(st.text(max_size=4), st.one_of(_non_finite, st.floats(), flat_scalars)))
def test_a_flat_payload_is_refused_exactly_when_it_holds_nan_or_infinity(
    payload: dict[str, object],
) -> None:
    if all(not isinstance(v, float) or math.isfinite(v) for v in payload.values()):
        assert encode_tail("e", payload) == _reference_tail("e", payload)
    else:
        with pytest.raises(ValueError, match="payload is not JSON"):
            encode_tail("e", payload)


def test_a_flat_payload_needs_no_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    import attempt_ledger._codec as codec_module

    def walk(payload: object) -> bool:
        raise AssertionError("walked")

    monkeypatch.setattr(codec_module, "_check_payload", walk)
    assert encode_tail("e", {"b": 1.5, "a": None, "c": "x"}) == (
        b'"e","payload":{"a":null,"b":1.5,"c":"x"}}\n'
    )


@pytest.mark.parametrize(
    "payload",
    [{"x": math.nan}, {"x": math.inf}, {"a": 1, "x": -math.inf}, {"x": 1e308 * 10}],
)
def test_a_flat_payload_holding_nan_or_infinity_is_refused(payload: object) -> None:
    with pytest.raises(ValueError, match="payload is not JSON"):
        encode_tail("e", payload)


class _Score(float):
    pass


class _Key(str):
    pass


@pytest.mark.parametrize(
    "payload",
    [{"s": _Score(1e-5)}, {"s": _Score(math.nan)}, {_Key("k"): 1}, {"k": _Key("v")}, {"b": 2**64}],
)
def test_a_flat_payload_with_subclasses_or_big_ints_takes_the_reference_path(
    payload: dict[str, object],
) -> None:
    if any(isinstance(v, float) and not math.isfinite(v) for v in payload.values()):
        with pytest.raises(ValueError, match="payload"):
            encode_tail("e", payload)
    else:
        assert encode_tail("e", payload) == _reference_tail("e", payload)


def test_a_flat_payload_with_a_key_that_is_not_a_str_is_refused() -> None:
    with pytest.raises(ValueError, match="non-string object key"):
        encode_tail("e", {"a": 1, 2: 3})


class _Liar(str):
    """A str that says it equals any str, and hashes like "a"."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("a")


def test_a_repeated_event_type_is_written_the_same() -> None:
    first = encode_tail("\u3000start\x85", 1)
    assert first == encode_tail("\u3000start\x85", 1) == b'"start","payload":1}\n'


def test_an_event_type_subclass_is_never_taken_for_a_cached_one() -> None:
    encode_tail("a", 1)  # cached
    assert encode_tail(_Liar("b"), 1) == b'"b","payload":1}\n'
    assert encode_tail("a", 1) == b'"a","payload":1}\n'


def test_the_event_type_cache_is_bounded() -> None:
    import attempt_ledger._codec as codec_module

    for n in range(codec_module._EVENT_TYPES_KEPT * 2 + 3):
        assert encode_tail(f"type-{n}", None) == b'"type-%d","payload":null}\n' % n
        assert len(codec_module._event_types) <= codec_module._EVENT_TYPES_KEPT


def test_a_long_event_type_is_not_kept() -> None:
    import attempt_ledger._codec as codec_module

    for long in ("x" * (codec_module._EVENT_TYPE_KEPT_CHARS + 1), "y" * 1_000_000):
        assert encode_tail(long, None) == b'"%s","payload":null}\n' % long.encode()
        assert long not in codec_module._event_types
    short = "z" * codec_module._EVENT_TYPE_KEPT_CHARS
    encode_tail(short, None)
    assert short in codec_module._event_types


def test_an_event_type_that_cannot_be_encoded_is_refused_every_time() -> None:
    for _ in range(2):
        with pytest.raises(ValueError, match="UTF-8"):
            encode_tail("\ud800", None)


# Tests asked for by the mutation run of the hot path's shortcuts (CONTRIBUTING.md).


def test_a_repeated_event_type_is_taken_from_the_cache_not_quoted_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import attempt_ledger._codec as codec_module

    monkeypatch.setattr(codec_module, "_event_types", {})
    assert encode_tail(" cached\t", 1) == b'"cached","payload":1}\n'
    assert codec_module._event_types == {" cached\t": b'"cached"'}

    def quote(text: str) -> str:
        raise AssertionError(f"quoted {text!r} again")

    monkeypatch.setattr(codec_module, "_quote", quote)
    assert encode_tail(" cached\t", 2) == b'"cached","payload":2}\n'


def test_a_payload_the_c_encoder_writes_as_the_reference_does_skips_the_slow_writer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import attempt_ledger._codec as codec_module

    def slow(payload: object) -> str:
        raise AssertionError("the slow writer ran")

    monkeypatch.setattr(codec_module, "dump_json", slow)
    assert encode_payload({"b": [1, 2.5, "é"], "a": None}) == '{"a":null,"b":[1,2.5,"é"]}'


@pytest.mark.parametrize("attributes", [{"event_type": "a"}, {"payload": 1}])
def test_encode_batch_names_an_event_missing_either_attribute(
    tmp_path: Path, attributes: dict[str, object]
) -> None:
    from types import SimpleNamespace

    from attempt_ledger import InvalidEvent
    from attempt_ledger._codec import encode_batch

    events = [ReceiptEvent("a"), SimpleNamespace(**attributes)]
    with pytest.raises(InvalidEvent) as info:
        encode_batch(tmp_path, "r", "n", 1, "s", events)  # type: ignore[arg-type]
    assert info.value.index == 1
    assert "expected a ReceiptEvent, got SimpleNamespace" in str(info.value)


def test_an_empty_append_that_expected_another_last_seq_names_both(tmp_path: Path) -> None:
    from attempt_ledger import SeqConflict
    from attempt_ledger._codec import empty_append

    with pytest.raises(SeqConflict) as info:
        empty_append(tmp_path, 3, 5)
    assert (info.value.path, info.value.expected, info.value.actual) == (tmp_path, 5, 3)
    assert "expected last seq 5, found 3" in str(info.value)
    summary = empty_append(tmp_path, 3, 3)
    assert (summary.path, summary.seq, summary.record_count) == (tmp_path, 3, 0)


def test_a_nested_payload_of_builtin_types_is_written_by_orjson(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import attempt_ledger._codec as codec_module

    def reference(payload: object) -> str:
        raise AssertionError("the reference encoder ran")

    monkeypatch.setattr(codec_module, "_dump_text", reference)
    assert encode_tail("e", {"b": [1, {"c": 2.5}], "a": "x"}) == (
        b'"e","payload":{"a":"x","b":[1,{"c":2.5}]}}\n'
    )


def test_a_payload_too_deep_is_refused_with_the_whole_reason() -> None:
    reason = (
        f"^payload nests more than {MAX_PAYLOAD_DEPTH} containers \\(or is circular\\); "
        "the upstream reader could not read it$"
    )
    with pytest.raises(ValueError, match=reason):
        encode_tail("e", _nested(MAX_PAYLOAD_DEPTH + 1))


def test_a_payload_of_a_type_json_lacks_names_the_type() -> None:
    for payload, kind in (({"a": {1, 2}}, "set"), ([b"x"], "bytes")):
        with pytest.raises(ValueError, match=f"^payload holds a {kind}, which is not JSON$"):
            encode_tail("e", payload)


def test_a_batch_given_as_a_list_is_encoded_without_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import attempt_ledger._codec as codec_module
    from attempt_ledger._codec import encode_batch

    class CopyRefused(type):
        # Stands for `list` in the module: still the type a list is an instance of, but
        # calling it (copying) fails.
        def __instancecheck__(cls, value: object) -> bool:
            return isinstance(value, list)

        def __call__(cls, *args: object) -> object:
            raise AssertionError("copied")

    class NoCopy(metaclass=CopyRefused):
        pass

    monkeypatch.setattr(codec_module, "list", NoCopy, raising=False)
    batch = encode_batch(tmp_path, "r", "n", 1, "s", [ReceiptEvent("a"), ReceiptEvent("b", 2)])
    assert batch.tails == [b'"a","payload":null}\n', b'"b","payload":2}\n']


def test_check_ids_of_subclasses_takes_the_same_attempt_range() -> None:
    # Subclasses miss the fast path's test: the checks after it must draw the same edges.
    from attempt_ledger._codec import check_ids

    class Text(str):
        pass

    class Number(int):
        pass

    for attempt in (0, 2**32 - 1):
        check_ids(Text("r"), "n", attempt, "s")  # does not raise
        check_ids("r", "n", Number(attempt), "s")
    for attempt in (-1, 2**32):
        with pytest.raises(ValueError, match=f"^attempt {attempt} is outside 0..4294967295$"):
            check_ids(Text("r"), "n", attempt, "s")


@pytest.mark.parametrize("payload", [{"a": [math.nan]}, {"k": 1, "a": {"b": -math.inf}}])
def test_a_payload_holding_nan_below_its_top_level_is_refused(payload: object) -> None:
    # Not flat: the shortcut must leave it to the general path, which finds the NaN.
    with pytest.raises(ValueError, match="payload is not JSON"):
        encode_tail("e", payload)
