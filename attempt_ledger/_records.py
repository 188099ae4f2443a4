"""The receipt models and the one cattrs converter that turns JSON objects into them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeAlias, Union

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

#: Schema version written into every receipt, as in the seed.
RECEIPT_SCHEMA_VERSION = 1
#: Schema version of hash-chained receipts (``prev_hash``, ``record_hash``), as upstream's.
RECEIPT_SCHEMA_VERSION_V2 = 2

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1

#: Most containers a payload may nest: with the line's own object, the 127 that serde_json (the
#: upstream reader) parses before it gives up on a line.
MAX_PAYLOAD_DEPTH = 126

#: Most containers a valid line may nest, its own object included: what upstream can read.
MAX_LINE_DEPTH = MAX_PAYLOAD_DEPTH + 1

#: A JSON value as :func:`json.loads` returns it.
JSONValue: TypeAlias = Union[bool, int, float, str, "list[JSONValue]", "dict[str, JSONValue]", None]


@attrs.frozen
class ReceiptRecord:
    """One line of a ledger. Field order is the order of the keys in the file."""

    version: int
    run_id: str
    node_id: str
    attempt: int
    session_id: str
    seq: int
    ts_ms: int
    event_type: str
    payload: JSONValue


@attrs.frozen
class ReceiptEvent:
    """What a worker asks to record; the ledger adds ids, ``seq`` and ``ts_ms``."""

    event_type: str
    payload: JSONValue = None


@attrs.frozen
class ReceiptDraft:
    """One event together with the ids it belongs to, for :func:`append_receipt`."""

    run_id: str
    node_id: str
    attempt: int
    session_id: str
    event_type: str
    payload: JSONValue = None


@attrs.frozen
class AppendSummary:
    """The result of an append.

    :ivar path: the ledger file.
    :ivar seq: the seq of the last record written (for an empty batch, the ledger's last seq).
    :ivar record_count: how many records the append wrote (see :func:`append_receipt` for the
        one place where it counts the whole file instead, as the seed does).
    """

    path: Path
    seq: int
    record_count: int


# AppendSummary(path, seq, record_count) without attrs' __init__ (a frozen class sets each
# field through object.__setattr__), for the append's hot path: the class has no validator,
# converter or default to run, so the slots are all there is to set (tests/test_records.py).
_new_summary = object.__new__
_set_path, _set_seq, _set_count = (
    AppendSummary.__dict__[field.name].__set__ for field in attrs.fields(AppendSummary)
)


def append_summary(path: Path, seq: int, record_count: int) -> AppendSummary:
    """Return ``AppendSummary(path, seq, record_count)``, made quicker."""
    summary: AppendSummary = _new_summary(AppendSummary)
    _set_path(summary, path)
    _set_seq(summary, seq)
    _set_count(summary, record_count)
    return summary


@attrs.frozen
class ReconcileSummary:
    """The result of :func:`reconcile_receipts`.

    :ivar found: whether the ledger reached the expected seq before the deadline.
    :ivar last_seq: the last seq read.
    :ivar elapsed_ms: milliseconds spent, on the monotonic clock.
    :ivar attempts: how many times the ledger was read.
    """

    found: bool
    last_seq: int
    elapsed_ms: int
    attempts: int


def _strict(kind: type, low: int | None = None, high: int | None = None) -> Any:
    # cattrs' default hooks coerce ("7" -> 7, True -> 1); a receipt must carry the exact JSON type.
    def check(value: object, _: object) -> object:
        if type(value) is not kind:
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        if low is not None and not low <= value <= high:  # type: ignore[operator]
            raise ValueError(f"{value} is out of range {low}..{high}")
        return value

    return override(struct_hook=check)


def _passthrough(value: object, _: object) -> object:
    return value


converter = cattrs.Converter(detailed_validation=False)
converter.register_structure_hook(
    ReceiptRecord,
    make_dict_structure_fn(
        ReceiptRecord,
        converter,
        version=_strict(int, 0, U32_MAX),
        run_id=_strict(str),
        node_id=_strict(str),
        attempt=_strict(int, 0, U32_MAX),
        session_id=_strict(str),
        seq=_strict(int, 0, U64_MAX),
        ts_ms=_strict(int, 0, U64_MAX),
        event_type=_strict(str),
        payload=override(struct_hook=_passthrough),
    ),
)
