"""The line format: validating and encoding receipts (reading them back is :mod:`._lines`).

A line is one compact JSON object terminated by ``\\n``: UTF-8, non-ASCII not escaped, top-level
keys in :class:`ReceiptRecord` field order, payload object keys sorted at every depth (what the
seed's ``serde_json`` writes). Everything a batch writes except ``seq`` and ``ts_ms`` is encoded
and checked before the lock is taken, so a rejected batch never touches the file and the
critical section only joins bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ._errors import InvalidEvent, SeqConflict
from ._fastjson import dump_finite, dump_plain
from ._floats import REPR_DIFFERS, dump_json
from ._lines import on_fresh_stack
from ._records import (
    MAX_PAYLOAD_DEPTH,
    RECEIPT_SCHEMA_VERSION,
    U32_MAX,
    U64_MAX,
    AppendSummary,
    ReceiptEvent,
    ReceiptRecord,
)

# Rust's `str::trim` strips the Unicode White_Space property; Python's `str.strip()` also strips
# U+001C..U+001F, which are not White_Space, so the set is spelled out.
RUST_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

_JSON_SCALARS = (str, int, float, bool, type(None))
_EXACT_SCALARS = frozenset(_JSON_SCALARS)
# What the fast encoder may be given: builtin JSON types themselves, no subclasses.
_PLAIN = _EXACT_SCALARS | {dict, list, tuple}


def rust_trim(text: str) -> str:
    """Trim ``text`` exactly as Rust's ``str::trim`` does."""
    return text.strip(RUST_WHITESPACE)


_payload_encoder = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=True
)
# JSONEncoder.encode builds a C encoder on every call, which costs more than encoding a small
# payload; build it once when this interpreter has one. Same arguments, same output.
_make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encoder = (
    _make_c_encoder(
        None,
        _payload_encoder.default,
        json.encoder.encode_basestring,
        None,
        ":",
        ",",
        True,
        False,
        False,
    )
    if _make_c_encoder is not None
    else None
)
# JSON string literal of a str, non-ASCII kept: what json.dumps(text, ensure_ascii=False) gives.
_quote: Callable[[str], str] = json.encoder.encode_basestring


def _dump_payload(payload: object) -> str:
    # The C encoder writes floats with repr, which is upstream's text unless REPR_DIFFERS shows
    # (a float in 1e-9 <= |x| < 1e-4, or a string holding "e-0"): only then the slow writer.
    if _c_encoder is not None:
        text = "".join(_c_encoder(payload, 0))
        return text if REPR_DIFFERS not in text else dump_json(payload)
    return dump_json(payload)  # pragma: no cover - interpreters without _json


def _dump_checked_payload(payload: object) -> str:
    # The payload's depth is checked, so a RecursionError says the caller's stack is deep.
    try:
        return _dump_payload(payload)
    except RecursionError:
        return on_fresh_stack(_dump_payload, payload)


def _check_payload(payload: object) -> bool:
    # json.dumps would quietly turn {1: 2} into {"1": 2}; a receipt's payload must round-trip.
    # The depth bound also stops a self-containing payload, as no circular check runs.
    # Returns whether every value and key is of a builtin type itself, not a subclass: only
    # those go to the fast encoder.
    scalars = _EXACT_SCALARS
    plain = True
    stack = [(payload, 0)]  # (value, containers around it)
    while stack:
        value, depth = stack.pop()
        if depth >= MAX_PAYLOAD_DEPTH and isinstance(value, (dict, list, tuple)):
            raise ValueError(
                f"payload nests more than {MAX_PAYLOAD_DEPTH} containers (or is circular); "
                "the upstream reader could not read it"
            )
        kind = type(value)
        if kind not in _PLAIN:
            plain = False
        if isinstance(value, dict):
            for key, item in value.items():
                if type(key) is not str:
                    if not isinstance(key, str):
                        raise ValueError(f"payload has a non-string object key {key!r}")
                    plain = False
                if type(item) not in scalars:
                    stack.append((item, depth + 1))
        elif isinstance(value, (list, tuple)):
            stack.extend((item, depth + 1) for item in value if type(item) not in scalars)
        elif not isinstance(value, _JSON_SCALARS):
            raise ValueError(f"payload holds a {type(value).__name__}, which is not JSON")
    return plain


def encode_payload(payload: object) -> str:
    """Return the canonical JSON text of ``payload``.

    :raises ValueError: if ``payload`` is not a JSON value (non-string keys, NaN, other types,
        nesting too deep).
    """
    _check_payload(payload)
    return _dump_text(payload)


