"""The ledger object: one (root, run, node) file, its sidecar lock and its append protocol."""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import attrs

from ._chain import render_chained
from ._codec import EncodedBatch, check_expected_last_seq, empty_append, encode_batch
from ._errors import LedgerError, LedgerIOError, LockTimeout, SeqConflict, SeqExhausted
from ._groupsync import Unsynced, unknown_durability
from ._handles import Handles, make_run_dir, read_tail, roll_back, write_all
from ._locking import SidecarLock, StaleLock, check_timeout
from ._paths import lock_path_for, name_error, receipts_path, to_root
from ._protocol import Ledger
from ._reader import iter_records, read_last_seq
from ._reconcile import follow, reconcile
from ._records import (
    U64_MAX,
    AppendSummary,
    ReceiptEvent,
    ReceiptRecord,
    ReconcileSummary,
    append_summary,
)


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
        :class:`LockTimeout`; ``None`` (default) waits as long as it takes (naps, then blocking
        in the kernel), as does ``math.inf`` (or any wait over ``threading.TIMEOUT_MAX``).
    :param durable: fsync the ledger after every append, and its directory when the ledger is
        created, and the parent of every directory an append creates (run directory, root).
        The ledger's fsync runs after the lock is released (group commit): an append returns
        once an fsync that began after its write has succeeded.
    :param hash_chain: write schema-2 records, each chained to the one before by SHA-256. An
        append to a ledger whose last valid line is a hashed record continues the chain
        whatever this says: this library never breaks a chain.
    :raises TypeError: if ``root`` is not a ``str`` or path, ``run_id`` or ``node_id`` not a
        ``str``, ``lock_timeout`` not ``None``, an ``int`` or a ``float``, ``durable`` or
        ``hash_chain`` not a ``bool``.
    :raises ValueError: if ``lock_timeout`` is negative or NaN, or ``root`` holds a NUL or
        cannot be encoded as a file name.
    :raises LedgerIOError: if the run directory's or the ledger's name is longer than a file
        name may be (255 bytes; ``errno`` ``ENAMETOOLONG``), naming it.
    """

    root: Path = attrs.field(converter=to_root)
    run_id: str
    node_id: str
    lock_timeout: float | None = attrs.field(default=None, validator=check_timeout, kw_only=True)
    durable: bool = attrs.field(
        default=False, validator=attrs.validators.instance_of(bool), kw_only=True
    )
    hash_chain: bool = attrs.field(
        default=False, validator=attrs.validators.instance_of(bool), kw_only=True
    )
    #: The ledger file: ``root / sanitize(run_id) / sanitize(node_id).jsonl``.
    path: Path = attrs.field(init=False)
    #: The sidecar lock file, ``<path>.lock``.
    lock_path: Path = attrs.field(init=False)
    _path: str = attrs.field(init=False, repr=False)  # path as a str, for the per-append lstat
    _lock: SidecarLock = attrs.field(init=False, repr=False)
    _handles: Handles = attrs.field(init=False, repr=False, factory=Handles)

    def __attrs_post_init__(self) -> None:
        for name in ("run_id", "node_id"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be str, not {type(getattr(self, name)).__name__}")
        path = receipts_path(self.root, self.run_id, self.node_id)
        too_long = name_error(path)
        if too_long is not None:
            raise too_long
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "lock_path", lock_path_for(path))
        object.__setattr__(self, "_path", os.fspath(path))
        make_parent = functools.partial(make_run_dir, path.parent, self._handles)
        lock = SidecarLock(self.lock_path, make_parent=make_parent, nap=not self.durable)
        object.__setattr__(self, "_lock", lock)

    def __reduce__(self) -> tuple[Any, ...]:
        # Descriptors and mutexes do not travel; a spawned worker gets a fresh ledger.
        options = (self.lock_timeout, self.durable, self.hash_chain)
        return _rebuild, (self.root, self.run_id, self.node_id, *options)

    def __enter__(self) -> AttemptLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the descriptors the ledger holds. It stays usable and reopens them on demand."""
        with self._lock.mutex:
            self._handles.close()
            self._lock.close()

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

        :param attempt: the attempt number, an ``int`` in 0..2**32-1.
        :param session_id: who appends (a worker, a session), stored raw.
        :param events: the events to record (:class:`ReceiptEvent`), one line each, in order.
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
        :raises DurabilityUnknown: in durable mode, if the fsync failed after another writer had
            appended: the records stay, as the seqs it names; their durability is unknown.
        """
        if expected_last_seq is not None:
            expected_last_seq = check_expected_last_seq(self.path, expected_last_seq)
        path, cached = self.path, self._handles.head  # the last append's ids, encoded
        exact = type(attempt) is int and type(session_id) is str  # a subclass may lie in ==
        head: bytes | None = None
        if exact and cached is not None and cached[0] == attempt and cached[1] == session_id:
            head = cached[2]  # the very ids, checked then: workers repeat them
        batch = encode_batch(path, self.run_id, self.node_id, attempt, session_id, events, head)
        if head is None and exact:
            self._handles.head = (attempt, session_id, batch.head)
        if not batch.tails:
            return empty_append(path, self.last_seq(), expected_last_seq)
        lock = self._lock
        while True:  # _under_lock(), inline: the call cost ~3% of a 1-event append
            lock.acquire(self.lock_timeout)
            try:
                summary, unsynced = self._write_locked(batch, expected_last_seq)
                break
            except StaleLock:
                lock.close()  # the lock file is no longer at its path: lock the one that is
            finally:
                try:
                    lock.release()
                except BaseException:  # a signal's handler raising as it was called
                    lock.release_again()
                    raise
        if unsynced is None:
            return summary
        return self._await_sync(summary, unsynced, relock=True)  # durable: group commit

    def _try_append(self, batch: EncodedBatch, expected: int | None = None) -> AppendSummary | None:
        """:meth:`append` of an encoded batch, fsynced before the release, if the lock is free at
        once; ``None`` if it is held (asyncio's append then waits without blocking its loop)."""
        try:
            return self._under_lock(batch, expected, 0)
        except LockTimeout:
            return None

    def _under_lock(
        self, batch: EncodedBatch, expected: int | None, timeout: float | None
    ) -> AppendSummary:
        # append()'s loop (it keeps its own copy inline), with the fsync before the release.
        lock = self._lock
        while True:
            lock.acquire(timeout)
            try:
                return self._await_sync(*self._write_locked(batch, expected), relock=False)
            except StaleLock:
                lock.close()  # the lock file is no longer at its path: lock the one that is
            finally:
                try:
                    lock.release()
                except BaseException:  # a signal's handler raising as it was called
                    lock.release_again()
                    raise

    def _write_locked(
        self, batch: EncodedBatch, expected_last_seq: int | None
    ) -> tuple[AppendSummary, Unsynced | None]:
        # The append under the lock, without its fsync: returns what to wait for, if durable.
        handles = self._handles
        if handles.sync is not None and handles.sync.inherited:
            handles.close()  # a fork child: sync through a description of its own
        # One lstat of the path, where an fstat of the descriptor would do for the size: the
        # same inode means the same file, so the same size; another inode, or none, means the
        # ledger was moved, removed or replaced since we opened it: follow the path.
        fd = handles.fd
        stat: os.stat_result | None = None
        if fd is not None:
            try:
                stat = os.lstat(self._path)
            except FileNotFoundError:
                pass
            except OSError as error:
                raise LedgerIOError.wrap(self.path, "stat the ledger", error) from error
            if stat is not None and (stat.st_ino != handles.ino or stat.st_dev != handles.dev):
                stat = None
        if fd is None or stat is None:
            # (Re)opening the ledger: first make sure the lock we hold is the one at its path. A
            # run directory moved away takes its lock file along, still linked.
            if not self._lock.is_current():
                raise StaleLock
            handles.close()
            fd, stat = self._handles.open(self.path, durable=self.durable)
        size = stat.st_size
        known = handles.known
        if known is not None and known[0] == stat.st_ino and known[1] == size:
            last_seq, seal, last_hash = known[2], b"", known[3]
        else:
            last_seq, seal, last_hash = read_tail(self.path, fd, size)
        if expected_last_seq is not None and expected_last_seq != last_seq:
            raise SeqConflict(self.path, expected_last_seq, last_seq)
        count = len(batch.tails)
        if last_seq + count > U64_MAX:
            raise SeqExhausted(self.path, last_seq, count)
        ts_ms = time.time_ns() // 1_000_000
        if self.hash_chain or last_hash is not None:  # a chain is never broken
            data, last_hash = render_chained(batch, last_seq + 1, ts_ms, last_hash, checked=True)
        else:
            data = batch.render(last_seq + 1, ts_ms)
        if seal:
            data = seal + data
        handles.known = None
        try:
            write_all(fd, data)
        except OSError as error:
            roll_back(self.path, fd, size, error)
        last_seq += count
        handles.known = (stat.st_ino, size + len(data), last_seq, last_hash)
        summary = append_summary(self.path, last_seq, count)
        sync = handles.sync
        if sync is None:
            return summary, None
        return summary, Unsynced(sync, sync.ticket(), size, size + len(data))

    def _await_sync(
        self, summary: AppendSummary, unsynced: Unsynced | None, *, relock: bool
    ) -> AppendSummary:
        # Durable mode: wait for an fsync that began after the write (with or without the lock).
        if unsynced is not None:
            try:
                unsynced.sync.wait(unsynced.ticket, unlocked=relock)
            except OSError as error:
                self._take_back(summary, unsynced, error, relock)
        return summary

    def _take_back(
        self, summary: AppendSummary, unsynced: Unsynced, error: OSError, relock: bool
    ) -> NoReturn:
        # The fsync failed: under the lock (taken again if released), take the records back if
        # they still end the file; if not, or the lock cannot be had, say what is known.
        lock, handles = self._lock, self._handles
        try:
            if relock:
                lock.acquire(self.lock_timeout)
        except LedgerError as lock_error:
            why = f"the lock could not be taken again ({lock_error.reason})"
            raise unknown_durability(summary, error, why) from error
        try:
            fd = handles.fd
            try:
                ends_file = (
                    fd is not None
                    and handles.sync is unsynced.sync  # the file we wrote to, still open
                    and lock.is_current()
                    and os.fstat(fd).st_size == unsynced.end
                )
            except OSError:
                ends_file = False
            if fd is None or not ends_file:
                why = "the ledger has changed since (another writer appended, or it was moved)"
                raise unknown_durability(summary, error, why) from error
            handles.known = None
            roll_back(self.path, fd, unsynced.start, error)
        finally:
            if relock:
                lock.release()

    def _ledger_fd(self) -> int:
        """The ledger's descriptor, opened (and the file created) if need be. Mutex held."""
        fd = self._handles.fd
        return fd if fd is not None else self._handles.open(self.path, durable=self.durable)[0]

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


def _rebuild(root: Path, run_id: str, node_id: str, *options: Any) -> AttemptLedger:
    # options: lock_timeout, durable, hash_chain (absent from pickles made before it existed).
    lock_timeout, durable, hash_chain = (*options, False)[:3]
    return AttemptLedger(
        root, run_id, node_id, lock_timeout=lock_timeout, durable=durable, hash_chain=hash_chain
    )


def _conforms(ledger: AttemptLedger) -> Ledger:
    return ledger  # mypy checks that AttemptLedger satisfies the protocol
