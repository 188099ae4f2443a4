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
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from attempt_ledger import (
    AttemptLedger,
    InvalidEvent,
    LedgerError,
    LedgerIOError,
    ReceiptEvent,
    SeqConflict,
)
from attempt_ledger._codec import encode_batch
from attempt_ledger._lines import decode_record
from attempt_ledger._pgschema import id_bytes, ledger_key

from .strategies import attempts, batches, ids, payloads

psycopg = pytest.importorskip("psycopg")
from attempt_ledger.postgres import (  # noqa: E402
    SCHEMA_VERSION,
    LedgerConnectionError,
    LedgerDatabaseError,
    PostgresLedger,
    copy_from_postgres,
    copy_to_postgres,
    ledger_ids,
    migrate,
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
    real_execute = psycopg.Cursor.execute
    armed = True

    def execute(cursor: Any, sql: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal armed
        if armed:  # the append's first statement is about to be sent
            armed = False
            _terminate(dsn, conn.info.backend_pid)
        return real_execute(cursor, sql, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
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


IDLE = psycopg.pq.TransactionStatus.IDLE


def test_a_connection_not_in_autocommit_mode_gets_a_transaction_per_operation(
    dsn: str, run_id: str
) -> None:
    conn = psycopg.connect(dsn)  # autocommit off, psycopg's default
    ledger = PostgresLedger(conn, run_id, "n")
    assert ledger.append(1, "s", EV * 2).seq == 2
    # Committed, and no transaction left open holding the head row's lock.
    assert conn.info.transaction_status == IDLE
    with PostgresLedger(f"{dsn} options='-c lock_timeout=5000'", run_id, "n") as other:
        assert other.append(1, "s", EV).seq == 3
    assert [r.seq for r in ledger.records()] == [1, 2, 3]
    assert ledger.last_seq() == 3
    assert conn.info.transaction_status == IDLE
    with pytest.raises(SeqConflict):
        ledger.append(1, "s", EV, expected_last_seq=0)
    assert conn.info.transaction_status == IDLE
    conn.close()  # without a commit: nothing of the ledger's was waiting for one
    with PostgresLedger(dsn, run_id, "n") as other:
        assert other.last_seq() == 3


def test_a_connection_with_a_transaction_open_is_refused(dsn: str, run_id: str) -> None:
    conn = psycopg.connect(dsn)
    conn.execute("SELECT 1")  # the caller's transaction is open
    ledger = PostgresLedger(conn, run_id, "n")
    with pytest.raises(LedgerDatabaseError, match="in a transaction") as info:
        ledger.append(1, "s", EV)
    assert info.value.committed is False
    with pytest.raises(LedgerDatabaseError, match="in a transaction"):
        ledger.last_seq()
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS  # left alone
    conn.rollback()
    auto = psycopg.connect(dsn, autocommit=True)
    with auto.transaction(), pytest.raises(LedgerDatabaseError, match="in a transaction"):
        PostgresLedger(auto, run_id, "n").append(1, "s", EV)
    with PostgresLedger(dsn, run_id, "n") as other:
        assert other.last_seq() == 0
    assert ledger.append(1, "s", EV).seq == 1  # once the transaction is over, all is well
    conn.close()
    auto.close()


class BarePool:
    """A pool that lends its connection, not in autocommit mode, and neither commits nor
    rolls back when it comes back."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn)

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        yield self.conn


def test_a_pool_of_connections_not_in_autocommit_mode(dsn: str, run_id: str) -> None:
    pool = BarePool(dsn)
    ledger = PostgresLedger(pool, run_id, "n")
    assert ledger.append(1, "s", EV).seq == 1
    assert pool.conn.info.transaction_status == IDLE
    pool.conn.close()
    with PostgresLedger(dsn, run_id, "n") as other:
        assert other.last_seq() == 1


@pytest.mark.parametrize(
    "conninfo", [None, 5, b"dbname=x", object()], ids=["None", "int", "bytes", "object"]
)
def test_conninfo_of_the_wrong_type(conninfo: object) -> None:
    with pytest.raises(TypeError, match="conninfo must be"):
        PostgresLedger(conninfo, "r", "n")
    with pytest.raises(TypeError, match="conninfo must be"):
        migrate(conninfo)  # type: ignore[arg-type]


def test_arguments_of_the_wrong_type_write_nothing(dsn: str, run_id: str) -> None:
    ledger = PostgresLedger(dsn, run_id, "n")
    ledger.append(1, "s", EV)
    with pytest.raises(TypeError, match="run_id"):
        PostgresLedger(dsn, 5, "n")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="node_id"):
        PostgresLedger(dsn, "r", None)  # type: ignore[arg-type]
    for attempt, session, events in [
        (True, "s", EV),
        (-1, "s", EV),
        ("1", "s", EV),
        (1, 5, EV),
        (1, "s", [5]),
        (1, "s", [ReceiptEvent(5)]),  # type: ignore[arg-type]
        (1, "s", [ReceiptEvent("e", {1: 2})]),
    ]:
        with pytest.raises(InvalidEvent):
            ledger.append(attempt, session, events)
    for since in ["1", 1.5, True, None, float("nan")]:
        with pytest.raises(TypeError, match="since_seq"):
            list(ledger.iter_records(since))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="since_seq"):
            list(ledger.follow(since, timeout=0))  # type: ignore[arg-type]
    for args, name in [
        (("1", 10), "expected_min_seq"),
        ((1, "10"), "max_wait_ms"),
        ((1, 10, None), "poll_interval_ms"),
    ]:
        with pytest.raises(TypeError, match=name):
            ledger.reconcile(*args)
    with pytest.raises(ValueError, match="max_wait_ms"):  # as the file ledger: NaN is a value
        ledger.reconcile(1, float("nan"))
    for kwargs, name in [
        ({"poll_interval": "x"}, "poll_interval"),
        ({"timeout": "1"}, "timeout"),
        ({"stop": 5}, "stop"),
    ]:
        with pytest.raises(TypeError, match=name):
            ledger.follow(1, **kwargs)
    assert [r.seq for r in ledger.records()] == [1]
    ledger.close()


def test_ids_are_keyed_unambiguously(dsn: str, run_id: str) -> None:
    with (
        PostgresLedger(dsn, f"{run_id}ab", "c") as one,
        PostgresLedger(dsn, f"{run_id}a", "bc") as other,
        PostgresLedger(dsn, f"{run_id}a\x00", "bc") as third,
    ):
        one.append(1, "s", EV)
        assert (other.last_seq(), third.last_seq()) == (0, 0)
        third.append(1, "s", EV * 2)
        assert (one.last_seq(), other.last_seq(), third.last_seq()) == (1, 0, 2)


def test_a_refused_optimistic_append_leaves_no_ledger_behind(dsn: str, run_id: str) -> None:
    with PostgresLedger(dsn, run_id, "n") as ledger, pytest.raises(SeqConflict):
        ledger.append(1, "s", EV, expected_last_seq=3)
    assert not [ids for ids in ledger_ids(dsn) if ids[0] == run_id]


def test_copying_a_ledger_that_does_not_exist_says_so(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    from .test_cli import run

    env = {**os.environ, "ATTEMPT_LEDGER_PG_DSN": dsn}
    with PostgresLedger(dsn, run_id, "empty") as ledger, pytest.raises(SeqConflict):
        ledger.append(1, "s", EV, expected_last_seq=3)  # a head row, but no records
    for node in ("n", "empty"):
        out = run(tmp_path / "out", "from-postgres", run_id, node, env=env)
        assert (out.returncode, out.stdout) == (3, ""), out
        assert "no such ledger in the database" in out.stderr
        assert f"{run_id}/{node}" in out.stderr
    assert not (tmp_path / "out").exists()  # not even the run directory or a lock file
    into = run(tmp_path / "in", "to-postgres", run_id, "n", env=env)
    assert (into.returncode, into.stdout) == (3, ""), into
    assert "no such ledger" in into.stderr
    assert str(AttemptLedger(tmp_path / "in", run_id, "n").path) in into.stderr
    assert not (tmp_path / "in").exists()
    with PostgresLedger(dsn, run_id, "n") as ledger:
        assert ledger.last_seq() == 0


def test_copying_out_never_follows_a_symlink_at_the_ledger_path(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    with PostgresLedger(dsn, run_id, "n") as ledger:
        ledger.append(1, "s", EV)
    target = AttemptLedger(tmp_path / "out", run_id, "n")
    target.path.parent.mkdir(parents=True)
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(b"")
    target.path.symlink_to(outside)
    with pytest.raises(LedgerIOError, match="symbolic link"):
        copy_from_postgres(dsn, run_id, "n", tmp_path / "out")
    assert outside.read_bytes() == b""


# Version 1 of the schema, as attempt_ledger 0.1.0's migrate() created it.
_V1_SCHEMA = [
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


_ALL_LINES = "SELECT seq, line FROM attempt_ledger_receipts ORDER BY line"


@pytest.fixture
def fresh_dsn(dsn: str) -> Iterator[str]:
    """A new, empty database on the same server, dropped afterwards."""
    name = f"attempt_ledger_{uuid.uuid4().hex}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield psycopg.conninfo.make_conninfo(dsn, dbname=name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_migrate_upgrades_a_version_1_database_in_place(fresh_dsn: str) -> None:
    ledgers = [("run/1", "node:a", 3), ("é\u3000ü", "n", 2), ("a", "bc", 1), ("ab", "c", 1)]
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        for statement in _V1_SCHEMA:
            conn.execute(statement)
        conn.execute("INSERT INTO attempt_ledger_schema VALUES (1)")
        for run_id, node_id, count in ledgers:
            batch = encode_batch(Path(), run_id, node_id, 7, "s", [ReceiptEvent("e", {"k": 1})])
            tails = [tail[:-1] for tail in batch.tails]  # stored without the newline
            for _ in range(count):
                conn.execute(
                    "SELECT * FROM attempt_ledger_append(%s, %s, NULL, %s, %s, %s, 'x')",
                    (run_id, node_id, batch.head, b',"ts_ms":5,"event_type":', tails),
                )
        old_lines = conn.execute(_ALL_LINES).fetchall()
    with pytest.raises(LedgerDatabaseError, match="run migrate"):
        PostgresLedger(fresh_dsn, "run/1", "node:a").last_seq()  # the v1 tables: no key column
    assert migrate(fresh_dsn) == migrate(fresh_dsn) == SCHEMA_VERSION == 4
    with psycopg.connect(fresh_dsn) as conn:
        assert conn.execute(_ALL_LINES).fetchall() == old_lines  # byte for byte
    for run_id, node_id, count in ledgers:
        with PostgresLedger(fresh_dsn, run_id, node_id) as ledger:
            assert ledger.last_seq() == count
            assert [(r.run_id, r.node_id, r.seq, r.ts_ms) for r in ledger.records()] == [
                (run_id, node_id, seq, 5) for seq in range(1, count + 1)
            ]
            assert ledger.append(1, "s", EV).seq == count + 1
    assert ledger_ids(fresh_dsn) == sorted((r, n) for r, n, _ in ledgers)


def test_a_database_without_the_schema_or_with_a_newer_one(fresh_dsn: str) -> None:
    with pytest.raises(LedgerDatabaseError, match="run migrate") as info:
        PostgresLedger(fresh_dsn, "r", "n").append(1, "s", EV)
    assert info.value.committed is False
    assert migrate(fresh_dsn) == SCHEMA_VERSION
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute("UPDATE attempt_ledger_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(LedgerError, match="knows up to"):
        migrate(fresh_dsn)
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute("UPDATE attempt_ledger_schema SET version = 0")
    with pytest.raises(LedgerError, match="unknown schema version 0"):
        migrate(fresh_dsn)


# Version 2 of the schema, as the previous release's migrate() created it.
_V2_SCHEMA = [
    "CREATE TABLE attempt_ledger_schema (version integer NOT NULL)",
    "INSERT INTO attempt_ledger_schema VALUES (2)",
    """CREATE TABLE attempt_ledger_heads (
        run_id bytea NOT NULL, node_id bytea NOT NULL, last_seq numeric(20, 0) NOT NULL,
        key bytea PRIMARY KEY)""",
    """CREATE TABLE attempt_ledger_receipts (
        seq numeric(20, 0) NOT NULL, line bytea NOT NULL, key bytea NOT NULL,
        PRIMARY KEY (key, seq))""",
    """CREATE FUNCTION attempt_ledger_append(
        k bytea, r bytea, n bytea, expected numeric, head bytea, middle bytea, tails bytea[],
        channel text, OUT ok boolean, OUT last numeric) LANGUAGE plpgsql AS $$
    DECLARE count integer := cardinality(tails);
    BEGIN
        INSERT INTO attempt_ledger_heads (run_id, node_id, last_seq, key) VALUES (r, n, 0, k)
            ON CONFLICT DO NOTHING;
        SELECT h.last_seq INTO last FROM attempt_ledger_heads h WHERE h.key = k FOR UPDATE;
        IF (expected IS NOT NULL AND expected <> last) OR last + count > 18446744073709551615
        THEN
            ok := false;
            RETURN;
        END IF;
        INSERT INTO attempt_ledger_receipts (key, seq, line)
            SELECT k, last + i, head || convert_to((last + i)::text, 'UTF8') || middle || tail
            FROM unnest(tails) WITH ORDINALITY AS t(tail, i);
        UPDATE attempt_ledger_heads h SET last_seq = last + count WHERE h.key = k;
        PERFORM pg_notify(channel, encode(k, 'hex'));
        ok := true;
    END $$""",
]


def test_migrate_upgrades_a_version_2_database_in_place(fresh_dsn: str) -> None:
    ledgers = [("run/1", "node:a", 3), ("a\x00", "bc", 2), ("é" * 2000, "n", 1)]
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        for statement in _V2_SCHEMA:
            conn.execute(statement)
        for run_id, node_id, count in ledgers:
            batch = encode_batch(Path(), run_id, node_id, 7, "s", [ReceiptEvent("e", {"k": 1})])
            for _ in range(count):
                conn.execute(
                    "SELECT * FROM attempt_ledger_append(%s, %s, %s, NULL, %s, %s, %s, 'x')",
                    (
                        ledger_key(run_id, node_id),
                        id_bytes(run_id),
                        id_bytes(node_id),
                        batch.head,
                        b',"ts_ms":5,"event_type":',
                        [tail[:-1] for tail in batch.tails],
                    ),
                )
        old_lines = conn.execute(_ALL_LINES).fetchall()
    with PostgresLedger(fresh_dsn, "run/1", "node:a") as old:  # no listeners column
        with pytest.raises(LedgerDatabaseError, match="run migrate"):
            old.append(1, "s", EV)
        with pytest.raises(LedgerDatabaseError, match="run migrate"):
            old.reconcile(9, 0)
    assert migrate(fresh_dsn) == migrate(fresh_dsn) == SCHEMA_VERSION == 4
    with psycopg.connect(fresh_dsn) as conn:
        assert conn.execute(_ALL_LINES).fetchall() == old_lines  # byte for byte
        functions = conn.execute("SELECT count(*) FROM pg_proc WHERE proname LIKE 'attempt%'")
        assert functions.fetchone() == (0,)  # the version-2 append function is gone
    for run_id, node_id, count in ledgers:
        with PostgresLedger(fresh_dsn, run_id, node_id) as ledger:
            assert ledger.last_seq() == count
            assert ledger.append(1, "s", EV * 2).seq == count + 2
            assert [r.seq for r in ledger.records()] == list(range(1, count + 3))
    assert ledger_ids(fresh_dsn) == sorted((r, n) for r, n, _ in ledgers)


def _notified_keys(listener: Any, dsn: str) -> list[str]:
    """The payloads ``listener`` got on the ledger channel up to now: a marker notification,
    sent after, comes after every notification of a transaction committed before it."""
    marker = uuid.uuid4().hex
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("SELECT pg_notify('attempt_ledger', %s)", (marker,))
    got = []
    for note in listener.notifies(timeout=30):
        if note.payload == marker:
            return got
        got.append(note.payload)
    raise AssertionError("the marker notification never came")


def test_an_append_notifies_only_while_someone_waits_for_that_ledger(dsn: str, run_id: str) -> None:
    listener = psycopg.connect(dsn, autocommit=True)
    listener.execute("LISTEN attempt_ledger")
    writer, waiter = PostgresLedger(dsn, run_id, "n"), PostgresLedger(dsn, run_id, "n")
    other = PostgresLedger(dsn, run_id, "other")
    key = ledger_key(run_id, "n").hex()
    writer.append(1, "s", EV)
    writer.append(1, "s", EV * 3)  # both statements: one line, several
    assert key not in _notified_keys(listener, dsn)  # nobody waits: no NOTIFY
    with waiter._listening():
        writer.append(1, "s", EV)
        writer.append(1, "s", EV * 2)
        other.append(1, "s", EV)  # a ledger nobody waits for
        assert _notified_keys(listener, dsn) == [key, key]
    writer.append(1, "s", EV)
    assert key not in _notified_keys(listener, dsn)  # the waiter is gone
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT listeners FROM attempt_ledger_heads WHERE key = %s", (ledger_key(run_id, "n"),)
        )
        assert rows.fetchall() == [([],)]
    for ledger in (writer, waiter, other, listener):
        ledger.close()


def test_registrations_of_dead_listeners_are_dropped(dsn: str, run_id: str) -> None:
    listener = psycopg.connect(dsn, autocommit=True)
    listener.execute("LISTEN attempt_ledger")
    waiter, writer = PostgresLedger(dsn, run_id, "n"), PostgresLedger(dsn, run_id, "n")
    key = ledger_key(run_id, "n")
    with waiter._listening():  # a waiter killed while waiting: its registration stays behind
        with psycopg.connect(dsn) as conn:
            query = "SELECT listeners[1] FROM attempt_ledger_heads WHERE key = %s"
            (pid,) = conn.execute(query, (key,)).fetchone()
        _terminate(dsn, pid)
    writer.append(1, "s", EV)
    assert _notified_keys(listener, dsn) == [key.hex()]  # harmless: a NOTIFY too many
    with waiter._listening():  # the next registration drops the dead one
        with psycopg.connect(dsn) as conn:
            (listeners,) = conn.execute(
                "SELECT listeners FROM attempt_ledger_heads WHERE key = %s", (key,)
            ).fetchone()
        assert len(listeners) == 1
        assert pid not in listeners
    writer.append(1, "s", EV)
    assert _notified_keys(listener, dsn) == []
    for ledger in (writer, waiter, listener):
        ledger.close()


@pytest.mark.parametrize("method", ["reconcile", "follow"])
def test_a_wait_is_woken_by_the_commit_not_its_poll(dsn: str, method: str) -> None:
    # The poll interval is a minute: only a notification (or the first read, if the append
    # came first) can end these waits within the join's timeout, whichever of the waiter's
    # registration and the append comes first.
    for _ in range(10):
        run_id = uuid.uuid4().hex
        waiter, writer = PostgresLedger(dsn, run_id, "n"), PostgresLedger(dsn, run_id, "n")
        found: list[object] = []

        def wait(waiter: PostgresLedger = waiter, found: list[object] = found) -> None:
            if method == "reconcile":
                found.append(waiter.reconcile(1, 60_000, 60_000).found)
            else:
                follow = waiter.follow(poll_interval=60, timeout=60)
                found.append(next(follow).seq)
                follow.close()

        thread = threading.Thread(target=wait)
        thread.start()
        writer.append(1, "s", EV)
        thread.join(timeout=30)
        assert not thread.is_alive(), "the wait missed the commit's notification"
        assert found in ([True], [1])
        waiter.close()
        writer.close()


@given(batch=batches, attempt=attempts, session=ids, new=st.booleans())
@example(
    batch=[ReceiptEvent("e", {"\\000": "\\\\\n\x00é\u2028\\x0a"}), ReceiptEvent("\\")],
    attempt=0,
    session="\\",
    new=False,
)
@settings(max_examples=30, deadline=None)
def test_lines_are_stored_as_the_file_ledger_encodes_them(
    pg_dsn: str, batch: list[ReceiptEvent], attempt: int, session: str, new: bool
) -> None:
    # Both append statements (one line, several) and the first append of a ledger.
    run_id, node_id = uuid.uuid4().hex, "n\x00\\"
    with PostgresLedger(pg_dsn, run_id, node_id) as ledger:
        if not new:
            ledger.append(1, "s", EV)
        first = ledger.last_seq() + 1
        ledger.append(attempt, session, batch)
        rows = ledger._query(
            "SELECT line FROM attempt_ledger_receipts WHERE key = %s AND seq >= %s ORDER BY seq",
            (first,),
        )
    ts_ms = decode_record(bytes(rows[0][0])).ts_ms
    encoded = encode_batch(ledger.path, run_id, node_id, attempt, session, batch)
    assert b"".join(bytes(line) + b"\n" for (line,) in rows) == encoded.render(first, ts_ms)


def test_a_read_only_role_waits_by_polling(dsn: str, run_id: str) -> None:
    role = f"reader_{uuid.uuid4().hex}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"GRANT SELECT ON attempt_ledger_heads, attempt_ledger_receipts TO {role}")
    reader = PostgresLedger(psycopg.conninfo.make_conninfo(dsn, user=role), run_id, "n")
    found: list[bool] = []
    try:
        with pytest.raises(LedgerDatabaseError, match="permission denied"):
            reader.append(1, "s", EV)
        thread = threading.Thread(target=lambda: found.append(reader.reconcile(1, 60_000).found))
        thread.start()
        with PostgresLedger(dsn, run_id, "n") as writer:
            writer.append(1, "s", EV)
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert found == [True]
    finally:
        reader.close()
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")


def test_threads_sharing_a_ledger_get_their_own_results(dsn: str, run_id: str) -> None:
    # One connection, a kept cursor per thread: each append gets its own statement's row.
    ledger = PostgresLedger(dsn, run_id, "n")
    got: list[int] = []
    barrier = threading.Barrier(4)

    def appender() -> None:
        barrier.wait(timeout=30)
        got.extend(ledger.append(1, "s", EV * 2).seq for _ in range(25))

    threads = [threading.Thread(target=appender) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert sorted(got) == list(range(2, 201, 2))
    assert [r.seq for r in ledger.records()] == list(range(1, 201))
    ledger.close()


def _append_with(ledger: PostgresLedger | tuple[str, str], out: Any) -> None:
    if isinstance(ledger, tuple):
        ledger = PostgresLedger(*ledger, "n")
    out.put([ledger.append(1, "s", EV).seq for _ in range(5)])
    ledger.close()  # a fork child's close leaves the parent's connection alone


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_ledger_used_before_and_after_a_child_appends(dsn: str, run_id: str, method: str) -> None:
    import multiprocessing

    ledger = PostgresLedger(dsn, run_id, "n")
    assert ledger.append(1, "s", EV).seq == 1  # its connection and cursor are open
    ctx = multiprocessing.get_context(method)
    out = ctx.Queue()
    # A fork child inherits the object (and must open its own connection); a spawned one
    # cannot, so it opens the ledger anew.
    child = ctx.Process(
        target=_append_with, args=(ledger if method == "fork" else (dsn, run_id), out)
    )
    child.start()
    try:
        assert out.get(timeout=60) == [2, 3, 4, 5, 6]
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
            child.join()
    assert child.exitcode == 0
    assert ledger.append(1, "s", EV).seq == 7  # the parent's connection is still its own
    assert [r.seq for r in ledger.records()] == list(range(1, 8))
    ledger.close()


def test_an_optimistic_append_retries_when_the_seq_it_expects_comes_in_between(
    dsn: str, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The append statement is refused (last seq 1, expected 2); another writer appends before
    # the refusal reads the last seq, which is now the expected one: the statement runs again.
    with PostgresLedger(dsn, run_id, "n") as ledger, PostgresLedger(dsn, run_id, "n") as other:
        ledger.append(1, "s", EV)
        real_execute = psycopg.Cursor.execute
        reads = 0

        def execute(cursor: Any, sql: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal reads
            if str(sql).startswith("SELECT last_seq") and cursor.connection is ledger._conn:
                reads += 1
                if reads == 1:
                    assert other.append(1, "other", EV).seq == 2
            return real_execute(cursor, sql, *args, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, "execute", execute)
        assert ledger.append(1, "s", EV * 2, expected_last_seq=2).seq == 4
        assert reads == 1
        with pytest.raises(SeqConflict) as info:
            ledger.append(1, "s", EV, expected_last_seq=2)
        assert (info.value.expected, info.value.actual) == (2, 4)
        assert [(r.seq, r.session_id) for r in ledger.records()] == [
            (1, "s"),
            (2, "other"),
            (3, "s"),
            (4, "s"),
        ]
