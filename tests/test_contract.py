"""One contract, two backends: the file ledger and the PostgreSQL ledger behave alike, and so
do their asyncio twins (driven through :class:`SyncOverAsync`).

The PostgreSQL half runs when ``$ATTEMPT_LEDGER_PG_DSN`` names a server, as under
``scripts/with-postgres`` (which ``.ci/run`` uses); otherwise it is skipped, and says so.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attempt_ledger import (
    AttemptLedger,
    InvalidEvent,
    ReceiptEvent,
    SeqConflict,
    SeqExhausted,
    encode_record,
)
from attempt_ledger.aio import AsyncAttemptLedger

EV = [ReceiptEvent("e", {"k": [1, "é"]})]


Factory = Callable[[str, str], Any]


class SyncOverAsync:
    """An async ledger behind the blocking API, each call run to completion on the adapter's
    own event loop: so that every contract test runs on the async classes too."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.path = inner, inner.path
        self._loop = asyncio.new_event_loop()

    def _run(self, awaitable: Any) -> Any:
        return self._loop.run_until_complete(awaitable)

    def append(self, *args: Any, **kwargs: Any) -> Any:
        return self._run(self.inner.append(*args, **kwargs))

    def last_seq(self) -> int:
        return int(self._run(self.inner.last_seq()))

    def records(self) -> Any:
        return self._run(self.inner.records())

    def iter_records(self, since_seq: int = 0) -> Iterator[Any]:
        async def collect() -> list[Any]:
            return [record async for record in self.inner.iter_records(since_seq)]

        return iter(self._run(collect()))

    def reconcile(self, *args: Any) -> Any:
        return self._run(self.inner.reconcile(*args))

    def follow(
        self,
        since_seq: int = 0,
        *,
        poll_interval: float = 0.05,
        stop: threading.Event | None = None,
        timeout: float | None = None,
    ) -> Iterator[Any]:
        async_stop = asyncio.Event()
        records = self.inner.follow(
            since_seq, poll_interval=poll_interval, stop=async_stop, timeout=timeout
        )
        try:
            while True:
                if stop is not None and stop.is_set():
                    async_stop.set()
                try:
                    yield self._run(records.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(records.aclose())

    def close(self) -> None:
        if not self._loop.is_closed():
            self._run(self.inner.aclose())
            self._loop.close()


def _is_file(ledger: Any) -> bool:
    return isinstance(getattr(ledger, "inner", ledger), (AttemptLedger, AsyncAttemptLedger))


@pytest.fixture(params=["file", "postgres", "file-async", "postgres-async"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    opened: list[Any] = []
    prefix = uuid.uuid4().hex  # a fresh namespace of runs in the shared database

    def factory(run_id: str, node_id: str, *, raw: bool = False) -> Any:
        # raw: the ids exactly as given (the database's other ledgers may share them).
        if request.param == "file":
            ledger: Any = AttemptLedger(tmp_path, run_id, node_id)
        elif request.param == "file-async":
            ledger = SyncOverAsync(AsyncAttemptLedger(tmp_path, run_id, node_id))
        else:
            from attempt_ledger.postgres import AsyncPostgresLedger, PostgresLedger

            run = run_id if raw else f"{prefix}{run_id}"
            dsn = request.getfixturevalue("pg_dsn")
            if request.param == "postgres":
                ledger = PostgresLedger(dsn, run, node_id)
            else:
                ledger = SyncOverAsync(AsyncPostgresLedger(dsn, run, node_id))
        opened.append(ledger)
        return ledger

    yield factory
    for ledger in opened:
        ledger.close()


def test_append_read_and_last_seq(make: Factory) -> None:
    ledger = make("run/1", "node:a")
    assert (ledger.last_seq(), ledger.records()) == (0, [])
    first = ledger.append(1, "s", EV * 2)
    assert (first.seq, first.record_count) == (2, 2)
    assert ledger.append(2, "t", [ReceiptEvent(" x ")]).seq == 3
    records = ledger.records()
    assert [(r.seq, r.attempt, r.session_id, r.event_type) for r in records] == [
        (1, 1, "s", "e"),
        (2, 1, "s", "e"),
        (3, 2, "t", "x"),
    ]
    assert [r.seq for r in ledger.iter_records(since_seq=1)] == [2, 3]
    assert ledger.last_seq() == 3


def test_records_encode_to_the_same_bytes_on_both_backends(make: Factory) -> None:
    ledger = make("r", "n")
    ledger.append(1, "s", EV)
    (record,) = ledger.records()
    assert encode_record(record).startswith(b'{"version":1,"run_id":')
    assert b'"payload":{"k":[1,"\xc3\xa9"]}}\n' in encode_record(record)


def test_empty_batch_and_expected_last_seq(make: Factory) -> None:
    ledger = make("r", "n")
    assert (ledger.append(1, "s", []).seq, ledger.last_seq()) == (0, 0)
    assert ledger.append(1, "s", EV, expected_last_seq=0).seq == 1
    with pytest.raises(SeqConflict) as info:
        ledger.append(1, "s", EV, expected_last_seq=0)
    assert (info.value.expected, info.value.actual) == (0, 1)
    assert ledger.last_seq() == 1


@pytest.mark.parametrize(
    "args",
    [
        {"attempt": True},
        {"attempt": 2**32},
        {"session_id": 5},
        {"events": [*EV, ReceiptEvent("e", float("nan"))]},
        {"events": [ReceiptEvent("e", {1: 2})]},
    ],
)
def test_bad_input_writes_nothing(make: Factory, args: dict[str, Any]) -> None:
    ledger = make("r", "n")
    ledger.append(1, "s", EV)
    with pytest.raises(InvalidEvent):
        ledger.append(**{"attempt": 1, "session_id": "s", "events": EV, **args})
    assert [r.seq for r in ledger.records()] == [1]


@pytest.mark.parametrize(
    "expected",
    ["1", b"1", 1.0, True, False, float("nan"), float("inf"), -1, 2**64, [1]],
    ids=repr,
)
@pytest.mark.parametrize("events", [EV, []], ids=["batch", "empty"])
def test_bad_expected_last_seq_is_refused(
    make: Factory, expected: object, events: list[ReceiptEvent]
) -> None:
    ledger = make("r", "n")
    ledger.append(1, "s", EV)
    with pytest.raises(InvalidEvent, match="expected_last_seq"):
        ledger.append(1, "s", events, expected_last_seq=expected)
    assert [r.seq for r in ledger.records()] == [1]
    assert ledger.append(1, "s", EV, expected_last_seq=1).seq == 2  # a plain int still works


# Any str at all: NUL, lone surrogates (which no backend can encode), the odd and the empty.
any_ids = st.one_of(
    st.text(max_size=30), st.sampled_from(["", "\x00", "a\x00b", "\ud800", "\x00" * 40])
)


@given(run_id=any_ids, node_id=any_ids)
def test_any_ids_work_alike(make: Factory, run_id: str, node_id: str) -> None:
    # The ids may repeat across examples and backends share a database: compare with before.
    ledger = make(run_id, node_id, raw=True)
    try:
        before = ledger.last_seq()
        assert [r.seq for r in ledger.records()][-1:] == ([before] if before else [])
        if not (_encodable(run_id) and _encodable(node_id)):
            with pytest.raises(InvalidEvent, match="UTF-8"):
                ledger.append(1, "s", EV)
            assert ledger.last_seq() == before
            return
        assert ledger.append(1, "s", EV * 2).seq == before + 2
        assert ledger.last_seq() == before + 2
        *_, last = ledger.iter_records(since_seq=before)
        assert (last.run_id, last.node_id, last.seq) == (run_id, node_id, before + 2)
    finally:
        ledger.close()


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _incompressible(length: int, seed: int) -> str:
    # Non-ASCII letters only: the file ledger sanitises them away, so its file name stays short.
    rng = random.Random(seed)
    return "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(length))


@pytest.mark.parametrize(
    ("run_id", "node_id"),
    [
        ("a\x00b", "\x00"),
        ("é" * 9000, "n"),
        (_incompressible(9000, 1), _incompressible(9000, 2)),
    ],
    ids=["nul", "long", "long-random"],
)
def test_nul_and_long_ids(make: Factory, run_id: str, node_id: str) -> None:
    prefix = uuid.uuid4().hex
    ledger = make(prefix + run_id, node_id, raw=True)
    assert (ledger.last_seq(), ledger.records()) == (0, [])
    assert ledger.append(1, "s", EV).seq == 1
    assert ledger.append(2, "t", EV * 2, expected_last_seq=1).seq == 3
    assert ledger.reconcile(3, 0).found
    assert [(r.run_id, r.node_id, r.seq) for r in ledger.records()] == [
        (prefix + run_id, node_id, seq) for seq in (1, 2, 3)
    ]


def test_seq_exhausted(make: Factory, request: pytest.FixtureRequest) -> None:
    ledger = make("r", "n")
    ledger.append(1, "s", EV)
    if _is_file(ledger):
        with ledger.path.open("ab") as f:
            f.write(b'{"seq":18446744073709551614}\n')
    else:
        import psycopg

        inner = getattr(ledger, "inner", None)
        key = ledger._key if inner is None else inner._core._key
        with psycopg.connect(request.getfixturevalue("pg_dsn"), autocommit=True) as conn:
            conn.execute(
                "UPDATE attempt_ledger_heads SET last_seq = %s WHERE key = %s", (2**64 - 2, key)
            )
    with pytest.raises(SeqExhausted):
        ledger.append(1, "s", EV * 2)
    assert ledger.append(1, "s", EV).seq == 2**64 - 1


def test_ids_are_raw_on_postgres(pg_dsn: str) -> None:
    from attempt_ledger.postgres import PostgresLedger

    prefix = uuid.uuid4().hex
    with (
        PostgresLedger(pg_dsn, f"{prefix}a/b", "n") as one,
        PostgresLedger(pg_dsn, f"{prefix}a:b", "n") as other,
    ):
        one.append(1, "s", EV)
        assert other.last_seq() == 0  # sanitised alike on disk, distinct here


def _append_many(dsn: str, run_id: str, worker: int, count: int, out: Any) -> None:
    # Several connections per process: three threads, each with its own ledger object.
    import threading

    from attempt_ledger.postgres import PostgresLedger

    seqs: list[int] = []

    def thread() -> None:
        with PostgresLedger(dsn, run_id, "n") as ledger:
            seqs.extend(ledger.append(worker, f"w{worker}", EV).seq for _ in range(count // 3))

    threads = [threading.Thread(target=thread) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    out.put(seqs)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_processes_get_exact_seqs_on_postgres(pg_dsn: str, method: str) -> None:
    from attempt_ledger.postgres import PostgresLedger

    ctx = multiprocessing.get_context(method)
    run_id, out = uuid.uuid4().hex, ctx.Queue()
    children = [
        ctx.Process(target=_append_many, args=(pg_dsn, run_id, w, 99, out)) for w in range(4)
    ]
    for child in children:
        child.start()
    try:
        acknowledged = sorted(seq for _ in children for seq in out.get(timeout=60))
    finally:
        for child in children:
            child.join(timeout=60)
            if child.is_alive():
                child.kill()
    assert acknowledged == list(range(1, 397))
    with PostgresLedger(pg_dsn, run_id, "n") as ledger:
        assert [r.seq for r in ledger.records()] == acknowledged


def _append_after(dsn: str, run_id: str, started: Any, others: int = 0) -> None:
    from attempt_ledger.postgres import PostgresLedger

    assert started.wait(timeout=60)
    for node in range(others):  # other ledgers' commits, notified first
        with PostgresLedger(dsn, run_id, f"other{node}") as other:
            other.append(1, "s", EV)
    with PostgresLedger(dsn, run_id, "n") as ledger:
        ledger.append(1, "s", EV)


@pytest.mark.parametrize("others", [0, 3])
def test_reconcile_wakes_on_notify(pg_dsn: str, others: int) -> None:
    from attempt_ledger.postgres import PostgresLedger

    run_id = uuid.uuid4().hex
    ctx = multiprocessing.get_context("fork")
    started = ctx.Event()
    child = ctx.Process(target=_append_after, args=(pg_dsn, run_id, started, others))
    child.start()
    clock_calls: list[float] = []

    def clock() -> float:
        import time

        if len(clock_calls) == 1:
            started.set()  # the first read is done: let the other process append
        clock_calls.append(time.monotonic())
        return clock_calls[-1]

    try:
        with PostgresLedger(pg_dsn, run_id, "n") as ledger:
            # An hour-long poll interval: only the notification can end the wait in time.
            summary = ledger.reconcile(1, 60_000, 3_600_000, clock=clock)
    finally:
        child.join(timeout=60)
    assert summary.found
    assert summary.attempts == 2  # other ledgers' commits did not wake it for another read


def test_follow_sees_new_records(make: Factory) -> None:
    ledger = make("r", "n")
    ledger.append(1, "s", EV * 3)
    # On PostgreSQL an hour-long poll: only the commit's notification can wake it in time.
    poll = 0.01 if _is_file(ledger) else 3600.0
    stop, seen, writers = threading.Event(), [], []
    for record in ledger.follow(since_seq=1, poll_interval=poll, stop=stop, timeout=60):
        seen.append(record.seq)
        if record.seq == 3:
            writer = threading.Thread(target=lambda: make("r", "n").append(1, "s", EV))
            writer.start()
            writers.append(writer)
        if record.seq == 4:
            stop.set()
    for writer in writers:
        writer.join(timeout=60)
    assert seen == [2, 3, 4]
