"""Schema 2, the hash chain: encoding a chained line from the codec's pieces, and its hash.

A v2 line is a v1 line with ``"version":2`` and two more members at its end::

    {"version":2,...,"payload":...,"prev_hash":null|"<hex>","record_hash":"<hex>"}

``record_hash`` is the lowercase hex SHA-256 of the line's bytes up to and including the
``prev_hash`` member, then ``}``: the line without its ``,"record_hash":"..."`` member. The
codec's head and tail encoders write everything up to ``prev_hash`` (so floats, escapes and key
order are the codec's, byte-identical to upstream's); only ``seq``, ``ts_ms`` and ``prev_hash`` are
decided under the lock, so :func:`render_chained` is all that runs there.

Reading lines back for the verifier: :func:`judge_line` parses any line fully;
:class:`FastJudge` takes a canonical v2 line without building its values, and leaves any other
line to :func:`judge_line`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re

import attrs

from ._codec import EncodedBatch, encode_record
from ._lines import (
    _decoder,
    _reject_constant,
    decode_record,
    line_seq,
    nests_too_deep,
    on_fresh_stack,
)
from ._records import (
    RECEIPT_SCHEMA_VERSION,
    RECEIPT_SCHEMA_VERSION_V2,
    U32_MAX,
    U64_MAX,
    ReceiptRecord,
)

_V1_OPEN = b'{"version":%d,' % RECEIPT_SCHEMA_VERSION
_V2_OPEN = b'{"version":%d,' % RECEIPT_SCHEMA_VERSION_V2
_PREV_KEY = b',"prev_hash":'
_HASH_KEY = b',"record_hash":"'
#: Length of ``,"record_hash":"<64 hex>"}``, the end of every hashed line (``\n`` excluded).
HASH_MEMBER_LEN = len(_HASH_KEY) + 64 + 2

# The last two members of a hashed line, matched from the last `,"prev_hash":` to the end.
_CHAIN_END = re.compile(rb',"prev_hash":(?:null|"([0-9a-f]{64})"),"record_hash":"([0-9a-f]{64})"\}')


def check_hash(value: object, name: str = "prev_hash") -> str:
    """Return ``value`` if it is a record hash: 64 lowercase hex digits.

    :raises ValueError: naming ``name``, if it is not.
    """
    if type(value) is not str or not is_hash(value):
        raise ValueError(f"{name} must be 64 lowercase hex digits, not {value!r}")
    return value


def is_hash(text: str) -> bool:
    """Whether ``text`` is 64 lowercase hex digits (by a round trip: faster than a regex)."""
    try:
        return len(text) == 64 and bytes.fromhex(text).hex() == text
    except ValueError:
        return False


def chain_head(head: bytes) -> bytes:
    """Turn a head from :func:`encode_head` (schema 1) into the same head for schema 2.

    :raises ValueError: if ``head`` is not such a head.
    """
    if not head.startswith(_V1_OPEN):
        raise ValueError("not a head from encode_head")
    return _V2_OPEN + head[len(_V1_OPEN) :]


def render_chained(
    batch: EncodedBatch,
    first_seq: int,
    ts_ms: int,
    prev_hash: str | None,
    *,
    checked: bool = False,
) -> tuple[bytes, str]:
    """Join ``batch``'s lines as schema 2, numbered from ``first_seq``, each chained to the last.

    ``batch`` is what :func:`encode_batch` returns (its schema-1 head is turned into the
    schema-2 one here), so one batch encoded before the lock can be rendered either way once
    the tail has been read: :meth:`EncodedBatch.render` or this.

    :param prev_hash: the ``record_hash`` the first line chains from, or ``None`` to start a
        chain (``"prev_hash":null``).
    :param checked: ``prev_hash`` is known to be 64 lowercase hex digits (it was read by
        :func:`record_hash_of` or made here), so it is not checked again under the lock.
    :returns: the bytes to write and the ``record_hash`` of the last line.
    :raises ValueError: if ``prev_hash`` is not ``None`` or 64 lowercase hex digits, or the
        batch is empty (an empty append writes nothing, and has no last hash).
    """
    tails = batch.tails
    if not tails:
        raise ValueError("an empty batch has no lines to chain")
    if prev_hash is not None and not checked:
        check_hash(prev_hash)
    prev = b"null" if prev_hash is None else b'"%s"' % prev_hash.encode()
    head = _chain_head(batch.head)
    sha256 = hashlib.sha256
    # Each line: the tail without its closing "}\n", the prev_hash member (the hashed bytes
    # end there, plus "}"), then the record_hash member.
    if len(tails) == 1:  # the common case, without the loop's bookkeeping
        start = b'%s%d,"ts_ms":%d,"event_type":%s,"prev_hash":%s' % (
            head,
            first_seq,
            ts_ms,
            tails[0][:-2],
            prev,
        )
        digest = sha256(start)
        digest.update(b"}")
        hex_text = digest.hexdigest()
        return b'%s,"record_hash":"%s"}\n' % (start, hex_text.encode()), hex_text
    ts = b',"ts_ms":%d,"event_type":' % ts_ms
    out: list[bytes] = []
    hex_digest = b""
    for seq, tail in enumerate(tails, first_seq):
        start = b'%s%d%s%s,"prev_hash":%s' % (head, seq, ts, tail[:-2], prev)
        hex_digest = sha256(start + b"}").hexdigest().encode()
        out += (start, b',"record_hash":"', hex_digest, b'"}\n')
        prev = b'"%s"' % hex_digest
    return b"".join(out), hex_digest.decode()


# Workers repeat their ids: the schema-2 head of the last few is kept.
_chain_head = functools.lru_cache(maxsize=64)(chain_head)


def encode_chained_record(record: ReceiptRecord, prev_hash: str | None) -> tuple[bytes, str]:
    """Return the v2 line (newline included) of ``record`` chained from ``prev_hash``, and its hash.

    ``record.version`` must be 2: the v2 counterpart of :func:`encode_record`, which checks and
    encodes the fields.

    :raises ValueError: if a field does not fit the format, or ``prev_hash`` is not a hash.
    """
    if record.version != RECEIPT_SCHEMA_VERSION_V2:
        raise ValueError(f"version {record.version} is not {RECEIPT_SCHEMA_VERSION_V2}")
    v1_line = encode_record(attrs.evolve(record, version=RECEIPT_SCHEMA_VERSION))
    prev = b"null" if prev_hash is None else b'"%s"' % check_hash(prev_hash).encode()
    return _seal(_V2_OPEN + v1_line[len(_V1_OPEN) : -2] + _PREV_KEY + prev)


def _seal(start: bytes) -> tuple[bytes, str]:
    """The line that ends with ``start``'s record_hash, and that hash.

    :param start: a line up to and including its ``prev_hash`` member.
    """
    digest = hashlib.sha256(start + b"}").hexdigest()
    return b'%s,"record_hash":"%s"}\n' % (start, digest.encode()), digest


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


# -- judging a line, for the verifier ------------------------------------------------------------

UNHASHED, HASHED, DAMAGED = 0, 1, 2

# A canonical v2 line, in two parts: the head up to "seq": (cached: a ledger repeats it), then
# the rest. Strings and integers exactly as the stdlib's strict JSON scanner accepts them.
_STR = r'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"'
_UINT = r"(0|[1-9][0-9]*)"
_HEAD = re.compile(
    rf'\{{"version":2,"run_id":{_STR},"node_id":{_STR},"attempt":{_UINT},"session_id":{_STR},"seq":'
)
_MIDDLE = re.compile(rf'{_UINT},"ts_ms":{_UINT},"event_type":{_STR},"payload":')
_NULL_PREV = ',"prev_hash":null'
_HEX_PREV = ',"prev_hash":"'
_HASH_KEY_STR = _HASH_KEY.decode()
# Objects as tuples of pairs, so that a duplicate key is seen (dicts keep the last silently).
_pairs_decoder = json.JSONDecoder(object_pairs_hook=tuple, parse_constant=_reject_constant)
# The codec's scanner itself: raw_decode's Python frame costs more than scanning a payload.
_scan_once = _decoder.scan_once  # type: ignore[attr-defined]

Judged = tuple[int, int, "str | None", "str | None", "str | None", "tuple[str, str, object] | None"]
SKIPPED, DUPLICATE = 3, 4


def _skipped(detail: str) -> Judged:
    return SKIPPED, -1, None, None, None, ("skipped_line", detail, None)


class FastJudge:
    """Judges a canonical v2 line without a full parse; anything else is left to the slow path.

    It accepts a line only when the slow path would judge it the same: every token is matched
    exactly as the strict JSON scanner reads it, the payload is scanned by that scanner, and the
    exact key sequence rules out duplicate keys.
    """

    __slots__ = ("head",)

    def __init__(self) -> None:
        self.head: str | None = None  # the last head matched, up to "seq":

    def judge(self, line: bytes) -> Judged | None:
        try:
            text = line.decode()
        except UnicodeDecodeError:
            return None
        # The end: ,"prev_hash":null|"<hex>","record_hash":"<hex>"} (ASCII, so byte offsets
        # and character offsets agree there).
        n = len(text)
        if n < 161 or not text.endswith('"}') or not text.startswith(_HASH_KEY_STR, n - 82):
            return None  # (161: the longest end; every v2 line is longer)
        stored = text[n - 66 : n - 2]
        prev: str | None
        if text.startswith(_NULL_PREV, n - 99):
            prev, stop = None, n - 99
        elif text.startswith(_HEX_PREV, n - 161) and text[n - 83] == '"':
            prev, stop = text[n - 147 : n - 83], n - 161
            if not is_hash(prev):
                return None
        else:
            return None
        head = self.head
        if head is not None and text.startswith(head):
            pos = len(head)
        else:
            match = _HEAD.match(text)
            # (Lengths first: int() refuses text of over 4300 digits.)
            if match is None or len(match[1]) > 10 or int(match[1]) > U32_MAX:
                return None
            pos = match.end()
            self.head = text[:pos]
        middle = _MIDDLE.match(text, pos)
        if middle is None:
            return None
        seq_text, ts_text = middle[1], middle[2]
        if len(seq_text) > 20 or len(ts_text) > 20:
            return None
        seq = int(seq_text)
        if seq > U64_MAX or int(ts_text) > U64_MAX:
            return None
        if nests_too_deep(line):  # not a valid line at all: the slow path says so
            return None
        try:
            if _scan_once(text, middle.end())[1] != stop:
                return None
        except (StopIteration, ValueError, RecursionError):
            return None
        digest = hashlib.sha256(line[:-HASH_MEMBER_LEN])
        digest.update(b"}")
        computed = digest.hexdigest()
        if computed != stored:  # the slow path tells a mismatch from a malformed hash
            return None
        return HASHED, seq, prev, stored, computed, None


def judge_line(line: bytes | None) -> Judged:
    """Judge any line, with full parses."""
    if line is None:
        return _skipped("not JSON (raw control bytes, or no object brackets)")
    record = decode_record(line)
    if record is None:
        try:
            line.decode()
        except UnicodeDecodeError as error:
            return _skipped(f"not UTF-8 (byte {error.start})")
        if line_seq(line) is None:
            return _skipped("not a JSON object with an integer seq")
        return _skipped(f"seq {line_seq(line)} is not a well-typed receipt")
    text = line.decode().strip(" \t\r")
    try:
        pairs = _pairs_decoder.raw_decode(text)[0]
    except RecursionError:  # a valid line is shallow: the caller's stack is deep
        pairs = on_fresh_stack(_pairs_decoder.raw_decode, text)[0]
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        twice = sorted({key for key in keys if keys.count(key) > 1})
        return DUPLICATE, -1, None, None, None, ("duplicate_key", f"keys {twice} twice", None)
    seq, version = record.seq, record.version
    members = chain_members(line)
    if members is not None:
        computed = hashlib.sha256(line[:-HASH_MEMBER_LEN] + b"}").hexdigest()
        issue = None
        if version != RECEIPT_SCHEMA_VERSION_V2:
            issue = ("wrong_version", f"version {version} in a hashed record", 2)
        return HASHED, seq, members[0], members[1], computed, issue
    if "record_hash" in keys or "prev_hash" in keys:
        detail = "prev_hash and record_hash are not the last members, as null or 64 hex digits"
        return DAMAGED, seq, None, None, None, ("bad_hash_fields", detail, None)
    if version == RECEIPT_SCHEMA_VERSION_V2:
        detail = "a version-2 record without prev_hash and record_hash"
        return DAMAGED, seq, None, None, None, ("missing_record_hash", detail, None)
    issue = None
    if version != RECEIPT_SCHEMA_VERSION:
        issue = ("wrong_version", f"version {version} in an unhashed record", 1)
    return UNHASHED, seq, None, None, None, issue
