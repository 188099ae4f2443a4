"""What the command line shows: ledger summaries, record rows, the last records, stdin events."""

from __future__ import annotations

import collections
import datetime
import json
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from ._chain import record_hash_of
from ._codec import encode_payload, encode_tail
from ._errors import LedgerIOError
from ._lines import decode_record
from ._paths import iter_ledgers
from ._reader import (
    TAIL_BLOCK,
    FileShrank,
    iter_decoded,
    lines_backward,
    open_ledger,
    read_last_seq,
)
from ._reconcile import follow_with, start_offset
from ._records import JSONValue, ReceiptEvent, ReceiptRecord

_SUMMARY_WIDTH = 60


def list_ledgers(root: Path) -> Iterator[tuple[str, str, Path]]:
    """:func:`iter_ledgers`, with a directory that cannot be listed as a :class:`LedgerIOError`.

    :raises LedgerIOError: naming the directory (a root that is a file, no permission).
    """
    ledgers = iter_ledgers(root)
    while True:
        try:
            item = next(ledgers)
        except StopIteration:
            return
        except OSError as error:
            where = root if error.filename is None else os.fsdecode(error.filename)
            raise LedgerIOError.wrap(where, "list the ledgers", error) from error
        yield item


def ledger_summaries(root: Path) -> Iterator[dict[str, object]]:
    """One summary per ledger under ``root``: names, raw ids, record count, last seq, size.

    Counting reads each ledger once from the front.

    :raises LedgerIOError: if the root or a ledger cannot be read.
    """
    for run, node, path in list_ledgers(root):
        count, first = 0, None
        for record, _, _ in iter_decoded(path):
            if record is not None:
                count += 1
                first = first or record
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue  # removed since it was listed (remove_run, prune): not a ledger now
        except OSError as error:
            raise LedgerIOError.wrap(path, "read the ledger", error) from error
        yield {
            "run": run,
            "node": node,
            "run_id": first.run_id if first else None,
            "node_id": first.node_id if first else None,
            "records": count,
            "last_seq": read_last_seq(path),
            "bytes": size,
            "path": str(path),
        }


# Shown escaped in a table: control characters, lone surrogates (the reader accepts "\ud800"),
# and the line and bidirectional controls that would rearrange a terminal's output.
_UNSHOWABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def table_cell(text: str) -> str:
    """``text`` with what a terminal cannot show (or would obey) escaped, for one table cell."""
    return _UNSHOWABLE.sub(_escape, text)


_EPOCH = datetime.datetime(1970, 1, 1)


def _time_cell(ts_ms: int) -> str:
    try:
        when = _EPOCH + datetime.timedelta(milliseconds=ts_ms)
    except OverflowError:  # past the year 9999 (ts_ms goes up to 2**64-1): no calendar date
        return f"ts_ms {ts_ms}"
    return when.isoformat(timespec="milliseconds") + "Z"


def _payload_cell(payload: JSONValue) -> str:
    try:
        return encode_payload(payload)
    except ValueError:
        pass  # read back but not writable: 1e400 (infinity)
    try:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    except (ValueError, RecursionError):
        return "(nested too deeply to show)"


def record_row(record: ReceiptRecord, line: bytes = b"") -> list[str]:
    """The columns ``show`` and ``tail`` print for a record (any record the reader accepts).

    :param line: the record's line: a hashed record (schema 2) shows the start of its
        ``record_hash`` in the CHAIN column, an unhashed one ``-``.
    """
    record_hash = record_hash_of(line) if line else None
    payload = _payload_cell(record.payload)
    if len(payload) > _SUMMARY_WIDTH:
        payload = payload[: _SUMMARY_WIDTH - 1] + "…"
    return [
        str(record.seq),
        _time_cell(record.ts_ms),
        str(record.attempt),
        table_cell(record.session_id),
        table_cell(record.event_type),
        "-" if record_hash is None else record_hash[:12],
        table_cell(payload),
    ]


ROW_HEADER = ["SEQ", "TIME (UTC)", "ATTEMPT", "SESSION", "EVENT", "CHAIN", "PAYLOAD"]


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


# Bytes read per step back from the end: bigger than the reader's block, since tail wants
# several records and a garbage tail is read through, not merely stepped over.
_BACK_BLOCK = 16 * TAIL_BLOCK


def last_records(path: Path, count: int) -> list[tuple[ReceiptRecord, bytes]]:
    """The last ``count`` well-typed records with their lines, reading back from the end.

    Memory holds the records found plus one line and one block, however much garbage lies
    between them and the end.

    :raises LedgerIOError: if the ledger exists but cannot be read.
    """
    if count <= 0:
        return []
    fd = open_ledger(path)
    if fd is None:
        return []
    try:
        while True:
            found: list[tuple[ReceiptRecord, bytes]] = []
            try:
                for line in lines_backward(fd, os.fstat(fd).st_size, _BACK_BLOCK):
                    record = decode_record(line) if line else None
                    if record is not None:
                        found.append((record, line))
                        if len(found) == count:
                            break
            except FileShrank:
                continue  # read the new end again
            found.reverse()
            return found
    except OSError as error:
        raise LedgerIOError.wrap(path, "read the ledger", error) from error
    finally:
        os.close(fd)


def follow_lines(
    path: Path, since_seq: int, *, poll_interval: float, stop: threading.Event
) -> Iterator[tuple[ReceiptRecord, bytes]]:
    """What :func:`follow` yields, each record with its line as stored (unknown keys, key order
    and all), until ``stop`` is set.

    :raises LedgerIOError: if the ledger exists but cannot be read.
    """
    offset = start_offset(path, since_seq)
    read: collections.deque[tuple[ReceiptRecord, bytes]] = collections.deque()

    def read_after(_: int) -> Iterator[ReceiptRecord]:
        nonlocal offset
        for record, line, end in iter_decoded(path, offset):
            offset = end
            if record is not None and line is not None:
                read.append((record, line))
                yield record

    for record in follow_with(
        read_after,
        since_seq,
        poll_interval=poll_interval,
        stop=stop,
        timeout=None,
        clock=time.monotonic,
        sleep=time.sleep,
        watch=path,
    ):
        # The loop may read ahead, and skips seqs it has yielded: match the record it yields.
        while read:
            candidate, line = read.popleft()
            if candidate is record:
                yield record, line
                break


def read_events(stream: TextIO, name: str = "<stdin>") -> list[ReceiptEvent]:
    """Parse JSON lines ``{"event_type": ..., "payload": ...}`` (blank lines skipped), each
    checked as an append would check it.

    :raises ValueError: naming the line that is not such an object, or not a valid event.
    """
    events = []
    for number, text in enumerate(stream, 1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except ValueError as error:
            raise ValueError(f"{name} line {number}: not JSON: {error}") from None
        except RecursionError:  # nested past the stack: far past what a payload may nest
            raise ValueError(f"{name} line {number}: nested too deep") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("event_type"), str):
            raise ValueError(f"{name} line {number}: expected an object with a string event_type")
        unknown = set(obj) - {"event_type", "payload"}
        if unknown:
            raise ValueError(f"{name} line {number}: unknown keys {sorted(unknown)}")
        try:
            encode_tail(obj["event_type"], obj.get("payload"))  # NaN, 1e400, lone surrogates
        except ValueError as error:
            raise ValueError(f"{name} line {number}: {error}") from None
        events.append(ReceiptEvent(obj["event_type"], obj.get("payload")))
    return events
