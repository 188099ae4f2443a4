"""The line encoder's fast path: orjson, wherever its bytes are the reference encoder's.

orjson sorts keys (``OPT_SORT_KEYS``, by code point, as ``sort_keys=True`` does), leaves
non-ASCII and U+2028 raw, escapes control characters as the stdlib does, and writes floats as
upstream's ``serde_json`` does (the digits of ``repr`` in ryu's notation: what
:func:`attempt_ledger._floats.format_float` writes). It differs where it declines, and the
reference encoder (``_codec``) then encodes: ints beyond 64 bits and lone surrogates (refused),
NaN and infinities (written as ``null``), and subclasses of the builtin types (which the caller
never hands it: enums would be written by value, a ``dict`` subclass by its storage).
"""

from __future__ import annotations

import orjson

_OPTIONS = orjson.OPT_SORT_KEYS


def dump_plain(payload: object) -> bytes | None:
    """Return the JSON bytes of a checked payload made of builtin types only (no subclasses),
    or ``None`` where orjson's bytes might not be the reference encoder's.
    """
    data = dump_finite(payload)
    # NaN and infinities come out as null: let the reference encoder refuse them (a payload
    # holding None, or "null" in a string, takes that path too; same bytes, a little slower).
    return None if data is None or b"null" in data else data


def dump_finite(payload: object) -> bytes | None:
    """:func:`dump_plain` for a payload known to hold no float NaN or infinite: its bytes need
    no scan for the ``null`` orjson writes for them.
    """
    try:
        return orjson.dumps(payload, option=_OPTIONS)
    except orjson.JSONEncodeError:  # an int beyond 64 bits, a lone surrogate
        return None


def load_quick(line: bytes) -> object:
    """Return orjson's parse of ``line``, or ``None`` where orjson refuses it.

    orjson refuses every text the stdlib's parser refuses (it follows RFC 8259 strictly) and
    more (NaN and Infinity, lone surrogate escapes, numbers beyond a double's range), so a line
    it accepts is one the reference reader accepts, with the same keys and the same ints up to
    64 bits; larger ints come back as floats, so only a line's ``seq`` may be taken from it.
    """
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
