"""Checking ledgers line by line: what ``attempt-ledger verify`` reports."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import attrs

from ._codec import decode_record, line_seq
from ._errors import LedgerIOError
from ._paths import iter_ledgers, sanitize_segment
from ._reader import iter_lines, open_ledger


@attrs.frozen
class Problem:
    """One finding: ``path:line: kind: detail`` (``line`` is None for the file as a whole)."""

    path: Path
    line: int | None
    kind: str
    detail: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.kind}: {self.detail}"


def _judge(line: bytes | None) -> tuple[str, str] | None:
    """Why a line is not a valid one, or None if it is."""
    if line is None:
        return "malformed", "not JSON (raw control bytes, or no object brackets)"
    if not line.strip(b" \t\r"):
        return "blank", "blank line"
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as error:
        return "invalid-utf8", f"invalid UTF-8 at byte {error.start}"
    if line_seq(line) is None:
        return "malformed", "not a JSON object with an integer seq in 0..2**64-1"
    return None


class _Ids:
    """The raw ids seen under one sanitized name, to find names that several ids share."""

    def __init__(self) -> None:
        self.first: tuple[str, Path, int] | None = None
        self.reported: set[str] = set()

    def add(self, raw: str, path: Path, line: int) -> Problem | None:
        """Note ``raw`` seen at ``path:line``; a problem the first time a second id shows up."""
        if self.first is None:
            self.first = (raw, path, line)
            return None
        first, first_path, first_line = self.first
        if raw == first or raw in self.reported:
            return None
        self.reported.add(raw)
        where = f"{first_path}:{first_line}"
        return Problem(
            path, line, "path-collision", f"{raw!r} shares the path with {first!r} ({where})"
        )


def verify_ledger(
    path: Path, run_name: str, node_name: str, run_ids: _Ids | None = None
) -> Iterator[Problem]:
    """Yield the problems of one ledger, in file order.

    :raises LedgerIOError: if the ledger cannot be read.
    """
    run_ids = run_ids if run_ids is not None else _Ids()
    node_ids = _Ids()
    previous: int | None = None
    highest = end = 0
    fd = open_ledger(path)
    if fd is None:
        raise LedgerIOError(path, "cannot open the ledger: no such file", errno.ENOENT)
    try:
        for number, (line, line_end) in enumerate(iter_lines(fd), 1):
            end = line_end
            verdict = _judge(line)
            if verdict is not None:
                yield Problem(path, number, *verdict)
                continue
            assert line is not None
            seq = line_seq(line)
            assert seq is not None
            yield from _seq_problems(path, number, previous, highest, seq)
            previous, highest = seq, max(highest, seq)
            record = decode_record(line)
            if record is None:
                yield Problem(path, number, "not-a-record", f"seq {seq} has no well-typed receipt")
                continue
            if sanitize_segment(record.run_id) != run_name:
                yield Problem(path, number, "wrong-ledger", f"run_id {record.run_id!r}")
            elif sanitize_segment(record.node_id) != node_name:
                yield Problem(path, number, "wrong-ledger", f"node_id {record.node_id!r}")
            else:
                for ids, raw in ((run_ids, record.run_id), (node_ids, record.node_id)):
                    collision = ids.add(raw, path, number)
                    if collision is not None:
                        yield collision
        size = os.fstat(fd).st_size
    except OSError as error:
        raise LedgerIOError.wrap(path, "read the ledger", error) from error
    finally:
        os.close(fd)
    if size > end:
        yield Problem(path, None, "torn-tail", f"{size - end} bytes after the last newline")


def _seq_problems(
    path: Path, number: int, previous: int | None, highest: int, seq: int
) -> Iterator[Problem]:
    # Gaps count from the highest seq so far, so one line out of order is reported once.
    expected = highest + 1
    if seq == previous:
        yield Problem(path, number, "duplicate-seq", f"seq {seq} again")
    elif previous is not None and seq <= highest:
        yield Problem(path, number, "out-of-order", f"seq {seq} after {previous}")
    elif seq > expected:
        missing = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
        yield Problem(path, number, "seq-gap", f"seq {seq}: missing {missing}")


def verify_root(root: Path) -> Iterator[Problem]:
    """Yield the problems of every ledger under ``root``, collisions across a run included."""
    run_ids: dict[str, _Ids] = {}
    for run_name, node_name, path in iter_ledgers(root):
        yield from verify_ledger(path, run_name, node_name, run_ids.setdefault(run_name, _Ids()))
