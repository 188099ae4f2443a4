"""The PostgreSQL ledger for asyncio: ``attempt_ledger.postgres.AsyncPostgresLedger``.

It runs the statements of :class:`~attempt_ledger.postgres.PostgresLedger` on psycopg's
``AsyncConnection`` (or one borrowed per operation from an ``AsyncConnectionPool``), and keeps
one of those ledgers as its core for everything that is not I/O: the ids' key, the ledger's
name, each operation's own transaction, and the mapping of database errors. ``reconcile`` and
``follow`` run the same loops as every other ledger, woken by an async ``LISTEN``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import psycopg

from ._codec import check_expected_last_seq, empty_append, encode_batch
from ._errors import SeqConflict, SeqExhausted
from ._lines import decode_record
from ._pgconn import in_pipeline
from ._pgschema import (
    APPEND_NEXT,
    CHANNEL,
    CREATE_HEAD,
    HEAD_STATE,
    LISTENING,
    MISSING_SCHEMA,
    NOT_LISTENING,
)
from ._protocol import AsyncLedger
from ._reconcile import afollow_with, areconcile, check_number
from ._records import AppendSummary, ReceiptEvent, ReceiptRecord, ReconcileSummary
from ._watch import AsyncWaiter
from .postgres import LedgerConnectionError, PostgresLedger

_PAGE = 1000


class AsyncPostgresLedger:
    """The receipt ledger of one (run, node) in a PostgreSQL database, for coroutines: the
    same rows, results and errors as :class:`~attempt_ledger.postgres.PostgresLedger`.

    :param conninfo: a connection string (the ledger opens and owns one
        ``psycopg.AsyncConnection``, reopened after a failure); an ``AsyncConnection`` the
        caller owns (never closed here); or an async pool (anything with psycopg_pool's
        ``AsyncConnectionPool.connection()``: a connection is borrowed per operation).
        As for the blocking ledger, each operation commits on its own.
    :param run_id: the run's id, stored raw (no sanitising).
    :param node_id: the node's id, likewise.
    :param hash_chain: as for :class:`~attempt_ledger.postgres.PostgresLedger`.
    :raises TypeError: if ``conninfo`` is none of these, ``run_id`` or ``node_id`` is not a
        ``str``, or ``hash_chain`` not a ``bool``.
    """

    def __init__(
        self,
        conninfo: str | psycopg.AsyncConnection[Any] | Any,
        run_id: str,
        node_id: str,
        *,
        hash_chain: bool = False,
    ) -> None:
        if not isinstance(conninfo, (str, psycopg.AsyncConnection)) and not callable(
            getattr(conninfo, "connection", None)
        ):
            raise TypeError(
                "conninfo must be a connection string, a psycopg.AsyncConnection or an async"
                f" pool with a connection() method, not {type(conninfo).__name__}"
            )
        # The blocking ledger checks the ids and names the ledger; it never connects here.
        self._core = PostgresLedger(
            conninfo if isinstance(conninfo, str) else "", run_id, node_id, hash_chain=hash_chain
        )
        self._conninfo = conninfo if isinstance(conninfo, str) else None
        self._pool = None if isinstance(conninfo, (str, psycopg.AsyncConnection)) else conninfo
        self._conn: psycopg.AsyncConnection[Any] | None = (
            conninfo if isinstance(conninfo, psycopg.AsyncConnection) else None
        )
        self._pid = os.getpid()
        #: Names the ledger in errors: ``postgres:/<run_id>/<node_id>``.
        self.path = self._core.path

    @property
    def run_id(self) -> str:
        return self._core.run_id

    @property
    def node_id(self) -> str:
        return self._core.node_id

    async def __aenter__(self) -> AsyncPostgresLedger:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection the ledger opened (a borrowed one is left alone)."""
        if self._conninfo is not None:
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():
                await conn.close()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conninfo is not None and (self._conn is None or self._pid != os.getpid()):
            self._conn, self._pid = None, os.getpid()  # never touch a parent's connection
            try:
                self._conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            except psycopg.Error as error:
                raise LedgerConnectionError(self.path, f"cannot connect: {error}", False) from error
        assert self._conn is not None
        return self._conn

    @contextlib.asynccontextmanager
    async def _use(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._pool is not None:
            async with self._pool.connection() as conn, self._operation(conn):
                yield conn
        else:
            conn = await self._connection()
            async with self._operation(conn):
                yield conn

    @contextlib.asynccontextmanager
    async def _operation(self, conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
        # Committed when it ends: an autocommit connection is; another gets a transaction block
        # (the blocking ledger's rule, which also refuses a connection in a transaction).
        transaction: Any = self._core._own_transaction(conn)  # type: ignore[arg-type]
        if transaction is None:
            yield
        else:
            async with transaction:
                yield

    async def _fail(self, error: psycopg.Error, committing: bool, what: str) -> Exception:
        if isinstance(error, psycopg.OperationalError):
            await self.aclose()  # reconnect on the next operation
        return self._core._failure(error, committing, what)

    async def append(
        self,
        attempt: int,
        session_id: str,
        events: Iterable[ReceiptEvent],
        *,
        expected_last_seq: int | None = None,
    ) -> AppendSummary:
        """Append ``events`` as consecutive records in one transaction, all or none, as
        :meth:`PostgresLedger.append <attempt_ledger.postgres.PostgresLedger.append>`.

        :raises InvalidEvent: if an id, ``attempt``, an event or ``expected_last_seq`` is not
            valid; nothing is written.
        :raises SeqConflict: if ``expected_last_seq`` is given and is not the last seq.
        :raises SeqExhausted: if the batch would take seq past ``2**64 - 1``.
        :raises LedgerConnectionError: if the connection fails; ``committed`` tells what is known.
        """
        core = self._core
        expected_last_seq = check_expected_last_seq(self.path, expected_last_seq)
        batch = encode_batch(self.path, core.run_id, core.node_id, attempt, session_id, events)
        if not batch.tails:
            return empty_append(self.path, await self.last_seq(), expected_last_seq)
        count, committing, last_seq = len(batch.tails), False, 0
        ts_ms = time.time_ns() // 1_000_000
        guess = core._guess(batch, expected_last_seq)
        try:
            async with self._use() as conn:
                # As PostgresLedger._append: the client's seq first (not in pipeline mode).
                if guess is not None and not in_pipeline(conn):
                    committing = True
                    line = batch.render(guess, ts_ms)[:-1]
                    raw = psycopg.AsyncRawCursor(conn)
                    taken = (await raw.execute(APPEND_NEXT, (core._key, guess, line))).rowcount
                    committing = taken == 1
                    core._guessed(guess if committing else None, expected_last_seq)
                    if committing:
                        return AppendSummary(self.path, guess, 1)
                middle = b',"ts_ms":%d,"event_type":' % ts_ms
                sql, params = core._statement(batch, middle, expected_last_seq)
                cursor = conn.cursor()
                while True:  # as PostgresLedger._append, one statement at a time
                    committing = True
                    row = await (await cursor.execute(sql, params)).fetchone()
                    if row is not None:
                        break
                    committing = False  # the statement wrote nothing
                    found = await (await cursor.execute(HEAD_STATE, (core._key,))).fetchone()
                    refused_at = core._refused(found, expected_last_seq, count)
                    if refused_at is not None:
                        last_seq = refused_at
                        break
                    if found is None:
                        await cursor.execute(CREATE_HEAD, core._ids)
                    sql, params = core._statement(batch, middle, expected_last_seq)
        except psycopg.Error as error:
            raise await self._fail(error, committing, "the batch ") from error
        if row is not None:
            core._numbered(int(row[0]) + count)
            return AppendSummary(self.path, int(row[0]) + count, count)
        if expected_last_seq is not None and expected_last_seq != last_seq:
            raise SeqConflict(self.path, expected_last_seq, last_seq)
        raise SeqExhausted(self.path, last_seq, count)

    async def _query(self, sql: str, extra: tuple[Any, ...] = ()) -> list[Any]:
        try:
            async with self._use() as conn:
                cursor = await conn.execute(sql, (self._core._key, *extra))
                return await cursor.fetchall()
        except psycopg.Error as error:
            raise await self._fail(error, False, "") from error

    async def last_seq(self) -> int:
        """The ledger's last seq; 0 if it has none.

        :raises LedgerDatabaseError: if the database fails.
        """
        rows = await self._query("SELECT last_seq FROM attempt_ledger_heads WHERE key = %s")
        return int(rows[0][0]) if rows else 0

    async def records(self) -> list[ReceiptRecord]:
        """Every record, in seq order.

        :raises LedgerDatabaseError: if the database fails.
        """
        return [record async for record in self.iter_records()]

    async def _rows(self, last: int) -> list[Any]:
        # One page of rows past ``last`` (a short one means the end).
        return await self._query(
            "SELECT seq, line FROM attempt_ledger_receipts WHERE key = %s AND seq > %s"
            f" ORDER BY seq LIMIT {_PAGE}",
            (last,),
        )

    async def _page(self, last: int) -> list[ReceiptRecord]:
        return [r for _, line in await self._rows(last) if (r := decode_record(bytes(line)))]

    def iter_records(self, since_seq: int = 0) -> AsyncIterator[ReceiptRecord]:
        """The records with ``seq > since_seq`` in seq order, fetched in pages.

        :raises TypeError: if ``since_seq`` is not an int.
        :raises LedgerDatabaseError: if the database fails.
        """
        self._core.iter_records(since_seq)  # checks it; the generator is never started
        return self._iter_records(since_seq)

    async def _iter_records(self, last: int) -> AsyncIterator[ReceiptRecord]:
        while rows := await self._rows(last):
            for seq, line in rows:
                if (record := decode_record(bytes(line))) is not None:
                    yield record
                last = int(seq)
            if len(rows) < _PAGE:
                return

    async def reconcile(
        self, expected_min_seq: int, max_wait_ms: int, poll_interval_ms: int = 10
    ) -> ReconcileSummary:
        """Wait until the last seq reaches ``expected_min_seq`` (0 means 1); a commit's
        notification ends a wait at once, the poll interval is the fallback.

        :raises TypeError: if an argument is not a number of the right kind.
        :raises LedgerDatabaseError: if the database fails.
        """
        check_number("expected_min_seq", expected_min_seq, (int,))
        check_number("max_wait_ms", max_wait_ms)
        check_number("poll_interval_ms", poll_interval_ms)
        async with self._listening() as wait:
            waiter = AsyncWaiter(None, sleep=wait)
            return await areconcile(
                self.last_seq, expected_min_seq, max_wait_ms, poll_interval_ms, waiter
            )

    def follow(
        self,
        since_seq: int = 0,
        *,
        poll_interval: float = 0.05,
        stop: asyncio.Event | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[ReceiptRecord]:
        """The records with ``seq > since_seq``, then each new one as it is committed; woken
        by notifications, ``stop`` is seen within one ``poll_interval``.

        :raises TypeError: if an argument is of the wrong kind.
        :raises LedgerDatabaseError: if the database fails.
        """
        # The blocking ledger checks the arguments; its generator, never started, does no I/O.
        either_stop: Any = stop  # an asyncio.Event: the check is only that it has is_set()
        self._core.follow(since_seq, poll_interval=poll_interval, stop=either_stop, timeout=timeout)
        return self._follow(since_seq, poll_interval, stop, timeout)

    async def _follow(
        self,
        since_seq: int,
        poll_interval: float,
        stop: asyncio.Event | None,
        timeout: float | None,
    ) -> AsyncIterator[ReceiptRecord]:
        async with self._listening() as wait:
            records = afollow_with(
                self._page,
                since_seq,
                poll_interval=poll_interval,
                timeout=timeout,
                waiter=AsyncWaiter(stop, sleep=wait),
            )
            async for record in records:
                yield record

    @contextlib.asynccontextmanager
    async def _listening(self) -> AsyncIterator[Callable[[float], Awaitable[None]]]:
        # LISTEN before the first read, so that no commit after it goes unnoticed.
        try:
            if self._conninfo is not None:
                conninfo = self._conninfo
            else:
                async with self._use() as conn:
                    conninfo = conn.info.dsn
            listener = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        except psycopg.Error as error:
            raise LedgerConnectionError(self.path, f"cannot listen: {error}", None) from error
        try:
            await listener.execute(f"LISTEN {CHANNEL}")
            # Appends notify only registered listeners (see _pgschema.LISTENING); a read-only
            # role cannot register, and its waits are paced by the poll interval.
            with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
                await listener.execute(LISTENING, self._core._ids)
        except psycopg.Error as error:
            await listener.close()
            if error.sqlstate in MISSING_SCHEMA:  # an older schema: say to migrate
                raise self._core._failure(error, False, "") from error
            raise LedgerConnectionError(self.path, f"cannot listen: {error}", None) from error
        mine = self._core._key.hex()  # what a commit to this ledger notifies

        async def wait(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                async for note in listener.notifies(timeout=left, stop_after=1):
                    if note.payload == mine:
                        return

        try:
            yield wait
        except psycopg.OperationalError as error:
            raise LedgerConnectionError(self.path, str(error), None) from error
        finally:
            with contextlib.suppress(psycopg.Error):  # if the connection is gone, so is its pid
                await listener.execute(NOT_LISTENING, (self._core._key,))
            await listener.close()


def _conforms(ledger: AsyncPostgresLedger) -> AsyncLedger:
    return ledger  # mypy checks that AsyncPostgresLedger satisfies the async protocol
