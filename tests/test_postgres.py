"""PostgreSQL-only behaviour: connections, pools and faults (skipped without a server)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from attempt_ledger import ReceiptEvent

psycopg = pytest.importorskip("psycopg")
from attempt_ledger.postgres import LedgerConnectionError, PostgresLedger  # noqa: E402

EV = [ReceiptEvent("e", {"k": 1})]


@pytest.fixture
def dsn(pg_dsn: str) -> str:
    return pg_dsn  # a shorter name; every test uses a fresh run_id in the shared database


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex


class CountingPool:
    """The part of psycopg_pool's interface the ledger uses, counting loans and returns."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn)
        self.out = self.loans = 0

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        self.out += 1
        self.loans += 1
        try:
            yield self.conn
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise
        finally:
            self.out -= 1


def test_pool_connections_are_borrowed_per_operation_and_returned(dsn: str, run_id: str) -> None:
    pool = CountingPool(dsn)
    ledger = PostgresLedger(pool, run_id, "n")
    assert ledger.append(1, "s", EV * 2).seq == 2
    assert [r.seq for r in ledger.records()] == [1, 2]
    with pytest.raises(Exception):  # noqa: B017, PT011 - any conflict error will do
        ledger.append(1, "s", EV, expected_last_seq=0)
    assert ledger.last_seq() == 2
    assert pool.out == 0  # every loan came back, also after the error
    assert pool.loans >= 4
    ledger.close()
    assert not pool.conn.closed  # the pool's connection is not the ledger's to close
    pool.conn.close()


def test_borrowed_connection_is_not_closed(dsn: str, run_id: str) -> None:
    conn = psycopg.connect(dsn, autocommit=True)
    with PostgresLedger(conn, run_id, "n") as ledger:
        ledger.append(1, "s", EV)
    assert not conn.closed
    assert PostgresLedger(conn, run_id, "n").last_seq() == 1
    conn.close()


def _terminate(dsn: str, pid: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_connection_killed_mid_transaction_commits_nothing(
    dsn: str, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = PostgresLedger(dsn, run_id, "n")
    ledger.append(1, "s", EV)
    conn = ledger._connection()
    real_execute = conn.execute

    def execute(sql: Any, *args: Any, **kwargs: Any) -> Any:
        if str(sql).startswith("UPDATE attempt_ledger_heads"):  # receipts inserted, head not yet
            _terminate(dsn, conn.info.backend_pid)
        return real_execute(sql, *args, **kwargs)

    monkeypatch.setattr(conn, "execute", execute)
    with pytest.raises(LedgerConnectionError) as info:
        ledger.append(1, "s", EV * 3)
    assert info.value.committed is False
    assert "was not committed" in str(info.value)
    # The ledger reconnects; nothing of the failed batch is there.
    assert ledger.last_seq() == 1
    assert ledger.append(1, "s", EV).seq == 2
    assert [r.seq for r in ledger.records()] == [1, 2]
    ledger.close()


def test_statement_timeout_on_a_locked_ledger(dsn: str, run_id: str) -> None:
    with PostgresLedger(dsn, run_id, "n") as ledger:
        ledger.append(1, "s", EV)
    holder = psycopg.connect(dsn)
    holder.execute(
        "SELECT 1 FROM attempt_ledger_heads WHERE run_id = %s FOR UPDATE", (run_id,)
    )  # an open transaction holds the head row
    try:
        slow = PostgresLedger(f"{dsn} options='-c statement_timeout=200'", run_id, "n")
        with pytest.raises(LedgerConnectionError) as info:
            slow.append(1, "s", EV)
        assert info.value.committed is False
        assert "statement timeout" in str(info.value)
    finally:
        holder.rollback()
        holder.close()
    assert slow.append(1, "s", EV).seq == 2
    slow.close()


def _restart_server() -> None:
    data, bindir = os.environ["ATTEMPT_LEDGER_PG_DATA"], os.environ["ATTEMPT_LEDGER_PG_BIN"]
    owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    log = os.path.join(os.path.dirname(data), "server.log")
    # The server must not inherit our pipes, or run() would wait for it to exit: log to a file.
    subprocess.run(
        [*owner, f"{bindir}/pg_ctl", "-D", data, "-l", log, "-m", "fast", "-w", "restart"],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
    )


def test_server_restart_loses_no_acknowledged_append(dsn: str, run_id: str) -> None:
    if "ATTEMPT_LEDGER_PG_DATA" not in os.environ:
        pytest.skip("the server is not ours to restart")
    acknowledged: list[int] = []
    unknown = failures = 0
    done = threading.Event()

    def writer() -> None:
        nonlocal unknown, failures
        ledger = PostgresLedger(dsn, run_id, "n")
        while not done.is_set() or len(acknowledged) < 50:
            try:
                acknowledged.append(ledger.append(1, "s", EV).seq)
            except LedgerConnectionError as error:
                failures += 1
                unknown += error.committed is None  # may be there, was never acknowledged
        ledger.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(acknowledged) < 20:  # appends are flowing
            thread.join(timeout=0.01)
        _restart_server()
    finally:
        done.set()
        thread.join(timeout=120)
    assert not thread.is_alive()
    assert failures >= 1, "the restart did not interrupt the writer"
    with PostgresLedger(dsn, run_id, "n") as ledger:
        stored = [r.seq for r in ledger.records()]
    assert stored == list(range(1, len(stored) + 1))  # exact, no gap, no repeat
    assert set(acknowledged) <= set(stored)
    assert len(acknowledged) == len(set(acknowledged))
    assert len(stored) - len(acknowledged) <= unknown
