"""What the command line shows: ledger summaries, record rows, the last records, stdin events."""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from ._codec import decode_record, encode_payload
from ._errors import LedgerIOError
from ._paths import iter_ledgers
from ._reader import TAIL_BLOCK, iter_decoded, open_ledger, read_last_seq
from ._records import ReceiptEvent, ReceiptRecord

_SUMMARY_WIDTH = 60


def ledger_summaries(root: Path) -> Iterator[dict[str, object]]:
    """One summary per ledger under ``root``: names, raw ids, record count, last seq, size.

    Counting reads each ledger once from the front.
    """
    for run, node, path in iter_ledgers(root):
        count, first = 0, None
        for record, _, _ in iter_decoded(path):
            if record is not None:
                count += 1
                first = first or record
        yield {
            "run": run,
            "node": node,
            "run_id": first.run_id if first else None,
            "node_id": first.node_id if first else None,
            "records": count,
            "last_seq": read_last_seq(path),
            "bytes": path.stat().st_size,
            "path": str(path),
        }


def record_row(record: ReceiptRecord) -> list[str]:
    """The columns ``show`` and ``tail`` print for a record."""
    when = datetime.datetime.fromtimestamp(record.ts_ms / 1000, tz=datetime.timezone.utc)
    payload = encode_payload(record.payload)
    if len(payload) > _SUMMARY_WIDTH:
        payload = payload[: _SUMMARY_WIDTH - 1] + "…"
    return [
        str(record.seq),
        when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        str(record.attempt),
        record.session_id,
        record.event_type,
        payload,
    ]


ROW_HEADER = ["SEQ", "TIME (UTC)", "ATTEMPT", "SESSION", "EVENT", "PAYLOAD"]


def print_rows(rows: Iterable[list[str]], out: TextIO, *, header: bool = True) -> int:
    """Print rows in aligned columns, under ``ROW_HEADER`` if ``header``, in pages of up to 500
    (so that a long ledger streams); return how many rows were printed."""
    count, page = 0, []
    for row in rows:
        page.append([text.replace("\n", "\\n") for text in row])
        count += 1
        if len(page) == 500:
            _print_page(page, out, header=header)
            header, page = False, []
    if page or header:
        _print_page(page, out, header=header)
    return count


def _print_page(page: list[list[str]], out: TextIO, *, header: bool) -> None:
    rows = [ROW_HEADER, *page] if header else page
    widths = [max(len(row[i]) for row in [ROW_HEADER, *page]) for i in range(len(ROW_HEADER))]
    for row in rows:
        cells = [
            row[0].rjust(widths[0]),
            *(c.ljust(w) for c, w in zip(row[1:], widths[1:], strict=True)),
        ]
        out.write("  ".join(cells).rstrip() + "\n")


def last_records(path: Path, count: int) -> list[tuple[ReceiptRecord, bytes]]:
    """The last ``count`` well-typed records with their lines, reading back from the end.

    :raises LedgerIOError: if the ledger exists but cannot be read.
    """
    if count <= 0:
        return []
    fd = open_ledger(path)
    if fd is None:
        return []
    try:
        end = os.fstat(fd).st_size
        start, block = end, TAIL_BLOCK
        while True:
            start = max(0, start - block)
            data = os.pread(fd, end - start, start)
            lines = data.split(b"\n")[:-1]  # the fragment after the last newline is not a line
            if start > 0:
                lines = lines[1:]  # the first piece may be the end of a longer line
            found = [(r, line) for line in lines if (r := decode_record(line)) is not None]
            if len(found) >= count or start == 0:
                return found[-count:]
            block *= 2
    except OSError as error:
        raise LedgerIOError.wrap(path, "read the ledger", error) from error
    finally:
        os.close(fd)


def read_events(stream: TextIO, name: str = "<stdin>") -> list[ReceiptEvent]:
    """Parse JSON lines ``{"event_type": ..., "payload": ...}`` (blank lines skipped).

    :raises ValueError: naming the line that is not such an object.
    """
    events = []
    for number, text in enumerate(stream, 1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except ValueError as error:
            raise ValueError(f"{name} line {number}: not JSON: {error}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("event_type"), str):
            raise ValueError(f"{name} line {number}: expected an object with a string event_type")
        unknown = set(obj) - {"event_type", "payload"}
        if unknown:
            raise ValueError(f"{name} line {number}: unknown keys {sorted(unknown)}")
        events.append(ReceiptEvent(obj["event_type"], obj.get("payload")))
    return events
