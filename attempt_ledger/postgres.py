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
    IndexedValueError,
    check_ids,
    decode_record,
    encode_events,
    encode_head,
)
from ._errors import InvalidEvent, LedgerError, SeqConflict, SeqExhausted
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
from ._records import U64_MAX, AppendSummary, ReceiptEvent, ReceiptRecord, ReconcileSummary

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
        if self._conninfo is not None and self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        if self._conninfo is not None:
            self._conn = None

    def __del__(self) -> None:
        # Like a dropped file ledger's descriptors, a dropped ledger's own connection is closed.
        conn = getattr(self, "_conn", None)  # getattr: __init__ may have raised early
        owned = getattr(self, "_conninfo", None) is not None
        if owned and conn is not None and getattr(self, "_pid", None) == os.getpid():
            conn.close()

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

        :raises InvalidEvent: if an id, ``attempt`` or an event is not valid.
        :raises SeqConflict: if ``expected_last_seq`` is given and is not the last seq.
        :raises SeqExhausted: if the batch would take seq past ``2**64 - 1``.
        :raises LedgerConnectionError: if the connection fails; ``committed`` tells what is known.
        """
        try:
            check_ids(self.run_id, self.node_id, attempt, session_id)
            head = encode_head(self.run_id, self.node_id, attempt, session_id)
            batch = encode_events(head, events if isinstance(events, list) else list(events))
        except IndexedValueError as error:
            raise InvalidEvent(self.path, str(error), error.index) from None
        except ValueError as error:
            raise InvalidEvent(self.path, str(error)) from None
        if not batch.tails:
            last_seq = self.last_seq()
            if expected_last_seq is not None and expected_last_seq != last_seq:
                raise SeqConflict(self.path, expected_last_seq, last_seq)
            return AppendSummary(self.path, last_seq, 0)
        return self._append(batch, expected_last_seq)

    def _append(self, batch: EncodedBatch, expected_last_seq: int | None) -> AppendSummary:
        key = (self.run_id, self.node_id)
        count = len(batch.tails)
        committing = False
        try:
            with self._use() as conn, conn.transaction():
                conn.execute(
                    "INSERT INTO attempt_ledger_heads VALUES (%s, %s, 0) ON CONFLICT DO NOTHING",
                    key,
                )
                row = conn.execute(
                    "SELECT last_seq FROM attempt_ledger_heads"
                    " WHERE run_id = %s AND node_id = %s FOR UPDATE",
                    key,
                ).fetchone()
                last_seq = int(row[0]) if row else 0
                if expected_last_seq is not None and expected_last_seq != last_seq:
                    raise SeqConflict(self.path, expected_last_seq, last_seq)
                if last_seq + count > U64_MAX:
                    raise SeqExhausted(self.path, last_seq, count)
                data = batch.render(last_seq + 1, time.time_ns() // 1_000_000)
                lines = data.split(b"\n")[:-1]
                with conn.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO attempt_ledger_receipts VALUES (%s, %s, %s, %s)",
                        [(*key, last_seq + i, line) for i, line in enumerate(lines, 1)],
                    )
                conn.execute(
                    "UPDATE attempt_ledger_heads SET last_seq = %s"
                    " WHERE run_id = %s AND node_id = %s",
                    (last_seq + count, *key),
                )
                conn.execute(
                    "SELECT pg_notify(%s, %s)", (CHANNEL, f"{self.run_id}\n{self.node_id}")
                )
                committing = True  # leaving the block commits
        except psycopg.OperationalError as error:
            self.close()
            known = None if committing else False
            state = "may or may not be committed" if known is None else "was not committed"
            raise LedgerConnectionError(self.path, f"{error}; the batch {state}", known) from error
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
