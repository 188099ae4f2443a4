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
from pathlib import Path
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
from ._protocol import Ledger
from ._reconcile import follow_with, reconcile
from ._transfer import copy_from_postgres, copy_to_postgres, ledger_ids

__all__ = [
    "CHANNEL",
    "SCHEMA_VERSION",
    "LedgerConnectionError",
    "PostgresLedger",
    "copy_from_postgres",
    "copy_to_postgres",
    "ledger_ids",
    "migrate",
]
from ._records import AppendSummary, ReceiptEvent, ReceiptRecord, ReconcileSummary

#: The schema version :func:`migrate` creates.
SCHEMA_VERSION = 1
CHANNEL = "attempt_ledger"

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS attempt_ledger_schema (version integer NOT NULL)",
    """CREATE TABLE IF NOT EXISTS attempt_ledger_heads (
        run_id text NOT NULL, node_id text NOT NULL, last_seq numeric(20, 0) NOT NULL,
        PRIMARY KEY (run_id, node_id))""",
    """CREATE TABLE IF NOT EXISTS attempt_ledger_receipts (
        run_id text NOT NULL, node_id text NOT NULL, seq numeric(20, 0) NOT NULL,
        line bytea NOT NULL, PRIMARY KEY (run_id, node_id, seq))""",
    # An append in one round trip: lock (creating if need be) the head row, check, insert the
    # lines built from the client's encoded pieces and the seqs, move the head, notify.
    """CREATE OR REPLACE FUNCTION attempt_ledger_append(
        r text, n text, expected numeric, head bytea, middle bytea, tails bytea[], channel text,
        OUT ok boolean, OUT last numeric) LANGUAGE plpgsql AS $$
    DECLARE count integer := cardinality(tails);
    BEGIN
        INSERT INTO attempt_ledger_heads VALUES (r, n, 0) ON CONFLICT DO NOTHING;
        SELECT h.last_seq INTO last FROM attempt_ledger_heads h
            WHERE h.run_id = r AND h.node_id = n FOR UPDATE;
        IF (expected IS NOT NULL AND expected <> last) OR last + count > 18446744073709551615
        THEN
            ok := false;
            RETURN;
        END IF;
        INSERT INTO attempt_ledger_receipts
            SELECT r, n, last + i, head || convert_to((last + i)::text, 'UTF8') || middle || tail
            FROM unnest(tails) WITH ORDINALITY AS t(tail, i);
        UPDATE attempt_ledger_heads h SET last_seq = last + count
            WHERE h.run_id = r AND h.node_id = n;
        PERFORM pg_notify(channel, r || E'\\n' || n);
        ok := true;
    END $$""",
]


