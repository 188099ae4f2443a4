"""The one-line append numbered by the client (APPEND_NEXT): taken only when the guess is the
next seq, refused otherwise with nothing written, prepared on autocommit connections and left
to cursors elsewhere, and as sound under faults as the server-numbered statements."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from attempt_ledger import ReceiptEvent, SeqConflict, SeqExhausted
from attempt_ledger._codec import encode_batch
from attempt_ledger._pgappend import AppendStatements

psycopg = pytest.importorskip("psycopg")
from attempt_ledger._pgschema import APPEND_NEXT_NAME  # noqa: E402
from attempt_ledger.postgres import (  # noqa: E402
    AsyncPostgresLedger,
    LedgerConnectionError,
    PostgresLedger,
)

EV = [ReceiptEvent("e", {"k": 1})]


@pytest.fixture
def dsn(pg_dsn: str) -> str:
    return pg_dsn


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex


class Spy:
    """Counts the ledger's prepared runs of APPEND_NEXT and what they returned."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, before: Any = None) -> None:
        self.results: list[int | None] = []
        real = PostgresLedger._run_prepared

        def run(ledger: PostgresLedger, conn: Any, *args: Any) -> int | None:
            if before is not None:
                before(ledger, conn)
            result = real(ledger, conn, *args)
            self.results.append(result)
            return result

        monkeypatch.setattr(PostgresLedger, "_run_prepared", run)


def _prepared(conn: Any) -> list[str]:
    return [row[0] for row in conn.execute("SELECT name FROM pg_prepared_statements")]


def _sessions(ledger: PostgresLedger) -> list[tuple[int, str]]:
    return [(r.seq, r.session_id) for r in ledger.records()]


