"""AsyncAttemptLedger: the loop never blocks on the lock, a cancelled wait leaves nothing behind,
and several processes of coroutines get exact seqs. (The contract tests run on it too.)"""

from __future__ import annotations

import asyncio
import fcntl
import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

import pytest

import attempt_ledger.aio as aio
from attempt_ledger import (
    AttemptLedger,
    InvalidEvent,
    LockTimeout,
    ReceiptEvent,
    SeqConflict,
    read_receipt_records,
)
from attempt_ledger.aio import AsyncAttemptLedger

from ._workers import hold_filelock

EV = [ReceiptEvent("e", {"k": 1})]


def _no_threads(loop: asyncio.AbstractEventLoop) -> None:
    def refuse(*args: object) -> Any:
        raise AssertionError("the append left the loop's thread")

    loop.run_in_executor = refuse  # type: ignore[method-assign]


@pytest.mark.asyncio
async def test_an_uncontended_append_completes_inline(root: Path) -> None:
    _no_threads(asyncio.get_running_loop())
    async with AsyncAttemptLedger(root, "run", "node") as ledger:
        assert (await ledger.append(1, "s", EV * 2)).seq == 2
        assert (await ledger.append(2, "t", EV, expected_last_seq=2)).seq == 3
        with pytest.raises(SeqConflict):
            await ledger.append(2, "t", EV, expected_last_seq=2)
        assert await ledger.last_seq() == 3
        assert [r.seq for r in await ledger.records()] == [1, 2, 3]
        assert [r.seq async for r in ledger.iter_records(1)] == [2, 3]
    assert AttemptLedger(root, "run", "node").last_seq() == 3


@pytest.mark.asyncio
async def test_bad_arguments_are_refused_before_any_io(root: Path) -> None:
    with pytest.raises(TypeError, match="run_id"):
        AsyncAttemptLedger(root, 5, "n")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lock_timeout"):
        AsyncAttemptLedger(root, "r", "n", lock_timeout=-1)
    ledger = AsyncAttemptLedger(root, "r", "\ud800")
    with pytest.raises(InvalidEvent, match="UTF-8"):
        await ledger.append(1, "s", EV)
    ledger = AsyncAttemptLedger(root, "r", "n")
    for bad in ({"attempt": True}, {"session_id": 5}, {"expected_last_seq": "1"}):
        with pytest.raises(InvalidEvent):
            await ledger.append(**{"attempt": 1, "session_id": "s", "events": EV, **bad})
    assert not root.exists()  # nothing created either


def _hold_flock(lock_path: Path, held: Any, release: Any) -> None:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    held.set()
    release.wait(timeout=60)
    os.close(fd)


def _lock_is_free(lock_path: Path) -> bool:
    fd = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("how", ["cancel", "timeout", "lock_timeout"])
def test_a_wait_for_a_lock_held_by_another_process_leaves_nothing_behind(
    root: Path, monkeypatch: pytest.MonkeyPatch, method: str, how: str
) -> None:
    ctx = multiprocessing.get_context(method)
    lock_timeout = 0.05 if how == "lock_timeout" else None
    ledger = AsyncAttemptLedger(root, "run", "node", lock_timeout=lock_timeout)
    held, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_flock, args=(ledger.ledger.lock_path, held, release))
    child.start()
    threads = set(threading.enumerate())
    tried = asyncio.Event()
    real = AttemptLedger._try_append

    def try_append(self: AttemptLedger, *args: Any) -> Any:
        summary = real(self, *args)
        tried.set()  # it found the lock held (the child holds it until released)
        return summary

    monkeypatch.setattr(AttemptLedger, "_try_append", try_append)
    try:
        assert held.wait(60)

        async def main() -> None:
            if how == "lock_timeout":
                with pytest.raises(LockTimeout):
                    await ledger.append(1, "s", EV)
                return
            task = asyncio.create_task(ledger.append(1, "s", EV))
            await tried.wait()
            if how == "cancel":
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(task, 0)

        asyncio.run(main())
        assert set(threading.enumerate()) <= threads  # no thread waits on the lock
    finally:
        release.set()
        child.join(60)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    assert _lock_is_free(ledger.ledger.lock_path)
    assert not ledger.path.exists() or ledger.path.read_bytes() == b""
    assert AttemptLedger(root, "run", "node").append(1, "s", EV).seq == 1


