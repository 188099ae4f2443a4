"""PostgreSQL-only behaviour: connections, pools and faults (skipped without a server)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from attempt_ledger import AttemptLedger, LedgerError, ReceiptEvent, SeqConflict

from .strategies import attempts, ids, payloads

psycopg = pytest.importorskip("psycopg")
from attempt_ledger.postgres import (  # noqa: E402
    LedgerConnectionError,
    PostgresLedger,
    copy_to_postgres,
)

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
        if "attempt_ledger_append" in str(sql):  # the append statement is about to be sent
            _terminate(dsn, conn.info.backend_pid)
        return real_execute(sql, *args, **kwargs)

    monkeypatch.setattr(conn, "execute", execute)
    with pytest.raises(LedgerConnectionError) as info:
        ledger.append(1, "s", EV * 3)
    # The client cannot tell whether the server got as far as committing; it says so.
    assert info.value.committed is None
    assert "may or may not be committed" in str(info.value)
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


def test_round_trip_file_postgres_file_is_byte_identical(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    from .test_cli import run

    source = AttemptLedger(tmp_path / "a", run_id, "node:1")
    source.append(1, "s", [ReceiptEvent("e", {"é": [1.5, None, "x" * 300]}), ReceiptEvent("f")])
    source.append(2, "t", EV)
    with source.path.open("ab") as f:
        f.write(b"junk, not copied\n")
    env = {**os.environ, "ATTEMPT_LEDGER_PG_DSN": dsn}
    done = run(tmp_path / "a", "to-postgres", "--all", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["records"] == 3
    assert PostgresLedger(dsn, run_id, "node:1").last_seq() == 3
    done = run(tmp_path / "b", "from-postgres", run_id, "node:1", env=env)
    assert done.returncode == 0, done.stderr
    copy = AttemptLedger(tmp_path / "b", run_id, "node:1").path
    assert copy.read_bytes() == source.path.read_bytes().replace(b"junk, not copied\n", b"")
    # Neither side is overwritten: a second copy is refused, and changes nothing.
    again = run(tmp_path / "a", "to-postgres", "--all", env=env)
    assert again.returncode == 3
    assert "already has records" in again.stderr
    back = run(tmp_path / "b", "from-postgres", run_id, "node:1", env=env)
    assert back.returncode == 3
    assert "not empty" in back.stderr
    assert PostgresLedger(dsn, run_id, "node:1").last_seq() == 3


def test_a_file_with_two_ledgers_records_is_refused(dsn: str, run_id: str, tmp_path: Path) -> None:
    AttemptLedger(tmp_path, f"{run_id}/x", "n").append(1, "s", EV)
    AttemptLedger(tmp_path, f"{run_id}:x", "n").append(1, "s", EV)  # the same file
    path = AttemptLedger(tmp_path, f"{run_id}/x", "n").path
    with pytest.raises(LedgerError, match="2 ledgers share this file"):
        copy_to_postgres(path, dsn)
    assert PostgresLedger(dsn, f"{run_id}/x", "n").last_seq() == 0


def test_cli_without_a_database_says_so(tmp_path: Path) -> None:
    from .test_cli import run

    env = {k: v for k, v in os.environ.items() if k != "ATTEMPT_LEDGER_PG_DSN"}
    done = run(tmp_path, "pg-migrate", env=env)
    assert done.returncode == 2
    assert "no database" in done.stderr
    bad = run(tmp_path, "pg-migrate", "--dsn", "host=/nonexistent dbname=x", env=env)
    assert bad.returncode == 3
    assert bad.stderr.startswith("attempt-ledger: database:")
    assert "Traceback" not in bad.stderr


class PostgresMachine(RuleBasedStateMachine):
    """The PostgreSQL ledger against a pure model: random batches, optimistic appends, reads.
    (The file ledger's machine also injects foreign bytes, which has no counterpart here.)"""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = PostgresLedger(os.environ["ATTEMPT_LEDGER_PG_DSN"], uuid.uuid4().hex, "n")
        self.model: list[tuple[int, str, str, object]] = []  # attempt, session, type, payload

    def teardown(self) -> None:
        self.ledger.close()

    @rule(
        attempt=attempts,
        session=ids,
        events=st.lists(
            st.builds(ReceiptEvent, st.sampled_from(["a", " b "]), payloads), max_size=3
        ),
        expect=st.sampled_from(["none", "right", "wrong"]),
    )
    def append(self, attempt: int, session: str, events: list[ReceiptEvent], expect: str) -> None:
        expected = {"none": None, "right": len(self.model), "wrong": len(self.model) + 1}[expect]
        if expect == "wrong":
            with pytest.raises(SeqConflict):
                self.ledger.append(attempt, session, events, expected_last_seq=expected)
            return
        summary = self.ledger.append(attempt, session, events, expected_last_seq=expected)
        self.model += [(attempt, session, e.event_type.strip(), e.payload) for e in events]
        assert (summary.seq, summary.record_count) == (len(self.model), len(events))

    @invariant()
    def reads_match_the_model(self) -> None:
        assert self.ledger.last_seq() == len(self.model)
        got = [(r.attempt, r.session_id, r.event_type, r.payload) for r in self.ledger.records()]
        assert got == self.model


@pytest.fixture
def _pg_for_machine(pg_dsn: str) -> None:
    """The machine reads the DSN from the environment; this makes sure it is migrated."""


@pytest.mark.usefixtures("_pg_for_machine")
def test_postgres_ledger_against_model() -> None:
    run_state_machine_as_test(
        PostgresMachine, settings=settings(max_examples=15, stateful_step_count=15, deadline=None)
    )
