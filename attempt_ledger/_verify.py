"""Checking ledgers line by line: what ``attempt-ledger verify`` reports."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

from ._errors import LedgerError, LedgerIOError, LockTimeout
from ._inspect import list_ledgers
from ._lines import could_open_object, decode_record, line_seq
from ._paths import lock_path_for, sanitize_segment
from ._reader import iter_lines, open_ledger
from ._verify_chain import verify_receipt_ledger


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


#: Seconds ``verify`` waits for a ledger's lock to tell an append in flight from a torn tail.
LOCK_TIMEOUT = 10.0

# O_NONBLOCK: opening a FIFO put at the lock path must not wait for a writer.
_LOCK_FLAGS = (
    os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
)


class _Checker:
    """The state of one ledger's check: the seqs and raw ids seen so far."""

    def __init__(self, path: Path, run_name: str, node_name: str, run_ids: _Ids) -> None:
        self.path, self.run_name, self.node_name = path, run_name, node_name
        self.run_ids, self.node_ids = run_ids, _Ids()
        self.previous: int | None = None
        self.highest = 0

    def line(self, number: int, line: bytes | None) -> Iterator[Problem]:
        """The problems of line ``number``."""
        path = self.path
        verdict = _judge(line)
        if verdict is not None:
            yield Problem(path, number, *verdict)
            return
        assert line is not None
        seq = line_seq(line)
        assert seq is not None
        yield from _seq_problems(path, number, self.previous, self.highest, seq)
        self.previous, self.highest = seq, max(self.highest, seq)
        record = decode_record(line)
        if record is None:
            yield Problem(path, number, "not-a-record", f"seq {seq} has no well-typed receipt")
        elif sanitize_segment(record.run_id) != self.run_name:
            yield Problem(path, number, "wrong-ledger", f"run_id {record.run_id!r}")
        elif sanitize_segment(record.node_id) != self.node_name:
            yield Problem(path, number, "wrong-ledger", f"node_id {record.node_id!r}")
        else:
            for ids, raw in ((self.run_ids, record.run_id), (self.node_ids, record.node_id)):
                collision = ids.add(raw, path, number)
                if collision is not None:
                    yield collision


def verify_ledger(
    path: Path,
    run_name: str,
    node_name: str,
    run_ids: _Ids | None = None,
    *,
    lock_timeout: float = LOCK_TIMEOUT,
    missing_ok: bool = False,
) -> Iterator[Problem]:
    """Yield the problems of one ledger, in file order.

    The lines are read without a lock, so appends may go on. Bytes after the last newline are
    an append in flight until the ledger's lock says otherwise: they are judged only as the
    file stands while the lock is held (taken briefly, on a shared read-only descriptor).
    A final line that lacks only its newline counts as a line, as readers count it.

    :param missing_ok: a missing ledger has no problems (one removed since it was listed).
    :raises LedgerIOError: if the ledger or its lock file cannot be read, or it is missing.
    :raises LockTimeout: if the lock stays taken for ``lock_timeout`` seconds.
    """
    checker = _Checker(path, run_name, node_name, run_ids if run_ids is not None else _Ids())
    fd = open_ledger(path)
    if fd is None:
        if missing_ok:
            return
        raise LedgerIOError(path, "cannot open the ledger: no such file", errno.ENOENT)
    number = end = 0
    try:
        for number, (line, line_end) in enumerate(iter_lines(fd, fragment=False), 1):
            end = line_end
            yield from checker.line(number, line)
        if os.fstat(fd).st_size == end:
            return
        size, torn = _settled_tail(fd, lock_path_for(path), lock_timeout)
        for line, line_end in iter_lines(fd, end, fragment=False):  # whole lines since
            if line_end > size:
                break
            number, end = number + 1, line_end
            yield from checker.line(number, line)
        fragment = _fragment(fd, end, size) if torn and size > end else None
    except LedgerError:  # about the lock file, already named; LockTimeout is an OSError too
        raise
    except OSError as error:
        raise LedgerIOError.wrap(path, "read the ledger", error) from error
    finally:
        os.close(fd)
    if fragment is None:
        return
    if fragment and line_seq(fragment) is not None:
        yield from checker.line(number + 1, fragment)
        yield Problem(path, number + 1, "torn-tail", "the last line has no final newline")
    else:
        yield Problem(path, None, "torn-tail", f"{size - end} bytes after the last newline")


