"""Reading a ledger without a lock: the last valid seq from the tail, and lines from the front.

Lines end in ``\\n``; the bytes after the last one (a record that lost its ``\\n`` in a crash, an
append in flight, a torn write) count as a line when they parse on their own as a valid line,
as the next append's seal will make them one; a fragment that does not parse is skipped. (No
proper prefix of a line can parse as one: a JSON object only closes at its end.) Both readers
hold at most one line plus one block: a piece of a long line that can no longer be a JSON object
(a raw control byte, or the wrong bracket at its outer end) is dropped as soon as it is seen,
so scanning a region of garbage costs no memory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import NamedTuple

from ._chain import record_hash_of
from ._errors import LedgerIOError
from ._files import CLOEXEC, open_regular
from ._lines import could_open_object, decode_record, line_seq
from ._records import ReceiptRecord

#: Bytes read per step when scanning back from the end of a ledger.
TAIL_BLOCK = 4096

#: Bytes read per step when reading a ledger from the front.
READ_CHUNK = 1 << 20

# JSON text holds no raw control byte but whitespace (and "\n" never occurs inside a line).
_NOT_JSON = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_JSON_SPACE = b" \t\r"


class _Pending:
    """The pieces of one line gathered so far, from one end; dropped once they cannot be JSON.

    ``backward`` pieces arrive right to left (the line must close with ``}``), otherwise left to
    right (it must open like an object).
    """

    __slots__ = ("backward", "edge_seen", "hopeless", "pieces")

    def __init__(self, *, backward: bool, hopeless: bool = False) -> None:
        self.backward = backward
        self.pieces: list[bytes] = []
        self.edge_seen = False
        self.hopeless = hopeless

    def reset(self) -> None:
        self.pieces = []
        self.edge_seen = False
        self.hopeless = False

    def add(self, piece: bytes) -> None:
        if self.hopeless or not piece:
            return
        if _NOT_JSON.search(piece):
            self.hopeless = True
        elif not self.edge_seen and piece.strip(_JSON_SPACE):
            self.edge_seen = True
            if self.backward:
                self.hopeless = not piece.rstrip(_JSON_SPACE).endswith(b"}")
            else:
                self.hopeless = not could_open_object(piece)
        if self.hopeless:
            self.pieces = []
        else:
            self.pieces.append(piece)

    def take_line(self, first: bytes) -> bytes:
        """Return the line whose leftmost piece is ``first`` (backward), and reset."""
        pieces, hopeless = self.pieces, self.hopeless
        self.reset()
        if hopeless:
            return b""
        if not pieces:
            return first
        # Refuse a long line by its opening before joining it: joining doubles its memory.
        if not could_open_object(first + pieces[-1][:64]):
            return b""
        pieces.append(first)
        pieces.reverse()
        line = b"".join(pieces)
        del pieces[:]
        return line


def scan_last_seq(fd: int, end: int, block_size: int = TAIL_BLOCK) -> int:
    """Return the seq of the last valid line inside ``[0, end)`` of ``fd``, or 0.

    :param block_size: bytes read per step (a parameter so tests can hit block boundaries).
    :raises OSError: if reading fails.
    """
    return _scan(fd, end, block_size, None)[0]


class Tail(NamedTuple):
    """What an append needs from the end of a ledger."""

    #: The seq of the last valid line, 0 if none.
    last_seq: int
    #: Whether the file does not end in ``\n`` (the append seals it first).
    torn: bool
    #: The ``record_hash`` the last valid line ends with, ``None`` if it is not hashed.
    last_hash: str | None


def tail_state(fd: int, end: int, block_size: int = TAIL_BLOCK) -> Tail:
    """Return the last seq and hash, and whether the last line is torn (has no ``\\n`` yet).

    One read serves every answer in the common case (the last line fits in a block).

    :raises OSError: if reading fails.
    """
    if end <= 0:
        return Tail(0, False, None)
    start = max(0, end - block_size)
    chunk = os.pread(fd, end - start, start)
    torn = chunk[-1:] != b"\n"
    # The common case without the general scan's bookkeeping: the last line (the fragment, if
    # torn) lies wholly in this block and is valid.
    hi = len(chunk) if torn else len(chunk) - 1
    newline = chunk.rfind(b"\n", 0, hi)
    if (newline >= 0 or start == 0) and len(chunk) == end - start:
        line = chunk[newline + 1 : hi]
        seq = line_seq(line)
        if seq is not None:
            return Tail(seq, torn, record_hash_of(line))
    seq, line = _scan(fd, end, block_size, chunk)
    return Tail(seq, torn, record_hash_of(line))


def _scan(fd: int, end: int, block_size: int, chunk: bytes | None) -> tuple[int, bytes]:
    # The seq of the last valid line and the line, or (0, b"").
    while True:
        try:
            for line in lines_backward(fd, end, block_size, chunk):
                seq = line_seq(line)
                if seq is not None:
                    return seq, line
            return 0, b""
        except FileShrank:  # a writer rolled back a failed append: start over from the new end
            end, chunk = os.fstat(fd).st_size, None


class FileShrank(Exception):
    """The file got shorter than the offset being read back from (an append rolled back)."""


def lines_backward(
    fd: int, end: int, block_size: int = TAIL_BLOCK, chunk: bytes | None = None
) -> Iterator[bytes]:
    """Yield the lines of ``[0, end)`` of ``fd`` last first, the bytes after the last ``\\n``
    first of all; a line found unable to be a JSON object comes as ``b""``, its bytes dropped.

    Holds at most one line plus one block.

    :param chunk: the last block, ``[end - block_size, end)``, when the caller has read it.
    :raises FileShrank: if the file got shorter than ``end`` meanwhile.
    :raises OSError: if reading fails.
    """
    pending = _Pending(backward=True)
    pos = end
    while pos > 0:
        start = max(0, pos - block_size)
        if chunk is None:
            chunk = os.pread(fd, pos - start, start)
        if len(chunk) != pos - start:
            raise FileShrank
        hi = len(chunk)
        while (newline := chunk.rfind(b"\n", 0, hi)) >= 0:
            yield pending.take_line(chunk[newline + 1 : hi])
            hi = newline
        pending.add(chunk[:hi])
        pos = start
        chunk = None
    yield pending.take_line(b"")  # the first line of the file


def iter_lines(
    fd: int, offset: int = 0, chunk_size: int = READ_CHUNK, *, fragment: bool = True
) -> Iterator[tuple[bytes | None, int]]:
    """Yield ``(line, end)`` for each line from ``offset`` on; ``end`` is past its ``\\n``.

    A long line found unable to be a JSON object while it was read is yielded as ``None``, its
    bytes dropped. Reads until end of file.

    :param fragment: also yield the bytes after the last ``\\n`` (``end`` is then the end of
        file) when they parse on their own as a valid line; ``False`` yields ``\\n``-ended
        lines only.
    :raises OSError: if reading fails.
    """
    pending = _Pending(backward=False)
    while chunk := os.pread(fd, chunk_size, offset):
        low = 0
        while (newline := chunk.find(b"\n", low)) >= 0:
            line: bytes | None = chunk[low:newline]
            if pending.hopeless:
                line = None
            elif pending.pieces:
                line = b"".join([*pending.pieces, chunk[low:newline]])
            yield line, offset + newline + 1
            pending.reset()
            low = newline + 1
        pending.add(chunk[low:])
        offset += len(chunk)
    if fragment and pending.pieces and not pending.hopeless:
        line = b"".join(pending.pieces)
        if line_seq(line) is not None:
            yield line, offset


def read_last_seq(path: str | os.PathLike[str], block_size: int = TAIL_BLOCK) -> int:
    """Return the seq of the last valid line of the ledger at ``path``; 0 if it is missing or empty.

    Reads backwards from the end in blocks, so its cost does not depend on the file's size when
    its tail is valid.

    :raises LedgerIOError: if the path exists but cannot be read (a directory, no permission).
    """
    fd = open_ledger(path)
    if fd is None:
        return 0
    try:
        return scan_last_seq(fd, os.fstat(fd).st_size, block_size)
    except OSError as error:
        raise LedgerIOError.wrap(path, "read the ledger", error) from error
    finally:
        os.close(fd)


def iter_records(
    path: str | os.PathLike[str], since_seq: int | None = None
) -> Iterator[ReceiptRecord]:
    """Yield the well-typed records of the ledger at ``path``, in order.

    A missing file yields nothing. Streams: memory is bounded by the longest line.

    :param since_seq: yield only records with ``seq > since_seq``; ``None`` yields them all
        (seq 0 included).
    :raises LedgerIOError: if the path exists but cannot be read.
    """
    for record, _, _ in iter_decoded(path):
        if record is not None and (since_seq is None or record.seq > since_seq):
            yield record


def iter_decoded(
    path: str | os.PathLike[str], offset: int = 0
) -> Iterator[tuple[ReceiptRecord | None, bytes | None, int]]:
    """Yield ``(record or None, line, end)`` for each complete line from byte ``offset`` on.

    ``line`` is as :func:`iter_lines` gives it, ``end`` the offset just past its newline.

    A file now shorter than ``offset`` (rolled back, replaced) is read from the start.

    :raises LedgerIOError: if the path exists but cannot be read.
    """
    fd = open_ledger(path)
    if fd is None:
        return
    try:
        if os.fstat(fd).st_size < offset:
            offset = 0
        for line, end in iter_lines(fd, offset):
            yield (None if line is None else decode_record(line)), line, end
    except OSError as error:
        raise LedgerIOError.wrap(path, "read the ledger", error) from error
    finally:
        os.close(fd)


def open_ledger(path: str | os.PathLike[str]) -> int | None:
    """Open a ledger for reading; ``None`` if it does not exist.

    Never blocks, and never opens anything but a regular file (a FIFO would block ``open()``).

    :raises LedgerIOError: if it exists but cannot be opened, is a symbolic link or is not a
        regular file.
    """
    try:
        return open_regular(path, os.O_RDONLY | CLOEXEC, "open the ledger")[0]
    except FileNotFoundError:
        return None