def test_a_single_writer_appends_its_next_line_with_the_prepared_statement(
    dsn: str, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    with PostgresLedger(dsn, run_id, "n") as ledger:
        assert ledger.append(1, "s", EV).seq == 1  # nothing to guess from: the server numbers
        assert spy.results == []
        assert [ledger.append(1, "s", EV).seq for _ in range(3)] == [2, 3, 4]
        assert spy.results == [1, 1, 1]
        assert APPEND_NEXT_NAME.decode() in _prepared(ledger._connection())
        assert ledger.append(1, "s", EV * 2).seq == 6  # batches: the server numbers them
        assert ledger.append(1, "s", EV).seq == 7  # and the guess follows
        assert spy.results == [1, 1, 1, 1]
        assert ledger.last_seq() == 7
        assert [r.seq for r in ledger.records()] == list(range(1, 8))


def test_a_stale_guess_writes_nothing_and_the_server_numbers_the_line(
    dsn: str, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    with PostgresLedger(dsn, run_id, "n") as one, PostgresLedger(dsn, run_id, "n") as two:
        assert one.append(1, "one", EV).seq == 1
        assert two.append(1, "two", EV).seq == 2
        assert one.append(1, "one", EV).seq == 3  # its guess, 2, was taken by the other
        assert spy.results == [0]
        assert _sessions(one) == [(1, "one"), (2, "two"), (3, "one")]


def test_guesses_that_keep_failing_are_skipped_for_longer_each_time() -> None:
    plan = AppendStatements()
    plan._chained, plan._next = False, 5
    batch = encode_batch(Path("x"), "r", "n", 1, "s", EV)
    tried = []
    for _ in range(200):  # every guess refused: another writer is always in between
        seq = plan._guess(batch, None)
        tried.append(seq is not None)
        if seq is not None:
            plan._guessed(None, None)
    gaps = [len(run) for run in "".join("x" if t else "." for t in tried).split("x")[1:-1]]
    assert gaps[:7] == [1, 3, 7, 15, 31, 63, 64]
    assert set(gaps[6:]) == {64}  # capped: a lone writer again is noticed within 65 appends
    plan._guessed(9, None)  # a guess taken: guess every time again
    assert plan._guess(batch, None) == 10
    plan._guessed(None, 3)  # the caller's expected seq refused: says nothing of other writers
    assert plan._skip == 0
    assert plan._guess(batch, None) == 10
    assert plan._guess(batch, 7) == 8  # an expected seq is tried whatever the skips
    plan._chained = True
    assert plan._guess(batch, 7) is None  # a chain: the server hashes
    plan._chained = False
    several = encode_batch(Path("x"), "r", "n", 1, "s", EV * 2)
    assert plan._guess(several, 7) is None


def test_an_expected_seq_is_tried_exactly_and_a_wrong_one_is_a_conflict(
    dsn: str, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    with PostgresLedger(dsn, run_id, "n") as ledger, PostgresLedger(dsn, run_id, "n") as other:
        ledger.append(1, "s", EV)
        assert other.append(1, "o", EV, expected_last_seq=1).seq == 2  # a fresh object
        with pytest.raises(SeqConflict) as info:
            ledger.append(1, "s", EV, expected_last_seq=1)
        assert (info.value.expected, info.value.actual) == (1, 2)
        assert spy.results == [1, 0]
        assert _sessions(ledger) == [(1, "s"), (2, "o")]


def test_the_last_seq_of_all_is_guessed_and_the_one_past_it_is_refused(
    dsn: str, run_id: str
) -> None:
    with PostgresLedger(dsn, run_id, "n") as ledger:
        ledger.append(1, "s", EV)
        ledger._connection().execute(
            "UPDATE attempt_ledger_heads SET last_seq = %s WHERE key = %s",
            (2**64 - 2, ledger._key),
        )
        assert ledger.append(1, "s", EV, expected_last_seq=2**64 - 2).seq == 2**64 - 1
        assert ledger.records()[-1].seq == 2**64 - 1
        for expected in (None, 2**64 - 1):
            with pytest.raises(SeqExhausted):
                ledger.append(1, "s", EV, expected_last_seq=expected)
        assert ledger.last_seq() == 2**64 - 1


def test_a_guess_on_a_ledger_chained_meanwhile_continues_the_chain(dsn: str, run_id: str) -> None:
    with (
        PostgresLedger(dsn, run_id, "n") as plain,
        PostgresLedger(dsn, run_id, "n", hash_chain=True) as chained,
    ):
        plain.append(1, "s", EV)
        chained.append(1, "s", EV)
        # The seq is right; the head row's hash refuses the client's unhashed line.
        assert plain.append(1, "s", EV, expected_last_seq=2).seq == 3
        assert plain.append(1, "s", EV).seq == 4
        result = plain.verify()
        assert result.valid, result.violation
        assert (result.hashed_record_count, result.last_seq) == (3, 4)
        lines = list(plain._iter_lines(0))
        assert b'"record_hash"' not in lines[0]
        assert all(b'"record_hash"' in line for line in lines[1:])


def test_a_connection_whose_statements_were_discarded_prepares_again(
    dsn: str, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    conn = psycopg.connect(dsn, autocommit=True)
    with PostgresLedger(conn, run_id, "n") as ledger, PostgresLedger(conn, run_id, "m") as other:
        ledger.append(1, "s", EV)
        other.append(1, "s", EV)
        assert ledger.append(1, "s", EV).seq == 2
        assert other.append(1, "s", EV).seq == 2  # prepared once for the connection
        for reset in ("DISCARD ALL", f"DEALLOCATE {APPEND_NEXT_NAME.decode()}"):
            conn.execute(reset)
            assert APPEND_NEXT_NAME.decode() not in _prepared(conn)
            ledger.append(1, "s", EV)
            assert APPEND_NEXT_NAME.decode() in _prepared(conn)
        assert spy.results == [1, 1, 1, 1]
        assert [r.seq for r in ledger.records()] == [1, 2, 3, 4]
    conn.close()


@pytest.mark.parametrize("kind", ["no prepared statements", "not autocommit"])
def test_connections_that_do_not_take_our_statement_run_it_on_a_cursor(
    dsn: str, run_id: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prepare_threshold=None is how psycopg is told that the server is behind a pooler that
    # cannot keep a prepared statement; a transaction block is not ours to prepare in.
    spy = Spy(monkeypatch)
    if kind == "not autocommit":
        conn = psycopg.connect(dsn)
    else:
        conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=None)
    with PostgresLedger(conn, run_id, "n") as ledger:
        assert [ledger.append(1, "s", EV).seq for _ in range(8)] == list(range(1, 9))
        assert spy.results == [None] * 7  # declined: a cursor ran each guess
        assert APPEND_NEXT_NAME.decode() not in _prepared(conn)
        assert ledger._next == 9
    conn.close()


def test_a_psycopg_without_the_pieces_its_cursors_run_on_runs_the_guess_on_a_cursor(
    dsn: str, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The libpq path uses psycopg's undocumented execution pieces: a version without them must
    # still append, through a cursor, with the same seqs.
    from attempt_ledger import _pgconn

    spy = Spy(monkeypatch)
    monkeypatch.setattr(_pgconn, "_EXECUTE", None)
    conn = psycopg.connect(dsn, autocommit=True)
    with PostgresLedger(conn, run_id, "n") as ledger:
        assert [ledger.append(1, "s", EV).seq for _ in range(5)] == list(range(1, 6))
        assert spy.results == [None] * 4  # declined: a cursor ran each guess
        assert ledger._next == 6
    assert APPEND_NEXT_NAME.decode() not in _prepared(conn)
    conn.close()


def test_a_connection_killed_before_the_guess_commits_nothing(
    dsn: str, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    armed = True

    def kill(ledger: PostgresLedger, conn: Any) -> None:
        nonlocal armed
        if armed:
            armed = False
            with psycopg.connect(dsn, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))

    ledger = PostgresLedger(dsn, run_id, "n")
    ledger.append(1, "s", EV)
    spy = Spy(monkeypatch, before=kill)
    with pytest.raises(LedgerConnectionError) as info:
        ledger.append(1, "s", EV)
    assert info.value.committed is None  # sent or not, nobody can tell
    assert "may or may not be committed" in str(info.value)
    assert ledger.last_seq() == 1  # reconnected; nothing of it is there
    assert ledger.append(1, "s", EV).seq == 2
    assert spy.results == [1]  # the new connection prepared it again
    assert [r.seq for r in ledger.records()] == [1, 2]
    ledger.close()


def test_a_guess_that_times_out_on_a_locked_ledger_was_not_committed(dsn: str, run_id: str) -> None:
    slow = PostgresLedger(f"{dsn} options='-c statement_timeout=200'", run_id, "n")
    slow.append(1, "s", EV)
    holder = psycopg.connect(dsn)
    holder.execute("SELECT 1 FROM attempt_ledger_heads WHERE key = %s FOR UPDATE", (slow._key,))
    try:
        with pytest.raises(LedgerConnectionError) as info:
            slow.append(1, "s", EV)  # guessed: waits for the row's lock
        assert info.value.committed is False
        assert "statement timeout" in str(info.value)
    finally:
        holder.rollback()
        holder.close()
    assert slow.append(1, "s", EV).seq == 2
    slow.close()


def test_a_database_refusing_the_guess_is_a_database_error_naming_the_ledger(
    dsn: str, run_id: str
) -> None:
    from attempt_ledger.postgres import LedgerDatabaseError

    with PostgresLedger(dsn, run_id, "n") as ledger:
        ledger.append(1, "s", EV)
        conn = ledger._connection()
        conn.execute("SET default_transaction_read_only = on")
        with pytest.raises(LedgerDatabaseError) as info:
            ledger.append(1, "s", EV)
        assert info.value.committed is False
        assert "read-only transaction" in str(info.value)
        assert str(ledger.path) in str(info.value)
        conn.execute("SET default_transaction_read_only = off")
        assert ledger.append(1, "s", EV).seq == 2


@pytest.mark.asyncio
async def test_the_async_ledger_guesses_too(dsn: str, run_id: str) -> None:
    async with AsyncPostgresLedger(dsn, run_id, "n") as ledger:
        assert [(await ledger.append(1, "s", EV)).seq for _ in range(4)] == [1, 2, 3, 4]
        assert ledger._core._next == 5
        other = PostgresLedger(dsn, run_id, "n")
        other.append(1, "o", EV)
        assert (await ledger.append(1, "s", EV)).seq == 6  # stale: the server numbers it
        with pytest.raises(SeqConflict):
            await ledger.append(1, "s", EV, expected_last_seq=5)
        assert [r.seq for r in await ledger.records()] == list(range(1, 7))
        other.close()


def test_threads_sharing_a_ledger_and_its_connection_get_exact_seqs(dsn: str, run_id: str) -> None:
    # Guesses (prepared, through libpq) and server-numbered batches (on cursors) from several
    # threads on one connection: psycopg's lock keeps each statement whole.
    ledger = PostgresLedger(dsn, run_id, "n")
    ledger.append(1, "s", EV)
    got: list[tuple[int, int]] = []
    barrier = threading.Barrier(4)

    def appender(size: int) -> None:
        barrier.wait(timeout=30)
        got.extend((ledger.append(1, "s", EV * size).seq, size) for _ in range(30))

    threads = [threading.Thread(target=appender, args=(size,)) for size in (1, 1, 1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    taken = sorted(seq for last, size in got for seq in range(last - size + 1, last + 1))
    assert taken == list(range(2, 2 + 30 * 5))
    assert [r.seq for r in ledger.records()] == list(range(1, 2 + 30 * 5))
    ledger.close()


def test_a_closed_connection_refuses_the_guess_as_not_committed(dsn: str, run_id: str) -> None:
    # The guess used to count as sent on a closed connection: "may or may not be committed".
    conn = psycopg.connect(dsn, autocommit=True)
    ledger = PostgresLedger(conn, run_id, "n")
    assert ledger.append(1, "s", EV).seq == 1  # the next one is guessed
    conn.close()
    for expected in (None, 1):
        with pytest.raises(LedgerConnectionError, match="closed") as info:
            ledger.append(1, "s", EV, expected_last_seq=expected)
        assert info.value.committed is False
        assert "was not committed" in str(info.value)
    with PostgresLedger(dsn, run_id, "n") as other:
        assert other.last_seq() == 1


@pytest.mark.asyncio
async def test_the_async_ledger_on_a_closed_connection_commits_nothing(
    dsn: str, run_id: str
) -> None:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    ledger = AsyncPostgresLedger(conn, run_id, "n")
    assert (await ledger.append(1, "s", EV)).seq == 1
    await conn.close()
    for expected in (None, 1):
        with pytest.raises(LedgerConnectionError, match="closed") as info:
            await ledger.append(1, "s", EV, expected_last_seq=expected)
        assert info.value.committed is False


@pytest.mark.parametrize("autocommit", [True, False])
def test_a_connection_in_pipeline_mode_writes_each_append_once(
    dsn: str, run_id: str, autocommit: bool
) -> None:
    # The guess's row count is not known in pipeline mode before a sync: it read as refused,
    # and the server-numbered fallback wrote the line a second time (or raised SeqConflict).
    with psycopg.connect(dsn, autocommit=autocommit) as conn:
        ledger = PostgresLedger(conn, run_id, "n")
        assert ledger.append(1, "s", EV).seq == 1  # the next one would be guessed
        with conn.pipeline():
            assert ledger.append(1, "s", EV).seq == 2
            assert ledger.append(1, "s", EV, expected_last_seq=2).seq == 3
        assert ledger.append(1, "s", EV).seq == 4  # and guessed again out of it
        assert [r.seq for r in ledger.records()] == [1, 2, 3, 4]


@pytest.mark.asyncio
async def test_the_async_ledger_in_pipeline_mode_writes_each_append_once(
    dsn: str, run_id: str
) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        ledger = AsyncPostgresLedger(conn, run_id, "n")
        assert (await ledger.append(1, "s", EV)).seq == 1
        async with conn.pipeline():
            assert (await ledger.append(1, "s", EV)).seq == 2
            assert (await ledger.append(1, "s", EV, expected_last_seq=2)).seq == 3
        assert [r.seq for r in await ledger.records()] == [1, 2, 3]
