"""A model of the schema-2 append rule, and ledgers built with it (the append path is not
wired to schema 2 yet: these tests build their ledgers with the encoder)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from attempt_ledger import ReceiptEvent, ReceiptLedgerVerification, verify_receipt_ledger
from attempt_ledger._chain import hash_preimage, record_hash_of, render_chained
from attempt_ledger._codec import encode_batch
from attempt_ledger._lines import line_seq

# Upstream's vectors (shared/spec/schema-v2-vectors.json), copied unchanged.
VECTORS = json.loads((Path(__file__).parent / "data" / "schema-v2-vectors.json").read_text("utf-8"))
LINES = [item["line"].encode() for item in VECTORS["lines"]]
RUN, NODE = VECTORS["run_id"], VECTORS["node_id"]


# -- a model append, and ledgers built with it -----------------------------------------------


def last_valid_line(data: bytes) -> bytes | None:
    for line in reversed(data.split(b"\n")[:-1]):
        if line_seq(line) is not None:
            return line
    return None


def model_append(
    data: bytes,
    events: Sequence[ReceiptEvent],
    *,
    v2: bool = True,
    attempt: int = 1,
    session: str = "s",
    ts_ms: int = 1_700_000_000_000,
) -> bytes:
    """``data`` after an append, by the rule the append path follows.

    A torn last line is sealed; seq continues from the last valid line; a batch after a hashed
    last line continues the chain whatever it asks for, otherwise v2 starts a chain (null).
    """
    sealed = data + b"\n" if data and not data.endswith(b"\n") else data
    last = last_valid_line(sealed)
    last_seq = 0 if last is None else line_seq(last) or 0
    prev = None if last is None else record_hash_of(last)
    batch = encode_batch(Path("ledger"), RUN, NODE, attempt, session, list(events))
    if v2 or prev is not None:
        return sealed + render_chained(batch, last_seq + 1, ts_ms, prev)[0]
    return sealed + batch.render(last_seq + 1, ts_ms)


def chain(count: int, data: bytes = b"", per_batch: int = 3) -> bytes:
    """A valid v2 ledger of ``count`` more records, in batches, with varied payloads."""
    written = 0
    while written < count:
        size = min(per_batch, count - written)
        events = [
            ReceiptEvent("tool_invoked", {"i": written + k, "f": 0.1 * k, "s": "é\u2028x"})
            for k in range(size)
        ]
        data = model_append(data, events, attempt=written, session=f"s{written}")
        written += size
    return data


def verify_bytes(
    tmp_path: Path,
    data: bytes,
    *,
    expected_root_hash: str | None = None,
    chain_from: str | None = None,
) -> ReceiptLedgerVerification:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(data)
    return verify_receipt_ledger(path, expected_root_hash=expected_root_hash, chain_from=chain_from)


def kinds(result: ReceiptLedgerVerification) -> list[str]:
    return [p.kind for p in result.problems]


def fatal(result: ReceiptLedgerVerification) -> list[str]:
    return [p.kind for p in result.problems if p.fatal]


def rehash(line: bytes) -> bytes:
    """``line`` with its record_hash recomputed over its own bytes, as a tamperer would."""
    start = hash_preimage(line)
    return start[:-1] + b',"record_hash":"%s"}' % hashlib.sha256(start).hexdigest().encode()