def _dump_text(payload: object) -> str:
    # The reference encoder, for a checked payload.
    try:
        return _dump_checked_payload(payload)
    except ValueError as error:
        raise ValueError(f"payload is not JSON: {error}") from None


def _payload_bytes(payload: object) -> bytes:
    # encode_payload's text as UTF-8: orjson's bytes where they are the same (_fastjson).
    # (encode_tail has already tried a flat payload's shortcut.)
    if _check_payload(payload):
        data = dump_plain(payload)
        if data is not None:
            return data
    return _dump_text(payload).encode()


def check_ids(run_id: object, node_id: object, attempt: object, session_id: object) -> None:
    """Check the ids and attempt of an append.

    :raises ValueError: naming the first field that is wrong.
    """
    if (
        type(attempt) is int
        and 0 <= attempt <= U32_MAX
        and type(run_id) is str
        and type(node_id) is str
        and type(session_id) is str
    ):
        return  # the common case, in one test; below finds what is wrong, or allows subclasses
    for name, value in (("run_id", run_id), ("node_id", node_id), ("session_id", session_id)):
        if not isinstance(value, str):
            raise ValueError(f"{name} must be str, not {type(value).__name__}")
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        raise ValueError(f"attempt must be int, not {type(attempt).__name__}")
    if not 0 <= attempt <= U32_MAX:
        raise ValueError(f"attempt {attempt} is outside 0..{U32_MAX}")


class EncodedBatch:
    """The lines of a batch with ``seq`` and ``ts_ms`` left open.

    Each line is ``head + seq + middle + ts_ms + tail``; ``head`` is shared by the whole batch.
    """

    __slots__ = ("head", "tails")

    def __init__(self, head: bytes, tails: list[bytes]) -> None:
        self.head = head
        self.tails = tails

    def render(self, first_seq: int, ts_ms: int) -> bytes:
        """Join the lines, numbering them from ``first_seq``."""
        head = self.head
        if len(self.tails) == 1:
            return b'%s%d,"ts_ms":%d,"event_type":%s' % (head, first_seq, ts_ms, self.tails[0])
        ts = b',"ts_ms":%d,"event_type":' % ts_ms
        return b"".join(
            [b"%s%d%s%s" % (head, seq, ts, tail) for seq, tail in enumerate(self.tails, first_seq)]
        )


def encode_head(run_id: str, node_id: str, attempt: int, session_id: str) -> bytes:
    """Encode the fields a batch shares, up to the ``seq`` value.

    :raises ValueError: if an id is not valid UTF-8 text (a lone surrogate).
    """
    text = (
        f'{{"version":{RECEIPT_SCHEMA_VERSION},"run_id":{_quote(run_id)},'
        f'"node_id":{_quote(node_id)},"attempt":{attempt:d},'
        f'"session_id":{_quote(session_id)},"seq":'
    )
    try:
        return text.encode()
    except UnicodeEncodeError as error:
        raise ValueError(f"ids cannot be encoded as UTF-8: {error.reason}") from None


def encode_tail(event_type: str, payload: object) -> bytes:
    """Encode ``event_type`` (trimmed) and ``payload`` with the closing brace and newline.

    :raises ValueError: if ``event_type`` is not a str or ``payload`` is not a JSON value.
    """
    quoted = _event_types.get(event_type) if type(event_type) is str else None
    if quoted is None and not isinstance(event_type, str):
        raise ValueError(f"event_type must be str, not {type(event_type).__name__}")
    try:
        payload_bytes: bytes | None = None
        if type(payload) is dict:
            # The common payload: an object whose keys are strs and whose values are builtin
            # scalars themselves (no subclasses), no float NaN or infinite (NaN - NaN and
            # inf - inf are NaN, x - x is 0 for a finite x). It needs no walk, and orjson's
            # bytes no scan for the nulls it writes for NaN. Inline: every append runs it.
            scalars = _EXACT_SCALARS
            for key, item in payload.items():
                kind = type(item)
                if type(key) is not str or kind not in scalars or (kind is float and item - item):
                    break
            else:
                payload_bytes = dump_finite(payload)  # None: an int past 64 bits, a surrogate
        if payload_bytes is None:
            payload_bytes = _payload_bytes(payload)
        if quoted is None:
            quoted = _event_type_bytes(event_type)
    except UnicodeEncodeError as error:
        raise ValueError(f"event cannot be encoded as UTF-8: {error.reason}") from None
    return b'%s,"payload":%s}\n' % (quoted, payload_bytes)


