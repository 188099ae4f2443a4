"""Floats are written exactly as upstream (serde_json 1.0.149 / ryu) writes them."""

from __future__ import annotations

import json
import math
import re
import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from attempt_ledger import ReceiptRecord, encode_record
from attempt_ledger._codec import encode_payload
from attempt_ledger._floats import dump_json, format_float
from attempt_ledger._records import MAX_PAYLOAD_DEPTH

from .strategies import finite_floats, float_payloads, payloads

EDGE_CASES = [
    (1e16, "1e+16"),
    (9999999999999998.0, "9999999999999998.0"),
    (1e-5, "0.00001"),
    (9.999999999999999e-6, "9.999999999999999e-6"),
    (5e-324, "5e-324"),
    (1.7976931348623157e308, "1.7976931348623157e+308"),
    (-0.0, "-0.0"),
    (0.0, "0.0"),
    (0.1, "0.1"),
    (100.0, "100.0"),
    (1e22, "1e+22"),
    (1e21, "1e+21"),
    (1e-7, "1e-7"),
    (2.5e-300, "2.5e-300"),
    (1.5e-5, "0.000015"),
    (-1.5e-5, "-0.000015"),
    (9.99999e-5, "0.0000999999"),
    (1e-4, "0.0001"),
    (1.2345678901234568e17, "1.2345678901234568e+17"),
    (1e15, "1000000000000000.0"),
    (0.30000000000000004, "0.30000000000000004"),
    (-2.5e-9, "-2.5e-9"),
    (1e-10, "1e-10"),
]

FIXED = re.compile(r"-?(0|[1-9][0-9]*)\.[0-9]+")
EXPONENT = re.compile(r"-?[1-9](\.[0-9]*[1-9])?e[+-][1-9][0-9]*")


@pytest.mark.parametrize(("value", "text"), EDGE_CASES)
def test_edge_cases(value: float, text: str) -> None:
    assert format_float(value) == text
    assert _same_double(json.loads(text), value)


def _same_double(a: float, b: float) -> bool:
    return struct.pack("<d", a) == struct.pack("<d", b)


def _digits(text: str) -> str:
    """The significant digits of a float's text, without sign, point, exponent or padding."""
    mantissa = text.lstrip("-").partition("e")[0].replace(".", "")
    return mantissa.strip("0") or "0"


@given(finite_floats)
@example(1e-5)
@example(-0.0)
@example(5e-324)
def test_every_finite_double_reads_back_and_follows_the_rules(value: float) -> None:
    text = format_float(value)
    assert _same_double(float(text), value)
    assert _same_double(json.loads(text), value)
    assert _digits(text) == _digits(repr(value))  # the shortest digits, as repr's
    if value == 0 or 1e-5 <= abs(value) < 1e16:
        assert FIXED.fullmatch(text), text
    else:
        assert EXPONENT.fullmatch(text), text
        mantissa, _, exponent = text.partition("e")
        assert 1 <= abs(float(mantissa)) < 10
        assert _same_double(float(f"{mantissa}e{exponent}"), value)


def test_float_subclasses_are_written_by_value() -> None:
    class Score(float):
        def __repr__(self) -> str:
            return "not-this"

    assert format_float(Score(1e-6)) == "1e-6"
    assert encode_payload({"s": Score(2e-5)}) == '{"s":0.00002}'


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_not_json(value: float) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        format_float(value)
    with pytest.raises(ValueError, match="payload is not JSON"):
        encode_payload([1e-6, value])


def test_payload_encoding_uses_upstreams_floats() -> None:
    # Before: the C encoder's repr gave [1e-05,1e-07,1e+16].
    assert encode_payload([1e-5, 1e-7, 1e16]) == "[0.00001,1e-7,1e+16]"
    assert encode_payload({"b": -0.0, "a": "e-0", "c": 3e-9}) == '{"a":"e-0","b":-0.0,"c":3e-9}'
    record = ReceiptRecord(1, "r", "n", 1, "s", 1, 2, "e", {"x": 0.00001})
    assert encode_record(record).endswith(b'"payload":{"x":0.00001}}\n')


@given(st.one_of(payloads, float_payloads))
def test_fast_path_and_float_writer_agree(payload: object) -> None:
    text = encode_payload(payload)
    assert text == dump_json(payload)
    assert json.loads(text) == json.loads(json.dumps(payload))  # the same values


def test_deepest_payload_with_a_small_float_is_encoded() -> None:
    deep: object = 1e-7
    for depth in range(MAX_PAYLOAD_DEPTH):
        deep = {"k": deep} if depth % 2 else [deep]
    assert encode_payload(deep).count("1e-7") == 1


@pytest.mark.parametrize(("value", "text"), [(math.nan, "nan"), (-math.inf, "-inf")])
def test_non_finite_floats_get_the_stdlib_python_encoders_message(value: float, text: str) -> None:
    message = f"Out of range float values are not JSON compliant: {text}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        format_float(value)
