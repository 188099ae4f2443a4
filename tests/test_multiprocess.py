"""Exactness under real concurrency: processes (fork and spawn), threads, and fork children."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import pytest

from attempt_ledger import AttemptLedger, LockTimeout, ReceiptEvent, receipts_path
from attempt_ledger._lines import line_seq

from . import _workers

JOIN = 60


@pytest.fixture(params=["fork", "spawn"])
def ctx(request: pytest.FixtureRequest) -> BaseContext:
    return multiprocessing.get_context(request.param)


@pytest.fixture
def children() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for process in started:  # never leave a child behind, whatever the test did
        if process.is_alive():
            process.kill()
        process.join(timeout=JOIN)


def check_exact(path: Path, acknowledged: dict[int, list[int]]) -> int:
    """Every line valid, seqs 1..N once each, each worker's acknowledged seqs its own."""
    data = path.read_bytes()
    assert data.endswith(b"\n")
    lines = data.splitlines()
    seqs = [line_seq(line) for line in lines]
    assert None not in seqs
    assert seqs == list(range(1, len(lines) + 1))
    claimed = sorted(seq for worker_seqs in acknowledged.values() for seq in worker_seqs)
    assert claimed == seqs
    from attempt_ledger import read_receipt_records

    owner = {r.seq: r.session_id for r in read_receipt_records(path)}
    for worker, worker_seqs in acknowledged.items():
        assert {owner[seq] for seq in worker_seqs} <= {f"w{worker}"}
    return len(lines)


def run_workers(
    ctx: BaseContext,
    children: list[Any],
    root: Path,
    workers: int,
    rounds: int,
    ledger: AttemptLedger | None = None,
) -> dict[int, list[int]]:
    start = ctx.Event()
    results = ctx.Queue()
    for worker in range(workers):
        process = ctx.Process(  # type: ignore[attr-defined]
            target=_workers.append_many, args=(root, worker, rounds, start, results, ledger)
        )
        process.start()
        children.append(process)
    start.set()
    acknowledged = dict(results.get(timeout=JOIN) for _ in range(workers))
    for process in children:
        process.join(timeout=JOIN)
        assert process.exitcode == 0
    return acknowledged


def test_processes_append_exactly_once(ctx: BaseContext, children: list[Any], root: Path) -> None:
    acknowledged = run_workers(ctx, children, root, workers=4, rounds=150)
    assert check_exact(receipts_path(root, "run", "node"), acknowledged) == sum(
        len(v) for v in acknowledged.values()
    )


def test_ledger_object_shared_across_fork(children: list[Any], root: Path) -> None:
    # The parent's descriptors are open before the fork: the children must not share its lock.
    ctx = multiprocessing.get_context("fork")
    ledger = AttemptLedger(root, "run", "node")
    ledger.append(0, "w99", [ReceiptEvent("parent")])
    start = ctx.Event()
    results = ctx.Queue()
    for worker in range(4):
        process = ctx.Process(  # type: ignore[attr-defined]
            target=_workers.append_many, args=(root, worker, 150, start, results, ledger)
        )
        process.start()
        children.append(process)
    start.set()
    mine = []
    for i in range(150):  # the parent keeps appending through the same object meanwhile
        mine.append(ledger.append(0, "w99", [ReceiptEvent("parent", i)]).seq)
    acknowledged = dict(results.get(timeout=JOIN) for _ in range(4))
    for process in children:
        process.join(timeout=JOIN)
        assert process.exitcode == 0
    acknowledged[99] = [1, *mine]
    check_exact(ledger.path, acknowledged)


def test_threads_sharing_one_ledger(root: Path) -> None:
    ledger = AttemptLedger(root, "run", "node")
    barrier = threading.Barrier(8)
    acknowledged: dict[int, list[int]] = {}

    def worker(n: int) -> None:
        barrier.wait(timeout=JOIN)
        seqs = acknowledged.setdefault(n, [])
        for i in range(100):
            size = 1 + i % 2
            summary = ledger.append(n, f"w{n}", [ReceiptEvent("t", i)] * size)
            seqs.extend(range(summary.seq - size + 1, summary.seq + 1))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=JOIN)
        assert not thread.is_alive()
    check_exact(ledger.path, acknowledged)


def test_threads_with_their_own_ledger_objects(root: Path) -> None:
    barrier = threading.Barrier(6)
    acknowledged: dict[int, list[int]] = {}

    def worker(n: int) -> None:
        ledger = AttemptLedger(root, "run", "node")
        barrier.wait(timeout=JOIN)
        acknowledged[n] = [ledger.append(n, f"w{n}", [ReceiptEvent("t")]).seq for _ in range(100)]
        ledger.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=JOIN)
        assert not thread.is_alive()
    check_exact(receipts_path(root, "run", "node"), acknowledged)


def test_reconcile_sees_an_append_from_another_process(
    ctx: BaseContext, children: list[Any], root: Path
) -> None:
    path = receipts_path(root, "run", "node")
    started = ctx.Event()
    results = ctx.Queue()
    process = ctx.Process(target=_workers.reconcile_after, args=(path, 3, started, results))  # type: ignore[attr-defined]
    process.start()
    children.append(process)
    assert started.wait(timeout=JOIN)
    AttemptLedger(root, "run", "node").append(1, "s", [ReceiptEvent("e")] * 3)
    assert results.get(timeout=JOIN) == (True, 3)
    process.join(timeout=JOIN)
    assert process.exitcode == 0


def test_filelock_in_another_process_excludes_appends(
    ctx: BaseContext, children: list[Any], root: Path
) -> None:
    ledger = AttemptLedger(root, "run", "node", lock_timeout=0)
    ledger.append(1, "s", [ReceiptEvent("e")])
    held, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_workers.hold_filelock, args=(ledger.lock_path, held, release))  # type: ignore[attr-defined]
    holder.start()
    children.append(holder)
    assert held.wait(timeout=JOIN)
    with pytest.raises(LockTimeout):
        ledger.append(1, "s", [ReceiptEvent("e")])
    # A blocking appender in another process waits in the kernel and goes on at the release.
    done = ctx.Queue()
    waiter = ctx.Process(target=_workers.append_one, args=(root, done))  # type: ignore[attr-defined]
    waiter.start()
    children.append(waiter)
    release.set()
    assert done.get(timeout=JOIN) == 2
    for process in (holder, waiter):
        process.join(timeout=JOIN)
        assert process.exitcode == 0
    assert os.path.getsize(ledger.path) > 0


def test_processes_keep_one_hash_chain(ctx: BaseContext, children: list[Any], root: Path) -> None:
    from attempt_ledger import verify_receipt_ledger

    ledger = AttemptLedger(root, "run", "node", hash_chain=True)
    acknowledged = run_workers(ctx, children, root, workers=4, rounds=60, ledger=ledger)
    total = check_exact(ledger.path, acknowledged)
    result = verify_receipt_ledger(ledger.path)
    assert result.valid, result.problems
    assert result.record_count == result.hashed_record_count == total
