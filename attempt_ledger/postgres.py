"""A ledger on PostgreSQL, for writers on several hosts (``pip install attempt_ledger[postgres]``).

The same receipts, validation and seq rules as :class:`AttemptLedger`, keyed by the raw
``run_id``/``node_id`` (no sanitising, so no collisions). Each (run, node) has a head row; an
append locks that row, bumps it by the batch size and inserts the lines in the same
transaction, so seqs are exact under any number of clients and no table-wide lock is taken.
Every line is stored as the exact bytes the file ledger would write (``ts_ms`` aside), and
commits notify the ``attempt_ledger`` channel so that :meth:`PostgresLedger.reconcile` wakes
at once instead of at its next poll.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psycopg

from ._codec import (
    EncodedBatch,
    check_expected_last_seq,
    decode_record,
    empty_append,
    encode_batch,
)
from ._errors import LedgerError, SeqConflict, SeqExhausted
from ._pgschema import (
    CHANNEL,
    MISSING_SCHEMA,
    SCHEMA_VERSION,
    id_bytes,
    ledger_key,
    ledger_name,
    migrate,
)
from ._protocol import Ledger
from ._reconcile import follow_with, reconcile
from ._records import AppendSummary, ReceiptEvent, ReceiptRecord, ReconcileSummary
from ._transfer import copy_from_postgres, copy_to_postgres, ledger_ids

__all__ = [
    "CHANNEL",
    "SCHEMA_VERSION",
    "AsyncPostgresLedger",
    "LedgerConnectionError",
    "LedgerDatabaseError",
    "PostgresLedger",
    "copy_from_postgres",
    "copy_to_postgres",
    "ledger_ids",
    "migrate",
]


class LedgerDatabaseError(LedgerError):
    """The database failed or refused an operation.

    :ivar committed: for an append, ``False`` when the batch is known not to be committed,
        ``None`` when the connection was lost while committing and nobody can tell.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, committed: bool | None) -> None:
        self.committed = committed
        super().__init__(path, reason)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.reason, self.committed)


class LedgerConnectionError(LedgerDatabaseError):
    """The database connection failed during an operation."""


def _rolled_back(error: psycopg.OperationalError) -> bool:
    """Whether the server reported ``error`` while running the statement, so that it rolled
    the statement back (a statement or lock timeout). A lost connection, or a backend
    terminated by an administrator, may have come before or after the commit: unknown."""
    state = error.sqlstate
    return state is not None and not state.startswith("08") and state != "57P01"


def _check_number(name: str, value: object, *kinds: type) -> None:
    # Caught before any I/O, rather than as a database error halfway through or a wrong answer.
    if isinstance(value, bool) or not isinstance(value, kinds) or value != value:  # NaN
        wanted = " or ".join(kind.__name__ for kind in kinds)
        raise TypeError(f"{name} must be {wanted}, not {value!r}")


