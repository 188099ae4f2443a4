"""A ledger on PostgreSQL, for writers on several hosts (``pip install attempt_ledger[postgres]``).

The same receipts, validation and seq rules as :class:`AttemptLedger`, keyed by the raw
``run_id``/``node_id`` (no sanitising, so no collisions). Each (run, node) has a head row; an
append is one statement that moves that row by the batch size (under its lock) and inserts
the lines, so seqs are exact under any number of clients and no table-wide lock is taken.
Every line is stored as the exact bytes the file ledger would write (``ts_ms`` aside). While
:meth:`PostgresLedger.reconcile` or :meth:`PostgresLedger.follow` waits on a ledger, its
commits notify the ``attempt_ledger`` channel, so that the wait ends at once instead of at its
next poll.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

try:
    import psycopg
except ModuleNotFoundError as error:  # an optional part: say which extra brings it
    if error.name != "psycopg":
        raise
    raise ModuleNotFoundError(
        "attempt_ledger.postgres needs psycopg, which is not installed: "
        "pip install 'attempt_ledger[postgres]'",
        name=error.name,
    ) from error

from ._codec import EncodedBatch, check_expected_last_seq, empty_append, encode_batch
from ._errors import SeqConflict, SeqExhausted
from ._lines import decode_record
from ._pgappend import AppendStatements
from ._pgconn import Connections, LedgerConnectionError, LedgerDatabaseError, in_pipeline
from ._pgschema import (
    APPEND_CHAINED,
    APPEND_NEXT,
    APPEND_NEXT_NAME,
    APPEND_NEXT_TYPES,
    CHANNEL,
    CREATE_HEAD,
    HEAD_STATE,
    LISTENING,
    MISSING_SCHEMA,
    NOT_LISTENING,
    SCHEMA_VERSION,
    id_bytes,
    ledger_key,
    ledger_name,
    migrate,
)
from ._protocol import Ledger
from ._reconcile import check_follow, check_number, follow_with, reconcile
from ._records import AppendSummary, ReceiptEvent, ReceiptRecord, ReconcileSummary
from ._transfer import copy_from_postgres, copy_to_postgres, ledger_ids
from ._verify_chain import ReceiptLedgerVerification, verify_lines

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


class PostgresLedger(Connections, AppendStatements):
    """The receipt ledger of one (run, node) in a PostgreSQL database.

    :param conninfo: a connection string (the ledger opens and owns one connection, and
        reopens it after a failure or in a fork child); a ``psycopg.Connection`` the caller owns
        (used as is, never closed; it must not cross a fork); or a connection pool (anything with
        psycopg_pool's ``connection()`` context manager: a connection is borrowed per operation
        and given back, also on errors). Each operation commits on its own: a borrowed
        connection that is not in autocommit mode gets a transaction block per operation, and
        one with a transaction already open is refused (the append would be committed, or lost,
        with the caller's transaction, holding the ledger's row lock until then). On an
        autocommit connection the one-line append is a statement the ledger prepares there
        (unless the connection's ``prepare_threshold`` is ``None``).
    :param run_id: the run's id, stored raw (no sanitising).
    :param node_id: the node's id, likewise.
    :param hash_chain: write schema-2 records, chained by SHA-256, as
        ``AttemptLedger(..., hash_chain=True)`` does (the server hashes each line under the
        ledger's row lock; the lines are the file ledger's, byte for byte). A ledger whose last
        record is hashed is continued as a chain whatever this says.
    :raises TypeError: if ``conninfo`` is none of these, ``run_id`` or ``node_id`` is not a
        ``str``, or ``hash_chain`` not a ``bool``.
    """

    def __init__(
        self,
        conninfo: str | psycopg.Connection[Any] | Any,
        run_id: str,
        node_id: str,
        *,
        hash_chain: bool = False,
    ) -> None:
        for name, value in (("run_id", run_id), ("node_id", node_id)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be str, not {type(value).__name__}")
        if type(hash_chain) is not bool:
            raise TypeError(f"hash_chain must be a bool, not {hash_chain!r}")
        self.run_id, self.node_id = run_id, node_id
        self.hash_chain = hash_chain
        # Whether the ledger is known to hold a chain: then every append continues it.
        self._chained = hash_chain
        # Stored and looked up by a digest of the ids: see _pgschema.
        self._key = ledger_key(run_id, node_id)
        self._ids = {"k": self._key, "r": id_bytes(run_id), "n": id_bytes(node_id)}
        #: Names the ledger in errors: ``postgres:/<run_id>/<node_id>``.
        self.path = ledger_name(run_id, node_id)
        Connections.__init__(self, conninfo)
        AppendStatements.__init__(self)

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
        ts_ms = time.time_ns() // 1_000_000
        guess = self._guess(batch, expected_last_seq)
        committing, last_seq = False, 0
        try:
            with self._use() as conn:
                # Single statements only: threads may share this connection, and one's
                # transaction block would take in the others' statements.
                # (In pipeline mode the guess's row count would come too late: no guess.)
                if guess is not None and not in_pipeline(conn):
                    committing = True
                    taken = self._append_next(conn, batch.render(guess, ts_ms)[:-1], guess)
                    committing = taken
                    self._guessed(guess if taken else None, expected_last_seq)
                    if taken:
                        return AppendSummary(self.path, guess, 1)
                # The server numbers the lines: it gets the pieces around the seq (the tails
                # without their newline) and splices it in.
                middle = b',"ts_ms":%d,"event_type":' % ts_ms
                sql, params = self._statement(batch, middle, expected_last_seq)
                cursor = self._cursor(conn)
                while True:
                    committing = True
                    row = cursor.execute(sql, params).fetchone()
                    if row is not None:
                        break
                    committing = False  # the statement wrote nothing
                    refused_at = self._refusal(cursor, expected_last_seq, count)
                    if refused_at is not None:
                        last_seq = refused_at
                        break
                    if self._chained and sql is not APPEND_CHAINED:  # found a chain: continue it
                        sql, params = self._statement(batch, middle, expected_last_seq)
        except psycopg.Error as error:
            raise self._failure(error, committing, "the batch ") from error
        if row is None:
            if expected_last_seq is not None and expected_last_seq != last_seq:
                raise SeqConflict(self.path, expected_last_seq, last_seq)
            raise SeqExhausted(self.path, last_seq, count)
        self._numbered(int(row[0]) + count)
        return AppendSummary(self.path, int(row[0]) + count, count)

    def _append_next(self, conn: psycopg.Connection[Any], line: bytes, seq: int) -> bool:
        """Run APPEND_NEXT (prepared, or else on a cursor): whether it took ``line``."""
        params = [self._key, b"%d" % seq, line]
        taken = self._run_prepared(
            conn, APPEND_NEXT_NAME, APPEND_NEXT, APPEND_NEXT_TYPES, params, [1, 0, 1]
        )
        if taken is None:
            taken = psycopg.RawCursor(conn).execute(APPEND_NEXT, (self._key, seq, line)).rowcount
        return taken == 1

    def _refusal(self, cursor: psycopg.Cursor[Any], expected: int | None, count: int) -> int | None:
        """After the append statement moved nothing: see :meth:`_refused`; creates the head row
        if there is none."""
        found = cursor.execute(HEAD_STATE, (self._key,)).fetchone()
        refused_at = self._refused(found, expected, count)
        if refused_at is None and found is None:
            cursor.execute(CREATE_HEAD, self._ids)
        return refused_at

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
        check_number("since_seq", since_seq, (int,))
        return self._iter_records(since_seq)

    def _iter_records(self, since_seq: int) -> Iterator[ReceiptRecord]:
        for line in self._iter_lines(since_seq):
            record = decode_record(line)
            if record is not None:
                yield record

    def _iter_lines(self, since_seq: int) -> Iterator[bytes]:
        # The stored lines with seq > since_seq, in seq order, a page at a time.
        last = since_seq
        while True:
            rows = self._query(
                "SELECT seq, line FROM attempt_ledger_receipts WHERE key = %s AND seq > %s"
                " ORDER BY seq LIMIT 1000",
                (last,),
            )
            for seq, line in rows:
                yield bytes(line)
                last = int(seq)
            if len(rows) < 1000:
                return

    def verify(self, *, expected_root_hash: str | None = None) -> ReceiptLedgerVerification:
        """Verify the ledger's hash chain as :func:`~attempt_ledger.verify_receipt_ledger`
        verifies a file: seqs, each hashed line's hash over its own bytes, each link.

        :param expected_root_hash: a root hash saved earlier, which some record must have.
        :raises ValueError: if ``expected_root_hash`` is not 64 lowercase hex digits.
        :raises LedgerDatabaseError: if the database fails.
        """
        return verify_lines(self._iter_lines(0), expected_root_hash=expected_root_hash)

    def _query(self, sql: str, extra: tuple[Any, ...] = ()) -> list[Any]:
        try:
            with self._use() as conn:
                return self._cursor(conn).execute(sql, (self._key, *extra)).fetchall()
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
        check_number("expected_min_seq", expected_min_seq, (int,))
        check_number("max_wait_ms", max_wait_ms)
        check_number("poll_interval_ms", poll_interval_ms)
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
        check_follow(since_seq, poll_interval, timeout, stop)
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
                since_seq,
                poll_interval=poll_interval,
                stop=stop,
                timeout=timeout,
                clock=clock,
                sleep=wait,
            )

    @contextlib.contextmanager
    def _listening(self) -> Iterator[Callable[[float], None]]:
        # LISTEN and register before the first read, so that no commit after it goes unnoticed
        # (appends notify only ledgers with a registered listener: see _pgschema.LISTENING).
        listener = None
        try:
            listener = self._listener()
            listener.execute(f"LISTEN {CHANNEL}")
            # A read-only role cannot register: no notification, the poll interval paces waits.
            with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
                listener.execute(LISTENING, self._ids)
        except psycopg.Error as error:
            if listener is not None:
                listener.close()
            if error.sqlstate in MISSING_SCHEMA:  # an older schema: say to migrate
                raise self._failure(error, False, "") from error
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
            with contextlib.suppress(psycopg.Error):  # if the connection is gone, so is its pid
                listener.execute(NOT_LISTENING, (self._key,))
            listener.close()


def _conforms(ledger: PostgresLedger) -> Ledger:
    return ledger  # mypy checks that PostgresLedger satisfies the protocol


from ._pg_async import AsyncPostgresLedger  # noqa: E402  (built on PostgresLedger above)