def _try_lock(fd: int) -> bool:
    """Take a shared lock on ``fd`` if it is free (an appender's exclusive lock excludes it)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _settled_tail(fd: int, lock_path: Path, timeout: float) -> tuple[int, bool]:
    """Return the ledger's size and whether it ends torn, as it stands while no append is in
    flight: under the lock, which is opened read-only and never created (without a lock file
    no append has ever run).

    :raises LedgerIOError: if the lock file cannot be opened or locked.
    :raises LockTimeout: if the lock stays taken for ``timeout`` seconds.
    :raises OSError: if the ledger cannot be read.
    """
    try:
        lock_fd = os.open(lock_path, _LOCK_FLAGS)
    except FileNotFoundError:
        lock_fd = None
    except OSError as error:
        raise LedgerIOError.wrap(lock_path, "open the lock file", error) from error
    try:
        if lock_fd is not None:
            deadline, delay = time.monotonic() + timeout, 50e-6
            while not _try_lock(lock_fd):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LockTimeout(lock_path, timeout)
                time.sleep(min(delay, remaining))  # back off: appends hold it for microseconds
                delay = min(delay * 2, 5e-3)
        size = os.fstat(fd).st_size
        return size, size > 0 and os.pread(fd, 1, size - 1) != b"\n"
    finally:
        if lock_fd is not None:
            os.close(lock_fd)  # releases the lock


def _fragment(fd: int, start: int, end: int) -> bytes:
    """The unterminated bytes ``[start, end)``, or b"" when they cannot be one JSON object
    (read whole only then, so a torn tail of garbage costs no memory)."""
    head = os.pread(fd, min(64, end - start), start)
    tail = os.pread(fd, min(64, end - start), max(start, end - 64))
    if not could_open_object(head) or not tail.rstrip(b" \t\r").endswith(b"}"):
        return b""
    return os.pread(fd, end - start, start)


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
    """Yield the problems of every ledger under ``root``, collisions across a run and hash
    chains included."""
    run_ids: dict[str, _Ids] = {}
    for run_name, node_name, path in list_ledgers(root):
        ids = run_ids.setdefault(run_name, _Ids())
        # A ledger removed since it was listed (prune running meanwhile) is skipped.
        yield from verify_ledger(path, run_name, node_name, ids, missing_ok=True)
        yield from chain_problems(path)


# What the hash-chain verifier finds that the line checks above do not (seqs, torn tails and
# lines that are not records are theirs).
_CHAIN_KINDS = frozenset(
    {
        "record_hash_mismatch",
        "chain_break",
        "dangling_prev_hash",
        "unhashed_after_hashed",
        "missing_record_hash",
        "bad_hash_fields",
        "wrong_version",
        "duplicate_key",
        "root_hash_not_found",
    }
)


def chain_problems(path: Path, root_hash: str | None = None) -> Iterator[Problem]:
    """Yield the hash-chain problems of the ledger at ``path`` (see
    :func:`verify_receipt_ledger`), kinds spelt with hyphens like the others.

    :param root_hash: a root hash saved earlier, which some record must have.
    :raises LedgerIOError: if the ledger cannot be read.
    """
    for problem in verify_receipt_ledger(path, expected_root_hash=root_hash).problems:
        if problem.kind in _CHAIN_KINDS:
            yield Problem(path, problem.line, problem.kind.replace("_", "-"), problem.detail)
