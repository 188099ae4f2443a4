"""The fast line encoder (orjson) writes the reference encoder's bytes, or declines."""

from __future__ import annotations

import enum
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attempt_ledger._codec import MAX_PAYLOAD_DEPTH, _check_payload, _dump_text, encode_tail
from attempt_ledger._fastjson import dump_plain
from attempt_ledger._floats import format_float

from .strategies import wide_payloads


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