class PostgresLedger:
    """The receipt ledger of one (run, node) in a PostgreSQL database.

    :param conninfo: a connection string (the ledger opens and owns one connection, and
        reopens it after a failure or in a fork child); a ``psycopg.Connection`` the caller owns
        (used as is, never closed; it must not cross a fork); or a connection pool (anything with
        psycopg_pool's ``connection()`` context manager: a connection is borrowed per operation
        and given back, also on errors). Each operation commits on its own: a borrowed
        connection that is not in autocommit mode gets a transaction block per operation, and
        one with a transaction already open is refused (the append would be committed, or lost,
        with the caller's transaction, holding the ledger's row lock until then).
    :raises TypeError: if ``conninfo`` is none of these, or ``run_id`` or ``node_id`` is not a
        ``str``.
    """

    def __init__(
        self, conninfo: str | psycopg.Connection[Any] | Any, run_id: str, node_id: str
    ) -> None:
        for name, value in (("run_id", run_id), ("node_id", node_id)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be str, not {type(value).__name__}")
        if not isinstance(conninfo, (str, psycopg.Connection)) and not callable(
            getattr(conninfo, "connection", None)
        ):
            raise TypeError(
                "conninfo must be a connection string, a psycopg.Connection or a pool with a"
                f" connection() method, not {type(conninfo).__name__}"
            )
        self.run_id, self.node_id = run_id, node_id
        # Stored and looked up by a digest of the ids: see _pgschema.
        self._key = ledger_key(run_id, node_id)
        self._ids = (id_bytes(run_id), id_bytes(node_id))
        self._conninfo = conninfo if isinstance(conninfo, str) else None
        self._pool = None if isinstance(conninfo, (str, psycopg.Connection)) else conninfo
        self._conn: psycopg.Connection[Any] | None = (
            conninfo if isinstance(conninfo, psycopg.Connection) else None
        )
        self._pid = os.getpid()
        #: Names the ledger in errors: ``postgres:/<run_id>/<node_id>``.
        self.path = ledger_name(run_id, node_id)

    @contextlib.contextmanager
    def _use(self) -> Iterator[psycopg.Connection[Any]]:
        if self._pool is not None:
            with self._pool.connection() as conn, self._own_transaction(conn):
                yield conn
        else:
            conn = self._connection()
            with self._own_transaction(conn):
                yield conn

    def _own_transaction(
        self, conn: psycopg.Connection[Any]
    ) -> contextlib.AbstractContextManager[Any]:
        # An operation must be committed when it returns: on an autocommit connection it is;
        # on another one it gets a transaction block of its own.
        # (ACTIVE: another thread's statement; psycopg's lock makes ours wait for it.)
        status = conn.info.transaction_status
        if status not in (
            psycopg.pq.TransactionStatus.INTRANS,
            psycopg.pq.TransactionStatus.INERROR,
        ):
            return contextlib.nullcontext() if conn.autocommit else conn.transaction()
        raise LedgerDatabaseError(
            self.path,
            f"the connection is in a transaction ({status.name}): the ledger commits each"
            " operation itself; give it an autocommit connection or one with no transaction open",
            False,
        )

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conninfo is not None and (self._conn is None or self._pid != os.getpid()):
            # A connection inherited over fork belongs to the parent: never touch it here.
            self._conn, self._pid = None, os.getpid()
            try:
                self._conn = psycopg.connect(self._conninfo, autocommit=True)
            except psycopg.Error as error:
                raise LedgerConnectionError(self.path, f"cannot connect: {error}", False) from error
        assert self._conn is not None
        return self._conn

    def close(self) -> None:
        """Close the connection the ledger opened (a borrowed one is left alone)."""
        if self._conninfo is not None:
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():  # a fork child's is the parent's
                conn.close()

    def __del__(self) -> None:
        # Like a dropped file ledger's descriptors, a dropped ledger's own connection is closed.
        if hasattr(self, "_pid"):  # set last in __init__, which may have raised early
            self.close()

    def __enter__(self) -> PostgresLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def append(
        self,
        attempt: int,
        session_id: str,
        events: Iterable[ReceiptEvent],
        *,
        expected_last_seq: int | None = None,
    ) -> AppendSummary:
        """Append ``events`` as consecutive records in one transaction, all or none.

        Same validation, results and errors as :meth:`AttemptLedger.append`.

        :raises InvalidEvent: if an id, ``attempt``, an event or ``expected_last_seq`` (an int
            in ``0..2**64-1``, or ``None``) is not valid; nothing is written.
        :raises SeqConflict: if ``expected_last_seq`` is given and is not the last seq.
        :raises SeqExhausted: if the batch would take seq past ``2**64 - 1``.
        :raises LedgerConnectionError: if the connection fails; ``committed`` tells what is known.
        """
        expected_last_seq = check_expected_last_seq(self.path, expected_last_seq)
        batch = encode_batch(self.path, self.run_id, self.node_id, attempt, session_id, events)
        if not batch.tails:
            return empty_append(self.path, self.last_seq(), expected_last_seq)
        return self._append(batch, expected_last_seq)

    def _append(self, batch: EncodedBatch, expected_last_seq: int | None) -> AppendSummary:
        count = len(batch.tails)
        committing = False
        try:
            with self._use() as conn:
                # The batch's pieces go to the server, which numbers the lines under the head
                # row's lock: one round trip, one transaction.
                middle = b',"ts_ms":%d,"event_type":' % (time.time_ns() // 1_000_000)
                tails = [tail[:-1] for tail in batch.tails]  # stored without the newline
                committing = True
                row = conn.execute(
                    "SELECT ok, last FROM attempt_ledger_append(%s, %s, %s, %s, %s, %s, %s, %s)",
                    (self._key, *self._ids, expected_last_seq, batch.head, middle, tails, CHANNEL),
                ).fetchone()
        except psycopg.Error as error:
            raise self._failure(error, committing, "the batch ") from error
        assert row is not None
        ok, last_seq = row[0], int(row[1])
        if not ok:
            if expected_last_seq is not None and expected_last_seq != last_seq:
                raise SeqConflict(self.path, expected_last_seq, last_seq)
            raise SeqExhausted(self.path, last_seq, count)
        return AppendSummary(self.path, last_seq + count, count)

    def _failure(self, error: psycopg.Error, committing: bool, what: str) -> LedgerDatabaseError:
        """The error to raise for ``error``; ``what`` names the write it interrupted, if any."""
        if isinstance(error, psycopg.OperationalError):
            self.close()
            known = None if committing and not _rolled_back(error) else False
            state = "may or may not be committed" if known is None else "was not committed"
            detail = f"; {what}{state}" if what else ""
            return LedgerConnectionError(self.path, f"{error}{detail}", known)
        # Refused by the server (the statement rolled back) or before it was sent.
        reason = str(error).strip()
        if error.sqlstate in MISSING_SCHEMA:
            reason += f" (is the schema at version {SCHEMA_VERSION}? run migrate())"
        if what:
            reason += f"; {what}was not committed"
        return LedgerDatabaseError(self.path, reason, False)

    def last_seq(self) -> int:
        """Return the ledger's last seq; 0 if it has none.

        :raises LedgerDatabaseError: if the database fails (a ``LedgerConnectionError`` if the
            connection does).
        """
        rows = self._query("SELECT last_seq FROM attempt_ledger_heads WHERE key = %s")
        return int(rows[0][0]) if rows else 0

    def records(self) -> list[ReceiptRecord]:
        """Return every record, in seq order.

        :raises LedgerDatabaseError: if the database fails.
        """
        return list(self.iter_records())

    def iter_records(self, since_seq: int = 0) -> Iterator[ReceiptRecord]:
        """Yield the records with ``seq > since_seq`` in seq order, fetched in pages.

        :raises TypeError: if ``since_seq`` is not an int.
        :raises LedgerDatabaseError: if the database fails.
        """
        _check_number("since_seq", since_seq, int)
        return self._iter_records(since_seq)

    def _iter_records(self, since_seq: int) -> Iterator[ReceiptRecord]:
        last = since_seq
        while True:
            rows = self._query(
                "SELECT seq, line FROM attempt_ledger_receipts WHERE key = %s AND seq > %s"
                " ORDER BY seq LIMIT 1000",
                (last,),
            )
            for seq, line in rows:
                record = decode_record(bytes(line))
                if record is not None:
                    yield record
                last = int(seq)
            if len(rows) < 1000:
                return

    def _query(self, sql: str, extra: tuple[Any, ...] = ()) -> list[Any]:
        try:
            with self._use() as conn:
                return conn.execute(sql, (self._key, *extra)).fetchall()
        except psycopg.Error as error:
            raise self._failure(error, False, "") from error

    def reconcile(
        self,
        expected_min_seq: int,
        max_wait_ms: int,
        poll_interval_ms: int = 10,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> ReconcileSummary:
        """Wait until the last seq reaches ``expected_min_seq`` (0 means 1), as
        :meth:`AttemptLedger.reconcile`; a commit's notification ends a wait at once, and the
        poll interval is only the fallback.

        :raises TypeError: if an argument is not a number of the right kind.
        :raises LedgerDatabaseError: if the database fails.
        """
        _check_number("expected_min_seq", expected_min_seq, int)
        _check_number("max_wait_ms", max_wait_ms, int, float)
        _check_number("poll_interval_ms", poll_interval_ms, int, float)
        with self._listening() as wait:
            return reconcile(
                self.last_seq,
                expected_min_seq,
                max_wait_ms,
                poll_interval_ms,
                clock=clock,
                sleep=wait,
            )

    def follow(
        self,
        since_seq: int = 0,
        *,
        poll_interval: float = 0.05,
        stop: threading.Event | None = None,
        timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Iterator[ReceiptRecord]:
        """Yield the records with ``seq > since_seq``, then each new one as it is committed, as
        :meth:`AttemptLedger.follow`; woken by notifications, ``stop`` is seen within one
        ``poll_interval``.

        :raises TypeError: if an argument is of the wrong kind.
        :raises LedgerDatabaseError: if the database fails.
        """
        _check_number("since_seq", since_seq, int)
        _check_number("poll_interval", poll_interval, int, float)
        if timeout is not None:
            _check_number("timeout", timeout, int, float)
        if stop is not None and not callable(getattr(stop, "is_set", None)):
            raise TypeError(f"stop must be a threading.Event or None, not {stop!r}")
        return self._follow(since_seq, poll_interval, stop, timeout, clock)

    def _follow(
        self,
        since_seq: int,
        poll_interval: float,
        stop: threading.Event | None,
        timeout: float | None,
        clock: Callable[[], float],
    ) -> Iterator[ReceiptRecord]:
        with self._listening() as wait:
            yield from follow_with(
                self._iter_records,
                self.last_seq,
                since_seq,
                poll_interval=poll_interval,
                stop=stop,
                timeout=timeout,
                clock=clock,
                sleep=wait,
            )

    @contextlib.contextmanager
    def _listening(self) -> Iterator[Callable[[float], None]]:
        # LISTEN before the first read, so that no commit after it goes unnoticed.
        try:
            if self._conninfo is not None:
                conninfo = self._conninfo
            else:
                with self._use() as conn:
                    conninfo = conn.info.dsn  # without the password: see the README
            listener = psycopg.connect(conninfo, autocommit=True)
            listener.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as error:
            raise LedgerConnectionError(self.path, f"cannot listen: {error}", None) from error

        mine = self._key.hex()  # what a commit to this ledger notifies; others are skipped

        def wait(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                if any(n.payload == mine for n in listener.notifies(timeout=left, stop_after=1)):
                    return

        try:
            yield wait
        except psycopg.OperationalError as error:
            raise LedgerConnectionError(self.path, str(error), None) from error
        finally:
            listener.close()


def _conforms(ledger: PostgresLedger) -> Ledger:
    return ledger  # mypy checks that PostgresLedger satisfies the protocol


from ._pg_async import AsyncPostgresLedger  # noqa: E402  (built on PostgresLedger above)
