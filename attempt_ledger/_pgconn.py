"""How a PostgreSQL ledger reaches its database: the connection it owns, borrows or takes from
a pool, a transaction block per operation where needed, a statement prepared and run through
libpq where it pays, and psycopg's errors as ledger errors."""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg

from ._errors import LedgerError
from ._pgschema import MISSING_SCHEMA, SCHEMA_VERSION


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


_IN_TRANSACTION = (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR)
_COMMAND_OK = psycopg.pq.ExecStatus.COMMAND_OK
_PIPELINES = psycopg.pq.version() >= 140000  # older libpqs have no pipeline mode to ask about

# psycopg's own execution pieces, the ones its cursors run on (its generator and its
# connection's wait): not its documented API, so looked up, not assumed; with a psycopg that
# lacks them the statement runs on a cursor.
_EXECUTE = (
    getattr(getattr(psycopg, "generators", None), "execute", None)
    if callable(getattr(psycopg.Connection, "wait", None))
    else None
)

#: The connections each prepared statement was prepared on, by name (a hint: a DISCARD ALL or
#: DEALLOCATE on the connection drops it, and :meth:`Connections._run_prepared` prepares again).
_PREPARED: dict[bytes, weakref.WeakSet[psycopg.Connection[Any]]] = {}


def in_pipeline(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether ``conn`` is in pipeline mode, where a statement's results come only at the next
    sync: a row count cannot be read on the spot (nor can a prepared statement be run here)."""
    return _PIPELINES and bool(conn.pgconn.pipeline_status)


class _Operation:
    """Gives ``conn`` for one operation, inside ``transaction`` if there is one (cheaper than
    a generator: it is on every append's path)."""

    __slots__ = ("conn", "transaction")

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        transaction: contextlib.AbstractContextManager[Any] | None,
    ) -> None:
        self.conn, self.transaction = conn, transaction

    def __enter__(self) -> psycopg.Connection[Any]:
        if self.transaction is not None:
            self.transaction.__enter__()
        return self.conn

    def __exit__(self, *exc_info: Any) -> bool | None:
        return None if self.transaction is None else self.transaction.__exit__(*exc_info)


class Connections:
    """The connection handling of :class:`~attempt_ledger.postgres.PostgresLedger` (see its
    ``conninfo``); ``path`` names the ledger in errors.

    :raises TypeError: if ``conninfo`` is not a string, a ``psycopg.Connection`` or a pool.
    """

    path: Path

    def __init__(self, conninfo: str | psycopg.Connection[Any] | Any) -> None:
        if not isinstance(conninfo, (str, psycopg.Connection)) and not callable(
            getattr(conninfo, "connection", None)
        ):
            raise TypeError(
                "conninfo must be a connection string, a psycopg.Connection or a pool with a"
                f" connection() method, not {type(conninfo).__name__}"
            )
        self._conninfo = conninfo if isinstance(conninfo, str) else None
        self._pool = None if isinstance(conninfo, (str, psycopg.Connection)) else conninfo
        self._conn: psycopg.Connection[Any] | None = (
            conninfo if isinstance(conninfo, psycopg.Connection) else None
        )
        self._local = threading.local()
        self._connecting = threading.Lock()
        self._pid = os.getpid()

    def _use(self) -> contextlib.AbstractContextManager[psycopg.Connection[Any]]:
        """The connection for one operation, which is committed when the block ends."""
        if self._pool is not None:
            return self._borrowed()
        conn = self._connection()
        return _Operation(conn, self._own_transaction(conn))

    @contextlib.contextmanager
    def _borrowed(self) -> Iterator[psycopg.Connection[Any]]:
        assert self._pool is not None
        with self._pool.connection() as conn, _Operation(conn, self._own_transaction(conn)):
            yield conn

    def _own_transaction(
        self, conn: psycopg.Connection[Any]
    ) -> contextlib.AbstractContextManager[Any] | None:
        # An operation must be committed when it returns: on an autocommit connection it is;
        # on another one it gets a transaction block of its own.
        # (ACTIVE: another thread's statement; psycopg's lock makes ours wait for it.)
        if conn.closed:  # said here, before any statement: nothing of the operation was sent
            raise psycopg.OperationalError("the connection is closed")
        status = conn.pgconn.transaction_status  # conn.info makes an object per call
        if status not in _IN_TRANSACTION:
            return None if conn.autocommit else conn.transaction()
        raise LedgerDatabaseError(
            self.path,
            f"the connection is in a transaction ({psycopg.pq.TransactionStatus(status).name}):"
            " the ledger commits each operation itself; give it an autocommit connection or one"
            " with no transaction open",
            False,
        )

    def _cursor(self, conn: psycopg.Connection[Any]) -> psycopg.Cursor[Any]:
        """A cursor on ``conn``, kept for this thread: making one per statement costs a third
        of a small statement's client time."""
        cursor: psycopg.Cursor[Any] | None = getattr(self._local, "cursor", None)
        if cursor is None or cursor.connection is not conn or cursor.closed:
            cursor = self._local.cursor = conn.cursor()
        return cursor

    def _run_prepared(
        self,
        conn: psycopg.Connection[Any],
        name: bytes,
        sql: str,
        types: Sequence[int],
        params: list[bytes],
        formats: list[int],
    ) -> int | None:
        """Run the statement ``sql`` (``$n`` parameters of the given type oids) on ``conn``,
        prepared there as ``name``, through libpq: the same non-blocking execution and
        Ctrl-C handling as psycopg's cursors, without their per-call work in Python (half the
        client's time of a short statement). ``params`` are sent as they are, in ``formats``
        (lists: psycopg 3.2's libpq wrapper takes no tuples).

        :returns: the row count of the command, or ``None`` if ``conn`` does not take
            statements prepared this way (not in autocommit mode, psycopg's prepared
            statements turned off for it, as behind a pooler, or in pipeline mode), or if this
            psycopg lacks the pieces its cursors run on: the caller runs the statement on a
            cursor.
        :raises psycopg.Error: if the database or the connection fails.
        """
        pgconn = conn.pgconn
        if (
            _EXECUTE is None
            or not conn.autocommit
            or conn.prepare_threshold is None
            or conn.closed
            or in_pipeline(conn)
        ):
            return None
        prepared = _PREPARED.get(name)
        if prepared is None:
            prepared = _PREPARED.setdefault(name, weakref.WeakSet())
        with conn.lock:  # psycopg's own lock: threads may share the connection
            for again in (True, False):
                if conn not in prepared:
                    pgconn.send_prepare(name, sql.encode(), list(types))
                    self._result(conn, conn.wait(_EXECUTE(pgconn)), "42P05")
                    prepared.add(conn)
                pgconn.send_query_prepared(name, params, formats)
                result = self._result(conn, conn.wait(_EXECUTE(pgconn)), "26000")
                if result is not None or not again:
                    return result
                prepared.discard(conn)  # dropped since (DISCARD ALL, DEALLOCATE): prepare it
        return None  # not reached

    @staticmethod
    def _result(conn: psycopg.Connection[Any], results: list[Any], expected: str) -> int | None:
        """The row count of a command's ``results``, ``None`` for the error ``expected``.

        :raises psycopg.Error: for any other error.
        """
        if not results:  # as psycopg's cursors say it
            raise psycopg.InternalError("got no result from the query")
        result = results[-1]
        if result.status == _COMMAND_OK:
            return int(result.command_tuples or 0)
        error = psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
        if error.sqlstate == expected:
            return None
        raise error

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conninfo is not None and (self._conn is None or self._pid != os.getpid()):
            if self._pid != os.getpid():
                # A connection inherited over fork belongs to the parent: never touch it here;
                # nor the lock, which one of the parent's threads may have held at the fork.
                self._conn, self._pid, self._connecting = None, os.getpid(), threading.Lock()
            with self._connecting:  # threads starting at once share one new connection
                if self._conn is None:
                    try:
                        self._conn = psycopg.connect(self._conninfo, autocommit=True)
                    except psycopg.Error as error:
                        reason = f"cannot connect: {error}"
                        raise LedgerConnectionError(self.path, reason, False) from error
        assert self._conn is not None
        return self._conn

    def _listener(self) -> psycopg.Connection[Any]:
        """A new autocommit connection to the same database, for LISTEN.

        :raises psycopg.Error: if it cannot be opened.
        """
        if self._conninfo is not None:
            conninfo = self._conninfo
        else:
            with self._use() as conn:
                conninfo = conn.info.dsn  # without the password: see docs/postgres.md
        return psycopg.connect(conninfo, autocommit=True)

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