class LedgerConnectionError(LedgerError):
    """The database connection failed during an operation.

    :ivar committed: for an append, ``False`` when the batch is known not to be committed,
        ``None`` when the connection was lost while committing and nobody can tell.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, committed: bool | None) -> None:
        self.committed = committed
        super().__init__(path, reason)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.reason, self.committed)


def _rolled_back(error: psycopg.OperationalError) -> bool:
    """Whether the server reported ``error`` while running the statement, so that it rolled
    the statement back (a statement or lock timeout). A lost connection, or a backend
    terminated by an administrator, may have come before or after the commit: unknown."""
    state = error.sqlstate
    return state is not None and not state.startswith("08") and state != "57P01"


def migrate(conninfo: str | psycopg.Connection[Any]) -> int:
    """Create the tables if they are missing; idempotent, safe to run concurrently.

    :returns: the schema version now in place.
    :raises psycopg.Error: if the database refuses.
    """
    conn = psycopg.connect(conninfo) if isinstance(conninfo, str) else conninfo
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('attempt_ledger_migrate'))")
            for statement in _SCHEMA:
                conn.execute(statement)
            row = conn.execute("SELECT max(version) FROM attempt_ledger_schema").fetchone()
            if row is None or row[0] is None:
                conn.execute("INSERT INTO attempt_ledger_schema VALUES (%s)", (SCHEMA_VERSION,))
        return SCHEMA_VERSION
    finally:
        if isinstance(conninfo, str):
            conn.close()


class PostgresLedger:
    """The receipt ledger of one (run, node) in a PostgreSQL database.

    :param conninfo: a connection string (the ledger opens and owns one connection, and
        reopens it after a failure or in a fork child); a ``psycopg.Connection`` the caller owns
        (used as is, never closed; it must be in autocommit mode and must not cross a fork); or
        a connection pool (anything with psycopg_pool's ``connection()`` context manager: a
        connection is borrowed per operation and given back, also on errors).
    :raises TypeError: if ``run_id`` or ``node_id`` is not a ``str``.
    """

    def __init__(
        self, conninfo: str | psycopg.Connection[Any] | Any, run_id: str, node_id: str
    ) -> None:
        for name, value in (("run_id", run_id), ("node_id", node_id)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be str, not {type(value).__name__}")
        self.run_id, self.node_id = run_id, node_id
        self._conninfo = conninfo if isinstance(conninfo, str) else None
        self._pool = None if isinstance(conninfo, (str, psycopg.Connection)) else conninfo
        self._conn: psycopg.Connection[Any] | None = (
            conninfo if isinstance(conninfo, psycopg.Connection) else None
        )
        self._pid = os.getpid()
        #: Names the ledger in errors: ``postgres:/<run_id>/<node_id>``.
        self.path = Path("postgres:") / run_id / node_id

    @contextlib.contextmanager
    def _use(self) -> Iterator[psycopg.Connection[Any]]:
        if self._pool is not None:
            with self._pool.connection() as conn:
                yield conn
        else:
            yield self._connection()

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
        key = (self.run_id, self.node_id)
        count = len(batch.tails)
        committing = False
        try:
            with self._use() as conn:
                # The batch's pieces go to the server, which numbers the lines under the head
                # row's lock: one round trip, one implicit transaction.
                middle = b',"ts_ms":%d,"event_type":' % (time.time_ns() // 1_000_000)
                tails = [tail[:-1] for tail in batch.tails]  # stored without the newline
                committing = True
                row = conn.execute(
                    "SELECT ok, last FROM attempt_ledger_append(%s, %s, %s, %s, %s, %s, %s)",
                    (*key, expected_last_seq, batch.head, middle, tails, CHANNEL),
                ).fetchone()
        except psycopg.OperationalError as error:
            self.close()
            known = None if committing and not _rolled_back(error) else False
            state = "may or may not be committed" if known is None else "was not committed"
            raise LedgerConnectionError(self.path, f"{error}; the batch {state}", known) from error
        assert row is not None
        ok, last_seq = row[0], int(row[1])
        if not ok:
            if expected_last_seq is not None and expected_last_seq != last_seq:
                raise SeqConflict(self.path, expected_last_seq, last_seq)
            raise SeqExhausted(self.path, last_seq, count)
        return AppendSummary(self.path, last_seq + count, count)

    def last_seq(self) -> int:
        """Return the ledger's last seq; 0 if it has none.

        :raises LedgerConnectionError: if the connection fails.
        """
        rows = self._query(
            "SELECT last_seq FROM attempt_ledger_heads WHERE run_id = %s AND node_id = %s"
        )
        return int(rows[0][0]) if rows else 0

    def records(self) -> list[ReceiptRecord]:
        """Return every record, in seq order.

        :raises LedgerConnectionError: if the connection fails.
        """
        return list(self.iter_records())

    def iter_records(self, since_seq: int = 0) -> Iterator[ReceiptRecord]:
        """Yield the records with ``seq > since_seq`` in seq order, fetched in pages.

        :raises LedgerConnectionError: if the connection fails.
        """
        last = since_seq
        while True:
            rows = self._query(
                "SELECT seq, line FROM attempt_ledger_receipts WHERE run_id = %s AND node_id = %s"
                " AND seq > %s ORDER BY seq LIMIT 1000",
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
                return conn.execute(sql, (self.run_id, self.node_id, *extra)).fetchall()
        except psycopg.OperationalError as error:
            self.close()
            raise LedgerConnectionError(self.path, str(error), None) from error

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

        :raises LedgerConnectionError: if the connection fails.
        """
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

        :raises LedgerConnectionError: if the connection fails.
        """
        with self._listening() as wait:
            yield from follow_with(
                self.iter_records,
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
        if self._conninfo is not None:
            conninfo = self._conninfo
        else:
            with self._use() as conn:
                conninfo = conn.info.dsn  # without the password: see the README
        try:
            listener = psycopg.connect(conninfo, autocommit=True)
            listener.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as error:
            raise LedgerConnectionError(self.path, f"cannot listen: {error}", None) from error

        def wait(seconds: float) -> None:
            for _ in listener.notifies(timeout=seconds, stop_after=1):
                pass

        try:
            yield wait
        except psycopg.OperationalError as error:
            raise LedgerConnectionError(self.path, str(error), None) from error
        finally:
            listener.close()


def _conforms(ledger: PostgresLedger) -> Ledger:
    return ledger  # mypy checks that PostgresLedger satisfies the protocol