def test_a_contended_append_goes_through_once_the_lock_is_free(root: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ledger = AsyncAttemptLedger(root, "run", "node")
    held, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=hold_filelock, args=(ledger.ledger.lock_path, held, release))
    ledger.path.parent.mkdir(parents=True)
    child.start()
    try:
        assert held.wait(60)

        async def main() -> int:
            task = asyncio.create_task(ledger.append(1, "s", EV))
            await asyncio.sleep(0)
            assert not task.done()
            release.set()  # the coroutine's next try finds the lock free
            return (await asyncio.wait_for(task, 60)).seq

        assert asyncio.run(main()) == 1
    finally:
        release.set()
        child.join(60)
        if child.is_alive():
            child.kill()


@pytest.mark.asyncio
async def test_a_durable_append_fsyncs_off_the_loop(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    fsynced_in: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        fsynced_in.append(threading.get_ident())
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    async with AsyncAttemptLedger(root, "run", "node", durable=True) as ledger:
        assert (await ledger.append(1, "s", EV)).seq == 1
        assert (await ledger.append(1, "s", EV * 2)).seq == 3
    assert fsynced_in
    assert loop_thread not in fsynced_in
    assert _lock_is_free(ledger.ledger.lock_path)


@pytest.mark.asyncio
async def test_a_durable_append_cancelled_mid_write_is_written_whole(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cancelled once the lock is taken: the thread finishes the batch and releases the lock.
    started, finish = threading.Event(), threading.Event()
    real = os.fsync

    def slow_fsync(fd: int) -> None:
        started.set()
        assert finish.wait(60)
        real(fd)

    ledger = AsyncAttemptLedger(root, "run", "node", durable=True)
    await ledger.append(1, "s", EV)  # the directories exist: the next append fsyncs once
    monkeypatch.setattr(os, "fsync", slow_fsync)
    task = asyncio.create_task(ledger.append(1, "s", EV * 3))
    assert await asyncio.to_thread(started.wait, 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    finish.set()
    later = await ledger.append(1, "s", EV)  # waits (on the loop) for the thread's release
    assert later.seq == 5
    assert [r.seq for r in await ledger.records()] == [1, 2, 3, 4, 5]
    await ledger.aclose()


def _coroutines_append(root: Path, worker: int, coroutines: int, rounds: int, out: Any) -> None:
    async def main() -> list[int]:
        ledger = AsyncAttemptLedger(root, "run", "node")

        async def one(c: int) -> list[int]:
            seqs = []
            for i in range(rounds):
                size = 1 + (c + i) % 2
                summary = await ledger.append(worker, f"w{worker}c{c}", EV * size)
                seqs.extend(range(summary.seq - size + 1, summary.seq + 1))
            return seqs

        results = await asyncio.gather(*(one(c) for c in range(coroutines)))
        return [seq for seqs in results for seq in seqs]

    out.put(asyncio.run(main()))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_processes_of_coroutines_get_exact_seqs(root: Path, method: str) -> None:
    ctx = multiprocessing.get_context(method)
    out = ctx.Queue()
    children = [
        ctx.Process(target=_coroutines_append, args=(root, w, 10, 6, out)) for w in range(4)
    ]
    for child in children:
        child.start()
    try:
        acknowledged = sorted(seq for _ in children for seq in out.get(timeout=60))
    finally:
        for child in children:
            child.join(60)
            if child.is_alive():
                child.kill()
    total = 4 * sum(1 + (c + i) % 2 for c in range(10) for i in range(6))
    assert acknowledged == list(range(1, total + 1))
    assert [r.seq for r in AttemptLedger(root, "run", "node").records()] == acknowledged


@pytest.mark.asyncio
async def test_follow_ends_when_stopped_mid_wait(root: Path) -> None:
    ledger = AsyncAttemptLedger(root, "run", "node")
    await ledger.append(1, "s", EV)
    stop = asyncio.Event()
    seen = []
    async for record in ledger.follow(poll_interval=3600, stop=stop):
        seen.append(record.seq)
        asyncio.get_running_loop().call_soon(stop.set)  # while it waits for the next one
    assert seen == [1]


@pytest.mark.asyncio
async def test_a_cancelled_follower_leaves_no_watch(root: Path) -> None:
    from attempt_ledger._watch import loop_hub

    ledger = AsyncAttemptLedger(root, "run", "node")
    await ledger.append(1, "s", EV)
    first = asyncio.Event()

    async def follow() -> None:
        async for _ in ledger.follow(poll_interval=3600):
            first.set()

    task = asyncio.create_task(follow())
    await first.wait()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    hub = loop_hub()
    assert hub is None or not hub.tickets


@pytest.mark.asyncio
async def test_reconcile_times_out_and_finds(root: Path) -> None:
    ledger = AsyncAttemptLedger(root, "run", "node")
    missing = await ledger.reconcile(1, 5, 1)
    assert (missing.found, missing.last_seq) == (False, 0)
    await ledger.append(1, "s", EV)
    found = await ledger.reconcile(0, 0)
    assert (found.found, found.last_seq, found.attempts) == (True, 1, 1)


@pytest.mark.asyncio
async def test_a_hash_chained_async_ledger_writes_schema_2(root: Path) -> None:
    from attempt_ledger import verify_receipt_ledger

    async with AsyncAttemptLedger(root, "r", "n", hash_chain=True) as ledger:
        await ledger.append(1, "s", [ReceiptEvent("a"), ReceiptEvent("b")])
    async with AsyncAttemptLedger(root, "r", "n", durable=True) as ledger:
        await ledger.append(1, "s", [ReceiptEvent("c")])  # continues the chain
    result = verify_receipt_ledger(ledger.path)
    assert (result.valid, result.hashed_record_count) == (True, 3)


@pytest.mark.asyncio
@pytest.mark.parametrize("durable", [False, True])
async def test_an_append_follows_the_path_after_the_run_directory_is_moved(
    root: Path, durable: bool
) -> None:
    # As the blocking append does (test_hardening.py). It raised the library's internal
    # StaleLock instead, and so did every append after it: the lock it kept was the moved one.
    async with AsyncAttemptLedger(root, "run", "node", durable=durable) as ledger:
        assert (await ledger.append(1, "s", EV)).seq == 1
        moved = ledger.path.parent.with_name("run.old")
        ledger.path.parent.rename(moved)  # the lock file goes along, still linked
        assert (await ledger.append(1, "s", EV)).seq == 1
        assert (await ledger.append(1, "s", EV)).seq == 2
    assert [r.seq for r in read_receipt_records(moved / "node.jsonl")] == [1]
    assert [r.seq for r in read_receipt_records(ledger.path)] == [1, 2]


class _VirtualTime:
    """``asyncio`` as aio.py sees it, on a clock that only its sleeps advance (each recorded):
    the retry schedule of a busy lock, without waiting for it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def get_running_loop(self) -> _VirtualTime:
        return self  # as the loop: its time()

    def time(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


def _busy_lock(monkeypatch: pytest.MonkeyPatch, times: int) -> tuple[list[int], _VirtualTime]:
    """The lock is found held by the first ``times`` tries, then free: the count of tries, and
    the virtual clock the waits run on."""
    clock = _VirtualTime()
    monkeypatch.setattr(aio, "asyncio", clock)
    tries = [0]
    real = AttemptLedger._try_append

    def try_append(self: AttemptLedger, *args: Any) -> Any:
        tries[0] += 1
        assert tries[0] <= 100, "tried again and again without waiting"
        return None if tries[0] <= times else real(self, *args)

    monkeypatch.setattr(AttemptLedger, "_try_append", try_append)
    return tries, clock


@pytest.mark.asyncio
async def test_a_busy_lock_is_tried_again_backing_off_from_50us_to_5ms(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tries, clock = _busy_lock(monkeypatch, 10)
    ledger = AsyncAttemptLedger(root, "run", "node")
    assert (await ledger.append(1, "s", EV)).seq == 1
    assert tries == [11]
    expected = [50e-6, 100e-6, 200e-6, 400e-6, 800e-6, 1.6e-3, 3.2e-3, 5e-3, 5e-3, 5e-3]
    assert clock.sleeps == pytest.approx(expected)


@pytest.mark.asyncio
async def test_a_lock_timeout_cuts_the_last_wait_to_the_time_left(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tries, clock = _busy_lock(monkeypatch, 100)
    ledger = AsyncAttemptLedger(root, "run", "node", lock_timeout=1e-3)
    with pytest.raises(LockTimeout) as raised:
        await ledger.append(1, "s", EV)
    assert raised.value.timeout == 1e-3
    assert raised.value.path == ledger.ledger.lock_path
    # 50 + 100 + 200 + 400 µs, then what is left of the millisecond instead of 800 µs.
    assert clock.sleeps == pytest.approx([50e-6, 100e-6, 200e-6, 400e-6, 250e-6])
    assert tries == [6]
    assert not ledger.path.exists()


@pytest.mark.asyncio
async def test_a_lock_timeout_of_zero_tries_once(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The clock stands still: the deadline is reached at the first look, never passed.
    tries, clock = _busy_lock(monkeypatch, 100)
    ledger = AsyncAttemptLedger(root, "run", "node", lock_timeout=0)
    with pytest.raises(LockTimeout) as raised:
        await ledger.append(1, "s", EV)
    assert raised.value.timeout == 0
    assert "within 0 s" in str(raised.value)
    assert (tries, clock.sleeps) == ([1], [])


@pytest.mark.asyncio
async def test_a_lock_freed_before_the_lock_timeout_is_taken(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tries, clock = _busy_lock(monkeypatch, 3)
    ledger = AsyncAttemptLedger(root, "run", "node", lock_timeout=60)
    assert (await ledger.append(1, "s", EV)).seq == 1
    assert (tries, len(clock.sleeps)) == ([4], 3)


@pytest.mark.asyncio
@pytest.mark.parametrize("durable", [False, True])
async def test_expected_last_seq_is_checked_by_every_kind_of_append(
    root: Path, durable: bool
) -> None:
    # Inline, in the durable append's thread, and for an empty batch (which writes nothing).
    ledger = AsyncAttemptLedger(root, "run", "node", durable=durable)
    await ledger.append(1, "s", EV)
    for events in (EV, []):
        with pytest.raises(SeqConflict) as raised:
            await ledger.append(1, "s", events, expected_last_seq=5)
        assert (raised.value.path, raised.value.expected, raised.value.actual) == (
            ledger.path,
            5,
            1,
        )
    assert (await ledger.append(1, "s", [], expected_last_seq=1)).seq == 1
    assert (await ledger.append(1, "s", EV, expected_last_seq=1)).seq == 2
    await ledger.aclose()


@pytest.mark.asyncio
async def test_the_default_poll_intervals_are_the_blocking_ledgers(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 10 ms for reconcile, 50 ms for follow, as AttemptLedger's.
    seen: dict[str, object] = {}
    real_reconcile, real_follow = aio.areconcile, aio.afollow_with

    async def areconcile(*args: Any) -> Any:
        seen["reconcile"] = args[3]
        return await real_reconcile(*args)

    def afollow_with(*args: Any, **kwargs: Any) -> Any:
        seen["follow"] = kwargs["poll_interval"]
        return real_follow(*args, **kwargs)

    monkeypatch.setattr(aio, "areconcile", areconcile)
    monkeypatch.setattr(aio, "afollow_with", afollow_with)
    ledger = AsyncAttemptLedger(root, "run", "node")
    await ledger.append(1, "s", EV)
    assert (await ledger.reconcile(1, 0)).found
    assert [record.seq async for record in ledger.follow(timeout=0)] == [1]
    assert seen == {"reconcile": 10, "follow": 0.05}


@pytest.mark.asyncio
async def test_reconcile_is_woken_by_an_append(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An hour-long poll interval: only the loop's inotify watch on the ledger can end it in time.
    from attempt_ledger import _watch

    if _watch.INotify is None:
        pytest.skip("inotify is Linux's")
    armed = asyncio.Event()
    real = _watch.Hub.arm

    def arm(self: _watch.Hub, path: Path, wake: Any) -> Any:
        ticket = real(self, path, wake)
        armed.set()  # before the read it wakes up for
        return ticket

    monkeypatch.setattr(_watch.Hub, "arm", arm)
    ledger = AsyncAttemptLedger(root, "run", "node")
    task = asyncio.create_task(ledger.reconcile(1, 60_000, 3_600_000))
    await asyncio.wait_for(armed.wait(), 30)
    await ledger.append(1, "s", EV)
    summary = await asyncio.wait_for(task, 30)
    assert (summary.found, summary.last_seq) == (True, 1)


@pytest.mark.asyncio
async def test_reading_lets_the_loop_run_between_chunks_without_waiting(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    AttemptLedger(root, "run", "node").append(1, "s", EV * 3)
    clock = _VirtualTime()
    monkeypatch.setattr(aio, "asyncio", clock)
    ledger = AsyncAttemptLedger(root, "run", "node")
    assert [r.seq for r in await ledger.records()] == [1, 2, 3]
    assert [r.seq async for r in ledger.follow(1, timeout=0)] == [2, 3]
    assert set(clock.sleeps) == {0}  # and there were some
