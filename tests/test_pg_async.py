"""AsyncPostgresLedger beyond the contract: pools and borrowed connections, LISTEN wake-ups,
errors. Runs under scripts/with-postgres (skipped without a server, and says so)."""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid
from typing import Any

import pytest

from attempt_ledger import ReceiptEvent, SeqConflict

EV = [ReceiptEvent("e")]

pytestmark = pytest.mark.asyncio


async def test_with_a_pool_and_a_borrowed_connection(pg_dsn: str) -> None:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

    from attempt_ledger.postgres import AsyncPostgresLedger, PostgresLedger

    run = uuid.uuid4().hex
    async with AsyncConnectionPool(pg_dsn, min_size=1, max_size=4, open=False) as pool:
        ledger = AsyncPostgresLedger(pool, run, "n")
        seqs = await asyncio.gather(*(ledger.append(1, f"s{i}", EV) for i in range(20)))
        assert sorted(s.seq for s in seqs) == list(range(1, 21))
        await ledger.aclose()  # the pool's connections are the pool's
        assert await ledger.last_seq() == 20
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:  # not autocommit
        async with AsyncPostgresLedger(conn, run, "n") as borrowed:
            assert (await borrowed.append(1, "s", EV, expected_last_seq=20)).seq == 21
            with pytest.raises(SeqConflict):
                await borrowed.append(1, "s", EV, expected_last_seq=20)
        assert not conn.closed  # borrowed: left open
    with PostgresLedger(pg_dsn, run, "n") as sync:
        assert [r.seq for r in sync.records()] == list(range(1, 22))


async def test_a_connection_in_a_transaction_is_refused(pg_dsn: str) -> None:
    import psycopg

    from attempt_ledger.postgres import AsyncPostgresLedger, LedgerDatabaseError

    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        await conn.execute("SELECT 1")  # opens a transaction block
        ledger = AsyncPostgresLedger(conn, uuid.uuid4().hex, "n")
        with pytest.raises(LedgerDatabaseError, match="in a transaction") as info:
            await ledger.append(1, "s", EV)
        assert info.value.committed is False


async def test_bad_arguments(pg_dsn: str) -> None:
    import psycopg

    from attempt_ledger.postgres import AsyncPostgresLedger

    with pytest.raises(TypeError, match="conninfo"):
        AsyncPostgresLedger(5, "r", "n")
    with psycopg.connect(pg_dsn) as sync_conn, pytest.raises(TypeError, match="conninfo"):
        AsyncPostgresLedger(sync_conn, "r", "n")
    with pytest.raises(TypeError, match="node_id"):
        AsyncPostgresLedger(pg_dsn, "r", None)  # type: ignore[arg-type]
    ledger = AsyncPostgresLedger(pg_dsn, uuid.uuid4().hex, "n")
    for bad in ("1", 1.5, None, True):
        with pytest.raises(TypeError, match="since_seq"):
            ledger.iter_records(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="since_seq"):
            ledger.follow(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected_min_seq"):
        await ledger.reconcile("1", 10)  # type: ignore[arg-type]
    await ledger.aclose()


async def test_a_server_that_cannot_be_reached(pg_dsn: str) -> None:
    from attempt_ledger.postgres import AsyncPostgresLedger, LedgerConnectionError

    ledger = AsyncPostgresLedger("host=/nonexistent-dir dbname=x connect_timeout=5", "r", "n")
    with pytest.raises(LedgerConnectionError) as info:
        await ledger.append(1, "s", EV)
    assert info.value.committed is False


def _append_when(dsn: str, run: str, go: Any) -> None:
    from attempt_ledger.postgres import PostgresLedger

    assert go.wait(60)
    with PostgresLedger(dsn, run, "other") as other:
        other.append(1, "s", EV)  # another ledger's commit: not a wake-up for ours
    with PostgresLedger(dsn, run, "n") as ledger:
        ledger.append(1, "s", EV)


@pytest.mark.parametrize("method", ["fork", "spawn"])
async def test_reconcile_and_follow_wake_on_notify(pg_dsn: str, method: str) -> None:
    from attempt_ledger.postgres import AsyncPostgresLedger

    run = uuid.uuid4().hex
    ctx = multiprocessing.get_context(method)
    go = ctx.Event()
    child = ctx.Process(target=_append_when, args=(pg_dsn, run, go))
    child.start()
    try:
        ledger = AsyncPostgresLedger(pg_dsn, run, "n")
        real = ledger.last_seq
        reads = 0

        async def last_seq() -> int:
            nonlocal reads
            seq = await real()
            reads += 1
            if reads == 1:
                go.set()  # listening and read once: now the other process commits
            return seq

        ledger.last_seq = last_seq  # type: ignore[method-assign]
        # An hour-long poll: only the notification can end the wait in time.
        summary = await asyncio.wait_for(ledger.reconcile(1, 60_000, 3_600_000), 60)
        assert (summary.found, summary.attempts) == (True, 2)
        follower = ledger.follow(0, poll_interval=3600, timeout=60)
        assert (await follower.__anext__()).seq == 1
        await follower.aclose()
        await ledger.aclose()
    finally:
        go.set()
        await asyncio.to_thread(child.join, 60)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0


async def test_a_hash_chained_async_ledger_matches_the_blocking_one(pg_dsn: str) -> None:
    from attempt_ledger.postgres import AsyncPostgresLedger, PostgresLedger

    run_id = uuid.uuid4().hex
    async with AsyncPostgresLedger(pg_dsn, run_id, "n", hash_chain=True) as ledger:
        await ledger.append(1, "s", EV * 3)
    async with AsyncPostgresLedger(pg_dsn, run_id, "n") as ledger:
        assert (await ledger.append(1, "s", EV)).seq == 4  # continues the chain
    with PostgresLedger(pg_dsn, run_id, "n") as blocking:
        result = blocking.verify()
    assert (result.valid, result.hashed_record_count) == (True, 4)
