"""Schema 2, the hash chain: encoding a chained line from the codec's pieces, and its hash.

A v2 line is a v1 line with ``"version":2`` and two more members at its end::

    {"version":2,...,"payload":...,"prev_hash":null|"<hex>","record_hash":"<hex>"}

``record_hash`` is the lowercase hex SHA-256 of the line's bytes up to and including the
``prev_hash`` member, then ``}``: the line without its ``,"record_hash":"..."`` member. The
codec's head and tail encoders write everything up to ``prev_hash`` (so floats, escapes and key
order are the codec's, byte-identical to upstream's); only ``seq``, ``ts_ms`` and ``prev_hash`` are
decided under the lock, so :meth:`ChainedBatch.render` is all that runs there.
"""

from __future__ import annotations

import hashlib
import re

from ._codec import EncodedBatch, check_ids, encode_head, encode_tail
from ._records import (
    RECEIPT_SCHEMA_VERSION,
    RECEIPT_SCHEMA_VERSION_V2,
    U64_MAX,
    ReceiptRecord,
)

_V1_OPEN = b'{"version":%d,' % RECEIPT_SCHEMA_VERSION
_V2_OPEN = b'{"version":%d,' % RECEIPT_SCHEMA_VERSION_V2
_LINE_END = b"}\n"
_PREV_KEY = b',"prev_hash":'
_HASH_KEY = b',"record_hash":"'
#: Length of ``,"record_hash":"<64 hex>"}``, the end of every hashed line (``\n`` excluded).
HASH_MEMBER_LEN = len(_HASH_KEY) + 64 + 2

_HEX64 = re.compile(r"[0-9a-f]{64}")
# The last two members of a hashed line, matched from the last `,"prev_hash":` to the end.
_CHAIN_END = re.compile(rb',"prev_hash":(?:null|"([0-9a-f]{64})"),"record_hash":"([0-9a-f]{64})"\}')


def check_hash(value: object, name: str = "prev_hash") -> str:
    """Return ``value`` if it is a record hash: 64 lowercase hex digits.

    :raises ValueError: naming ``name``, if it is not.
    """
    if type(value) is not str or not _HEX64.fullmatch(value):
        raise ValueError(f"{name} must be 64 lowercase hex digits, not {value!r}")
    return value


def chain_head(head: bytes) -> bytes:
    """Turn a head from :func:`encode_head` (schema 1) into the same head for schema 2."""
    if not head.startswith(_V1_OPEN):
        raise ValueError("not a head from encode_head")
    return _V2_OPEN + head[len(_V1_OPEN) :]


class ChainedBatch:
    """The lines of a v2 batch with ``seq``, ``ts_ms`` and ``prev_hash`` left open.

    Built from an :class:`EncodedBatch` before the lock is taken; each body is a tail without
    its closing ``}\\n`` and with the ``prev_hash`` key already appended.
    """

    __slots__ = ("bodies", "head")

    def __init__(self, batch: EncodedBatch) -> None:
        self.head = chain_head(batch.head)
        self.bodies = [tail[: -len(_LINE_END)] + _PREV_KEY for tail in batch.tails]

    def render(self, first_seq: int, ts_ms: int, prev_hash: str | None) -> tuple[bytes, str]:
        """Join the lines numbered from ``first_seq``, each chained to the one before it.

        :param prev_hash: the ``record_hash`` the first line chains from, or ``None`` to start
            a chain (``"prev_hash":null``).
        :returns: the bytes to write and the ``record_hash`` of the last line.
        :raises ValueError: if ``prev_hash`` is not ``None`` or 64 lowercase hex digits.
        """
        prev = b"null" if prev_hash is None else b'"%s"' % check_hash(prev_hash).encode()
        head = self.head
        ts = b',"ts_ms":%d,"event_type":' % ts_ms
        sha256 = hashlib.sha256
        out = []
        digest = ""
        for seq, body in enumerate(self.bodies, first_seq):
            start = b"%s%d%s%s%s" % (head, seq, ts, body, prev)
            digest = sha256(start + b"}").hexdigest()
            hex_bytes = digest.encode()
            out.append(b'%s,"record_hash":"%s"}\n' % (start, hex_bytes))
            prev = b'"%s"' % hex_bytes
        return b"".join(out), digest


def encode_chained_record(record: ReceiptRecord, prev_hash: str | None) -> tuple[bytes, str]:
    """Return the v2 line (newline included) of ``record`` chained from ``prev_hash``, and its hash.

    ``record.version`` must be 2: the v2 counterpart of :func:`encode_record`.

    :raises ValueError: if a field does not fit the format, or ``prev_hash`` is not a hash.
    """
    if record.version != RECEIPT_SCHEMA_VERSION_V2:
        raise ValueError(f"version {record.version} is not {RECEIPT_SCHEMA_VERSION_V2}")
    for name in ("seq", "ts_ms"):
        value = getattr(record, name)
        if type(value) is not int or not 0 <= value <= U64_MAX:
            raise ValueError(f"{name} {value!r} is not an int in 0..{U64_MAX}")
    check_ids(record.run_id, record.node_id, record.attempt, record.session_id)
    head = encode_head(record.run_id, record.node_id, record.attempt, record.session_id)
    batch = EncodedBatch(head, [encode_tail(record.event_type, record.payload)])
    return ChainedBatch(batch).render(record.seq, record.ts_ms, prev_hash)


def chain_members(line: bytes) -> tuple[str | None, str] | None:
    """Return ``(prev_hash, record_hash)`` if a valid line (no ``\\n``) ends with them, else None.

    A JSON object whose text ends with ``,"prev_hash":...,"record_hash":"<hex>"}`` has them as
    its last two top-level members (the quotes there cannot be inside a string), so no parse is
    needed once the line is known to be a JSON object.
    """
    start = line.rfind(_PREV_KEY)
    match = _CHAIN_END.fullmatch(line, start) if start >= 0 else None
    if match is None:
        return None
    prev = match[1]
    return (None if prev is None else prev.decode()), match[2].decode()


def record_hash_of(line: bytes) -> str | None:
    """Return the ``record_hash`` a valid line (no ``\\n``) ends with, or ``None`` if unhashed.

    What an append chains from: the caller has found ``line`` to be the last valid line (a JSON
    object with a seq). The hash is returned as written, right or wrong: verifying is not the
    append's job, and continuing from what is there keeps one tampered line one problem.
    """
    members = chain_members(line)
    return None if members is None else members[1]


def hash_preimage(line: bytes) -> bytes:
    """Return the bytes a hashed line's ``record_hash`` covers: the line without that member.

    ``line`` (without ``\\n``) must end with the member, as :func:`record_hash_of` finds.
    """
    return line[:-HASH_MEMBER_LEN] + b"}"
