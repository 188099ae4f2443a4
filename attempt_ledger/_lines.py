"""Deciding what a line of a ledger file is: valid for seq purposes (a JSON object, nested no
deeper than upstream reads, with an integer ``seq``), and a well-typed record.

Every reader and the append judge lines here, the same way from any stack depth.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from itertools import accumulate
from typing import TypeVar

from ._fastjson import load_quick
from ._records import MAX_LINE_DEPTH, U64_MAX, ReceiptRecord, converter


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)


_T = TypeVar("_T")
_A = TypeVar("_A")


def on_fresh_stack(function: Callable[[_A], _T], argument: _A) -> _T:
    """Return ``function(argument)`` computed in a new thread, which starts with an empty stack.

    The C JSON encoder and decoder recurse once per nesting level and count against the
    caller's recursion limit; a line's validity must not depend on how deep the caller is, so
    a :class:`RecursionError` is retried here (rarely: only from deep stacks).
    """
    outcome: list[_T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(function(argument))
        except BaseException as error:  # handed back to the caller's thread
            failure.append(error)

    thread = threading.Thread(target=run, name="attempt-ledger-fresh-stack")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


_SPACE = b" \t\r"


def could_open_object(prefix: bytes) -> bool:
    """Return False when no line that starts with ``prefix`` can be a JSON object.

    An object opens with ``{`` and then a key's ``"`` or the closing ``}``, whitespace allowed
    around both; a prefix too short to tell returns True.
    """
    rest = prefix.lstrip(_SPACE)
    if not rest:
        return True
    if rest[0] != 0x7B:
        return False
    rest = rest[1:].lstrip(_SPACE)
    return not rest or rest[0] in b'"}'


# A JSON string, escapes included; what is left of a line without them is its structure.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(set(range(256)) - set(b"[]{}"))
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def nests_too_deep(line: bytes) -> bool:
    """Return whether the containers of ``line`` nest deeper than :data:`MAX_LINE_DEPTH`.

    Brackets inside strings do not count. Computed without recursion, so that the answer does
    not depend on the caller's stack.
    """
    if line.count(b"[") + line.count(b"{") <= MAX_LINE_DEPTH:  # the common case, in C
        return False
    brackets = _STRING.sub(b"", line).translate(None, _NOT_BRACKET)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > MAX_LINE_DEPTH


def _raw_decode(text: str) -> tuple[object, int]:
    return _decoder.raw_decode(text)


def _load(line: bytes, quick: bool = False) -> object:
    # Cheap refusals first, so that scanning garbage does not decode it.
    if not could_open_object(line[:64]) or not line.rstrip(_SPACE).endswith(b"}"):
        return None
    # Deeper than upstream can read is not a line, whatever this interpreter could parse.
    if nests_too_deep(line):
        return None
    if quick:  # orjson accepts no line the reference refuses; only the seq is taken from it
        obj = load_quick(line)
        if obj is not None:
            return obj
    try:
        # raw_decode skips decode()'s whitespace regexes; JSON's own whitespace is stripped here.
        text = line.decode("utf-8").strip(" \t\r")
        try:
            obj, end = _raw_decode(text)
        except RecursionError:  # the line is shallow, so the caller's stack is deep
            obj, end = on_fresh_stack(_raw_decode, text)
    except (UnicodeDecodeError, ValueError):
        return None
    return obj if end == len(text) else None


def line_seq(line: bytes) -> int | None:
    """Return the seq of a complete line (without its ``\\n``), or ``None`` if it is not valid.

    A valid line is UTF-8 text holding one JSON object whose ``seq`` is an int (not a bool,
    float or string) in ``0..2**64-1``.
    """
    obj = _load(line, quick=True)
    if type(obj) is not dict:
        return None
    seq = obj.get("seq")
    if type(seq) is int and 0 <= seq <= U64_MAX:
        return seq
    return None


def decode_record(line: bytes) -> ReceiptRecord | None:
    """Return the record a complete line holds, or ``None`` if it is not a well-typed record.

    Unknown keys are ignored; ints are never coerced from strings, floats or bools.
    """
    obj = _load(line)
    if type(obj) is not dict:
        return None
    try:
        return converter.structure(obj, ReceiptRecord)
    except (TypeError, ValueError, KeyError):
        return None
