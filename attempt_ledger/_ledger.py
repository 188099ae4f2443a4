"""The ledger object: one (root, run, node) file, its sidecar lock and its append protocol."""

from __future__ import annotations

import errno
import functools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import attrs

from ._codec import EncodedBatch, check_expected_last_seq, empty_append, encode_batch
from ._errors import LedgerIOError, LockTimeout, SeqConflict, SeqExhausted
from ._locking import SidecarLock
from ._paths import lock_path_for, receipts_path
from ._protocol import Ledger
from ._reader import iter_records, read_last_seq, tail_state
from ._reconcile import follow, reconcile
from ._records import U64_MAX, AppendSummary, ReceiptEvent, ReceiptRecord, ReconcileSummary

_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)


def _check_timeout(_: object, __: object, value: float | None) -> None:
    if value is not None and not value >= 0:
        raise ValueError(f"lock_timeout must be None or >= 0, not {value!r}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Handles:
    """What a ledger keeps open between appends. Guarded by the lock's thread mutex."""

    __slots__ = ("fd", "head", "known", "new_run_dir")

    def __init__(self) -> None:
        self.fd: int | None = None
        # (attempt, session_id, encoded head) of the last append: workers repeat them. Read and
        # replaced as one tuple, so threads racing outside the lock never mix two entries.
        self.head: tuple[int, str, bytes] | None = None
        # (inode, size, last seq) after our last append: while the file still has that inode and
        # size, nobody has appended since, and the tail need not be read again.
        self.known: tuple[int, int, int] | None = None
        self.new_run_dir = False

    def close(self) -> None:
        self.known = None
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def __del__(self) -> None:
        # A ledger dropped without close() must not leak its descriptor.
        if self.fd is not None:
            os.close(self.fd)


@attrs.frozen(eq=False)
class AttemptLedger:
    """The append-only receipt ledger of one (run, node) under ``root``.

    Safe to share between threads, to use from several processes at once, and to use on both
    sides of a ``fork()``. It keeps two descriptors open (the ledger and its lock file) from the
    first append until :meth:`close`; a closed ledger reopens them when used again.

    :param root: the receipts root.
    :param run_id: the run's id, stored raw in each receipt; sanitized only for the path.
    :param node_id: the node's id, likewise.
    :param lock_timeout: seconds an append waits for the lock before raising
        :class:`LockTimeout`; ``None`` (default) waits as long as it takes, blocking in the kernel.
    :param durable: fsync the ledger after every append, and its directory (and the root's, for a
        new run directory) when a file or directory is created.
    :raises TypeError: if ``run_id`` or ``node_id`` is not a ``str``.
    :raises ValueError: if ``lock_timeout`` is negative.
    """

    root: Path = attrs.field(converter=Path)
    run_id: str
    node_id: str
    lock_timeout: float | None = attrs.field(default=None, validator=_check_timeout, kw_only=True)
    durable: bool = attrs.field(default=False, kw_only=True)
    #: The ledger file: ``root / sanitize(run_id) / sanitize(node_id).jsonl``.
    path: Path = attrs.field(init=False)
    #: The sidecar lock file, ``<path>.lock``.
    lock_path: Path = attrs.field(init=False)
    _lock: SidecarLock = attrs.field(init=False, repr=False)
    _handles: _Handles = attrs.field(init=False, repr=False, factory=_Handles)

    def __attrs_post_init__(self) -> None:
        for name in ("run_id", "node_id"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be str, not {type(getattr(self, name)).__name__}")
        path = receipts_path(self.root, self.run_id, self.node_id)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "lock_path", lock_path_for(path))
        make_parent = functools.partial(_make_run_dir, self.root, path.parent, self._handles)
        object.__setattr__(self, "_lock", SidecarLock(self.lock_path, make_parent=make_parent))

    def __reduce__(self) -> tuple[Any, ...]:
        # Descriptors and mutexes do not travel; a spawned worker gets a fresh ledger.
        return _rebuild, (self.root, self.run_id, self.node_id, self.lock_timeout, self.durable)

    def __enter__(self) -> AttemptLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the descriptors the ledger holds. It stays usable and reopens them on demand."""
        with self._lock.mutex:
            self._handles.close()
            self._lock.close()

    # -- appending ------------------------------------------------------------------------------

    def append(
        self,
        attempt: int,
        session_id: str,
        events: Iterable[ReceiptEvent],
        *,
        expected_last_seq: int | None = None,
    ) -> AppendSummary:
        """Append ``events`` as consecutive records, all or none.

        Every line is encoded and checked before the lock is taken; under the lock a torn last
        line is sealed with ``\\n``, the last seq read from the tail, and the batch written in one
        write loop. If that write fails, the file is truncated back to its size before the
        append. An empty batch writes and creates nothing.

        :returns: the ledger path, the seq of the last record written, and how many were written.
        :raises InvalidEvent: if an id, ``attempt`` or an event is not valid; nothing is written.
        :param expected_last_seq: append only if the ledger's last seq (as :meth:`last_seq`
            reads it) is this, checked under the lock: for workers that must not race each
            other.
        :raises SeqConflict: if ``expected_last_seq`` is given and is not the last seq; nothing
            is written.
        :raises SeqExhausted: if the batch would take seq past ``2**64 - 1``; nothing is written.
        :raises LockTimeout: if ``lock_timeout`` expires first.
        :raises LedgerIOError: if a system call fails; the file is left as it was.
        """
        expected_last_seq = check_expected_last_seq(self.path, expected_last_seq)
        cached = self._handles.head  # the ids of the last append, encoded: workers repeat them
        head = cached[2] if cached is not None and cached[:2] == (attempt, session_id) else None
        ids = (self.run_id, self.node_id, attempt, session_id)
        batch = encode_batch(self.path, *ids, events, head)  # checks the ids all the same
        if head is None:
            self._handles.head = (attempt, session_id, batch.head)
        if not batch.tails:
            return empty_append(self.path, self.last_seq(), expected_last_seq)
        lock = self._lock
        lock.acquire(self.lock_timeout)
        try:
            return self._append_locked(batch, expected_last_seq)
        finally:
            lock.release()

    def _try_append(
        self, batch: EncodedBatch, expected_last_seq: int | None = None
    ) -> AppendSummary | None:
        """:meth:`append` of an encoded batch if the lock is free at once; ``None`` if it is
        held (asyncio's append then waits without blocking its loop)."""
        lock = self._lock
        try:
            lock.acquire(0)
        except LockTimeout:
            return None
        try:
            return self._append_locked(batch, expected_last_seq)
        finally:
            lock.release()

    def _append_locked(
        self, batch: EncodedBatch, expected_last_seq: int | None = None
    ) -> AppendSummary:
        handles = self._handles
        fd = handles.fd if handles.fd is not None else self._ledger_fd()
        try:
            stat = os.fstat(fd)
            if not stat.st_nlink:  # deleted or replaced since we opened it: follow the path
                handles.close()
                fd = self._ledger_fd()
                stat = os.fstat(fd)
        except OSError as error:
            raise LedgerIOError.wrap(self.path, "stat the ledger", error) from error
        size = stat.st_size
        known = handles.known
        if known is not None and known[0] == stat.st_ino and known[1] == size:
            last_seq = known[2]
            seal = b""
        else:
            last_seq, seal = self._read_tail(fd, size)
        if expected_last_seq is not None and expected_last_seq != last_seq:
            raise SeqConflict(self.path, expected_last_seq, last_seq)
        count = len(batch.tails)
        if last_seq + count > U64_MAX:
            raise SeqExhausted(self.path, last_seq, count)
        data = batch.render(last_seq + 1, time.time_ns() // 1_000_000)
        if seal:
            data = seal + data
        handles.known = None
        try:
            _write_all(fd, data)
            if self.durable:
                os.fsync(fd)
        except OSError as error:
            self._roll_back(fd, size, error)
        last_seq += count
        handles.known = (stat.st_ino, size + len(data), last_seq)
        return AppendSummary(self.path, last_seq, count)

    def _read_tail(self, fd: int, size: int) -> tuple[int, bytes]:
        # Returns the last seq once a torn last line is sealed, and the seal to write first.
        try:
            last_seq, torn, _ = tail_state(fd, size)
        except OSError as error:
            raise LedgerIOError.wrap(self.path, "read the ledger's tail", error) from error
        return last_seq, b"\n" if torn else b""

    def _roll_back(self, fd: int, size: int, error: OSError) -> NoReturn:
        try:
            os.ftruncate(fd, size)
        except OSError as truncate_error:
            reason = f"append failed ({error.strerror}) and so did truncating it away"
            raise LedgerIOError(
                self.path, f"{reason}: {truncate_error.strerror}", error.errno
            ) from error
        raise LedgerIOError.wrap(self.path, "append to the ledger", error) from error

    def _ledger_fd(self) -> int:
        handles = self._handles
        if handles.fd is None:
            created = False
            try:
                try:
                    handles.fd = os.open(self.path, _OPEN_FLAGS)
                except FileNotFoundError:
                    handles.fd = os.open(self.path, _OPEN_FLAGS | os.O_CREAT, 0o666)
                    created = True
                if self.durable and (created or handles.new_run_dir):
                    _fsync_dir(self.path.parent)
                    if handles.new_run_dir:
                        _fsync_dir(self.root)
                    handles.new_run_dir = False
            except OSError as error:
                handles.close()
                raise LedgerIOError.wrap(self.path, "open the ledger", error) from error
        return handles.fd

    # -- reading --------------------------------------------------------------------------------

    def last_seq(self) -> int:
        """Return the seq of the last valid line; 0 for a missing or empty ledger. Takes no lock.

        :raises LedgerIOError: if the ledger exists but cannot be read.
        """
        return read_last_seq(self.path)

    def records(self) -> list[ReceiptRecord]:
        """Return every well-typed record, in file order; ``[]`` for a missing ledger.

        :raises LedgerIOError: if the ledger exists but cannot be read.
        """
        return list(iter_records(self.path))

    def iter_records(self, since_seq: int | None = None) -> Iterator[ReceiptRecord]:
        """Yield the well-typed records with ``seq > since_seq``, in file order, streaming.

        ``None`` (the default) yields every record, seq 0 included.

        Memory stays bounded by the longest line, whatever the file's size. Records appended
        while iterating are yielded too, up to the end of file the iteration reaches.

        :raises LedgerIOError: if the ledger exists but cannot be read.
        """
        return iter_records(self.path, since_seq)

    def reconcile(
        self,
        expected_min_seq: int,
        max_wait_ms: int,
        poll_interval_ms: int = 10,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> ReconcileSummary:
        """Wait until the ledger's last seq reaches ``expected_min_seq`` (0 means 1).

        See :func:`attempt_ledger.reconcile_receipts` for the loop's rules.

        :raises LedgerIOError: if the ledger exists but cannot be read.
        """
        return reconcile(
            self.last_seq,
            expected_min_seq,
            max_wait_ms,
            poll_interval_ms,
            clock=clock,
            sleep=sleep,
            watch=self.path,
        )

    def follow(
        self,
        since_seq: int = 0,
        *,
        poll_interval: float = 0.05,
        stop: threading.Event | None = None,
        timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[ReceiptRecord]:
        """Yield the records with ``seq > since_seq``, then each new one as it is appended.

        Waits between reads with :meth:`reconcile`'s loop. Ends when ``stop`` is set (at once,
        even mid-wait) or after ``timeout`` seconds; with neither, it follows until the
        consumer stops iterating.

        :raises LedgerIOError: if the ledger exists but cannot be read.
        """
        return follow(
            self.path,
            since_seq,
            poll_interval=poll_interval,
            stop=stop,
            timeout=timeout,
            clock=clock,
            sleep=sleep,
        )


def _make_run_dir(root: Path, run_dir: Path, handles: _Handles) -> None:
    # A plain function, not a method: the lock holds it, and a ledger -> lock -> ledger cycle
    # would keep a dropped ledger's descriptors open until the cycle collector ran.
    try:
        try:
            os.mkdir(run_dir)
        except FileNotFoundError:
            os.makedirs(root, exist_ok=True)
            os.mkdir(run_dir)
        handles.new_run_dir = True
    except (FileExistsError, NotADirectoryError, FileNotFoundError) as error:
        # Name the file that stands where a directory should be, not just the symptom.
        for path in (run_dir, *run_dir.parents):
            if path.exists() or path.is_symlink():
                if path.is_dir():
                    break
                reason = f"is not a directory, so the run directory {run_dir} cannot be made"
                raise LedgerIOError(path, reason, errno.ENOTDIR) from error
        if not isinstance(error, FileExistsError):
            raise LedgerIOError.wrap(run_dir, "create the run directory", error) from error
    except OSError as error:
        raise LedgerIOError.wrap(run_dir, "create the run directory", error) from error


def _rebuild(
    root: Path, run_id: str, node_id: str, lock_timeout: float | None, durable: bool
) -> AttemptLedger:
    return AttemptLedger(root, run_id, node_id, lock_timeout=lock_timeout, durable=durable)


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written < len(data):  # a short write: rare, so the view is only made then
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


def _conforms(ledger: AttemptLedger) -> Ledger:
    return ledger  # mypy checks that AttemptLedger satisfies the protocol