def _event_type_bytes(event_type: str) -> bytes:
    # The event type trimmed and quoted, kept for the next time if it is short and a str itself.
    quoted = _quote(rust_trim(event_type)).encode()
    if type(event_type) is str and len(event_type) <= _EVENT_TYPE_KEPT_CHARS:
        if len(_event_types) >= _EVENT_TYPES_KEPT:
            _event_types.clear()
        _event_types[event_type] = quoted
    return quoted


# Event types as encode_tail writes them: workers repeat a few, trimming and quoting them costs
# more than a lookup. Only exact strs (a subclass may compare equal to one and differ). Bounded
# (cleared when full, short ones only): a few hundred KiB at most.
_EVENT_TYPES_KEPT = 256
_EVENT_TYPE_KEPT_CHARS = 128
_event_types: dict[str, bytes] = {}


def encode_batch(
    path: Path,
    run_id: str,
    node_id: str,
    attempt: int,
    session_id: str,
    events: Iterable[ReceiptEvent],
    head: bytes | None = None,
) -> EncodedBatch:
    """Check and encode an append's batch before any I/O; every backend appends through this.

    :param head: the encoded ids, when the caller has them from an earlier append of these
        very ids (equal, and of the builtin types themselves), checked then: not again.
    :raises InvalidEvent: naming ``path``, the field or the event that is wrong.
    """
    try:
        if head is None:
            check_ids(run_id, node_id, attempt, session_id)
            head = encode_head(run_id, node_id, attempt, session_id)
        events = events if isinstance(events, list) else list(events)
    except ValueError as error:
        raise InvalidEvent(path, str(error)) from None
    tails: list[bytes] = []
    try:
        for event in events:  # a loop, not a comprehension: no frame to make for one event
            tails.append(encode_tail(event.event_type, event.payload))
    except (ValueError, AttributeError):
        bad = _first_bad_event(events)
        if bad is None:
            raise
        raise InvalidEvent(path, bad[1], bad[0]) from None
    return EncodedBatch(head, tails)


def _first_bad_event(events: Sequence[ReceiptEvent]) -> tuple[int, str] | None:
    # The index of the first event encode_tail refuses, and why; off the fast path.
    for index, event in enumerate(events):
        try:
            if not hasattr(event, "event_type") or not hasattr(event, "payload"):
                raise ValueError(f"expected a ReceiptEvent, got {type(event).__name__}")
            encode_tail(event.event_type, event.payload)
        except ValueError as error:
            return index, str(error)
    return None


def empty_append(path: Path, last_seq: int, expected_last_seq: int | None) -> AppendSummary:
    """The result of appending nothing: the last seq, after the optimistic check.

    :raises SeqConflict: if ``expected_last_seq`` is given and is not ``last_seq``.
    """
    if expected_last_seq is not None and expected_last_seq != last_seq:
        raise SeqConflict(path, expected_last_seq, last_seq)
    return AppendSummary(path, last_seq, 0)


def check_expected_last_seq(path: Path, expected_last_seq: object) -> int | None:
    """Check an append's ``expected_last_seq``: ``None``, or an int (not a bool) in
    ``0..2**64-1``; every backend checks it the same way before any I/O.

    :returns: the value as a plain ``int`` (an int subclass is not passed on), or ``None``.
    :raises InvalidEvent: naming ``path`` and what is wrong; nothing is written.
    """
    if expected_last_seq is None:
        return None
    if not isinstance(expected_last_seq, int) or isinstance(expected_last_seq, bool):
        kind = type(expected_last_seq).__name__
        raise InvalidEvent(path, f"expected_last_seq must be an int or None, not {kind}")
    if not 0 <= expected_last_seq <= U64_MAX:
        reason = f"expected_last_seq {expected_last_seq} is outside 0..{U64_MAX}"
        raise InvalidEvent(path, reason)
    return int(expected_last_seq)


def encode_record(record: ReceiptRecord) -> bytes:
    """Return the exact line, newline included, that the ledger writes for ``record``.

    :raises ValueError: if a field does not fit the format.
    """
    if record.version != RECEIPT_SCHEMA_VERSION:
        raise ValueError(f"version {record.version} is not {RECEIPT_SCHEMA_VERSION}")
    for name in ("seq", "ts_ms"):
        value = getattr(record, name)
        if type(value) is not int or not 0 <= value <= U64_MAX:
            raise ValueError(f"{name} {value!r} is not an int in 0..{U64_MAX}")
    check_ids(record.run_id, record.node_id, record.attempt, record.session_id)
    head = encode_head(record.run_id, record.node_id, record.attempt, record.session_id)
    batch = EncodedBatch(head, [encode_tail(record.event_type, record.payload)])
    return batch.render(record.seq, record.ts_ms)
