from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import gc
import math
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from filelock import FileLock, Timeout

from attempt_ledger import (
    AttemptLedger,
    LedgerError,
    LedgerIOError,
    LockReentered,
    LockTimeout,
    ReceiptEvent,
    _locking,
    remove_ledger,
    remove_ledger_file,
    remove_run,
    remove_run_dir,
)
from attempt_ledger._codec import encode_batch
from attempt_ledger._locking import SidecarLock, check_timeout
from attempt_ledger.aio import AsyncAttemptLedger

from . import _workers
from ._interrupts import at_point, interrupt_at


def make_lock(tmp_path: Path) -> SidecarLock:
    return SidecarLock(tmp_path / "x.lock", make_parent=lambda: None)


def test_two_locks_on_one_path_exclude_each_other(tmp_path: Path) -> None:
    first, second = make_lock(tmp_path), make_lock(tmp_path)
    first.acquire()
    with pytest.raises(LockTimeout) as info:
        second.acquire(timeout=0)
    assert info.value.path == tmp_path / "x.lock"
    first.release()
    second.acquire(timeout=0)
    second.release()


def test_threads_sharing_a_lock_exclude_each_other(tmp_path: Path) -> None:
    lock = make_lock(tmp_path)
    lock.acquire()
    outcome: list[BaseException | None] = []

    def contender() -> None:
        try:
            lock.acquire(timeout=0)
        except LockTimeout as error:
            outcome.append(error)
        else:
            outcome.append(None)
            lock.release()

    thread = threading.Thread(target=contender)
    thread.start()
    thread.join(timeout=30)
    lock.release()
    assert isinstance(outcome[0], LockTimeout)


def _try_in_child(lock: SidecarLock, result: multiprocessing.Queue[str]) -> None:
    try:
        lock.acquire(timeout=0)
    except LockTimeout:
        result.put("excluded")
    else:
        result.put("acquired")
        lock.release()


def test_lock_inherited_over_fork_still_excludes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    lock = make_lock(tmp_path)
    lock.acquire()  # the parent holds it while forking
    result: multiprocessing.Queue[str] = ctx.Queue()
    child = ctx.Process(target=_try_in_child, args=(lock, result))  # type: ignore[attr-defined]
    child.start()
    try:
        assert result.get(timeout=30) == "excluded"
    finally:
        child.join(timeout=30)
        lock.release()
    assert child.exitcode == 0
    # ... and the child's closing its copy did not release the parent's lock.
    child = ctx.Process(target=_try_in_child, args=(make_lock(tmp_path), result))  # type: ignore[attr-defined]
    lock.acquire()
    child.start()
    try:
        assert result.get(timeout=30) == "excluded"
    finally:
        child.join(timeout=30)
        lock.release()


def test_fork_while_another_thread_holds_the_lock(tmp_path: Path) -> None:
    # The child must not inherit a mutex locked by a thread that does not exist there.
    ctx = multiprocessing.get_context("fork")
    lock = make_lock(tmp_path)
    holding, done = threading.Event(), threading.Event()

    def holder() -> None:
        lock.acquire()
        holding.set()
        done.wait(timeout=30)
        lock.release()

    thread = threading.Thread(target=holder)
    thread.start()
    assert holding.wait(timeout=30)
    result: multiprocessing.Queue[str] = ctx.Queue()
    child = ctx.Process(target=_try_in_child, args=(lock, result))  # type: ignore[attr-defined]
    child.start()
    try:
        assert result.get(timeout=30) == "excluded"  # the file lock, not a stuck mutex
    finally:
        done.set()
        thread.join(timeout=30)
        child.join(timeout=30)
    assert child.exitcode == 0


def test_lock_file_that_cannot_be_opened_names_its_path(tmp_path: Path) -> None:
    (tmp_path / "x.lock").mkdir()
    lock = make_lock(tmp_path)
    with pytest.raises(LedgerIOError) as info:
        lock.acquire()
    assert info.value.path == tmp_path / "x.lock"
    assert "open the lock file" in str(info.value)
    # The mutex was released with the error: a second try fails the same way, not by hanging.
    with pytest.raises(LedgerIOError):
        lock.acquire(timeout=0)


def test_missing_directory_is_made_on_demand(tmp_path: Path) -> None:
    made: list[bool] = []

    def make_parent() -> None:
        made.append(True)
        (tmp_path / "sub").mkdir()

    lock = SidecarLock(tmp_path / "sub" / "x.lock", make_parent=make_parent)
    lock.acquire()
    lock.release()
    assert made == [True]
    assert (tmp_path / "sub" / "x.lock").exists()


def test_close_releases_the_descriptor(tmp_path: Path) -> None:
    lock = make_lock(tmp_path)
    before = len(os.listdir("/proc/self/fd"))
    lock.acquire()
    lock.release()
    assert len(os.listdir("/proc/self/fd")) == before + 1
    with lock.mutex:
        lock.close()
    assert len(os.listdir("/proc/self/fd")) == before


def _acquire_once_released(
    lock: SidecarLock, released: Any, result: multiprocessing.Queue[str]
) -> None:
    released.wait(30)
    try:
        lock.acquire(timeout=30)
    except LockTimeout:
        result.put("timed out")
    else:
        result.put("acquired")
        lock.release()


def test_fork_child_gets_a_fresh_mutex_not_the_parents_held_one(tmp_path: Path) -> None:
    # A thread holds the lock while the process forks, then releases it in the parent: the
    # child, which got a copy of the mutex as it was (held), must not wait on it for ever.
    ctx = multiprocessing.get_context("fork")
    lock = make_lock(tmp_path)
    holding, done = threading.Event(), threading.Event()
    released = ctx.Event()

    def holder() -> None:
        lock.acquire()
        holding.set()
        done.wait(timeout=30)
        lock.release()
        released.set()

    thread = threading.Thread(target=holder)
    thread.start()
    assert holding.wait(timeout=30)
    result: multiprocessing.Queue[str] = ctx.Queue()
    child = ctx.Process(target=_acquire_once_released, args=(lock, released, result))  # type: ignore[attr-defined]
    child.start()
    try:
        done.set()
        assert result.get(timeout=60) == "acquired"
    finally:
        done.set()
        thread.join(timeout=30)
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0


def test_the_holding_thread_taking_the_lock_again_raises_instead_of_deadlocking(
    tmp_path: Path,
) -> None:
    # What a signal handler appending in the middle of an append does, through the same lock
    # object or another one on the same file: waiting would be waiting for itself.
    lock, other = make_lock(tmp_path), make_lock(tmp_path)
    outcome: list[str] = []

    def enter_mutex() -> None:
        with lock.mutex:
            pass

    def holder() -> None:
        lock.acquire()
        try:
            again_with_timeout = lambda: lock.acquire(timeout=5)  # noqa: E731
            for again in (lock.acquire, again_with_timeout, other.acquire, enter_mutex):
                try:
                    again()
                    outcome.append("acquired")
                except LedgerError as error:
                    outcome.append(f"{type(error).__name__} {isinstance(error, RuntimeError)}")
        finally:
            lock.release()

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "deadlocked"
    assert outcome == ["LockReentered True"] * 4
    for each in (lock, other):  # nothing stays held
        each.acquire(timeout=0)
        each.release()
    # Another object with a timeout is another holder as before: it times out.
    lock.acquire()
    with pytest.raises(LockTimeout):
        other.acquire(timeout=0)
    lock.release()


def test_an_infinite_timeout_waits_like_none(tmp_path: Path) -> None:
    lock = make_lock(tmp_path)
    for timeout in (math.inf, threading.TIMEOUT_MAX, 1e300):
        lock.acquire(timeout)
        lock.release()


# Tests asked for by the mutation run (CONTRIBUTING.md, "Mutation testing").


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


class _FakeTime:
    """A clock that only moves when the lock sleeps: the polling schedule, without real time."""

    def __init__(self, on_sleep: Callable[[int], None] = lambda _: None) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self._on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        assert len(self.sleeps) < 1000, "polled for ever"
        self.now += seconds
        self._on_sleep(len(self.sleeps))


def _no_blocking_flock(monkeypatch: pytest.MonkeyPatch) -> None:
    def flock(fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_EX:
            raise AssertionError("a lock with a timeout must poll, not block")
        real_flock(fd, operation)  # a try (LOCK_NB), an unlock

    real_flock = fcntl.flock
    monkeypatch.setattr(_locking, "fcntl", SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX))


def test_a_timeout_polls_with_a_doubling_capped_backoff_then_names_path_and_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_blocking_flock(monkeypatch)
    holder = make_lock(tmp_path)
    holder.acquire()
    fake = _FakeTime()
    lock = SidecarLock(
        tmp_path / "x.lock", make_parent=lambda: None, clock=fake.clock, sleep=fake.sleep
    )
    with pytest.raises(LockTimeout) as info:
        lock.acquire(timeout=0.02)
    holder.release()
    assert info.value.path == tmp_path / "x.lock"
    assert info.value.timeout == 0.02
    # 50 us doubling up to 5 ms, then 5 ms each, the last one cut to the time left.
    expected = [50e-6, 100e-6, 200e-6, 400e-6, 800e-6, 1600e-6, 3200e-6, 5e-3, 5e-3, 3.65e-3]
    assert fake.sleeps == pytest.approx(expected)
    # The mutex was given back with the timeout: the lock is free for the next taker.
    lock.acquire(timeout=0)
    lock.release()


def test_a_timeout_takes_the_lock_as_soon_as_a_poll_finds_it_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_blocking_flock(monkeypatch)
    holder = make_lock(tmp_path)
    holder.acquire()

    def release_on_third(count: int) -> None:
        if count == 3:
            holder.release()

    fake = _FakeTime(release_on_third)
    lock = SidecarLock(
        tmp_path / "x.lock", make_parent=lambda: None, clock=fake.clock, sleep=fake.sleep
    )
    lock.acquire(timeout=10)
    try:
        assert fake.sleeps == pytest.approx([50e-6, 100e-6, 200e-6])
        with pytest.raises(LockTimeout):
            holder.acquire(timeout=0)
    finally:
        lock.release()


class _FlockSpy:
    """``fcntl`` for the lock module, counting tries and blocking waits; ``on_block`` runs
    before a blocking ``flock`` goes to the kernel (to let the holder go)."""

    LOCK_EX = fcntl.LOCK_EX

    def __init__(self, on_block: Callable[[], None] = lambda: None) -> None:
        self.calls: list[str] = []
        self._on_block = on_block

    def flock(self, fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_EX | fcntl.LOCK_NB:
            self.calls.append("try")
        elif operation == fcntl.LOCK_EX:
            self.calls.append("block")
            self._on_block()
        fcntl.flock(fd, operation)


_NAPS = [50e-6, 100e-6, 200e-6, 400e-6, 800e-6, 1600e-6, 3200e-6]


class _Holder:
    """The lock held through a descriptor of its own, as another process would hold it (the
    waiting thread holds nothing, so nothing is refused as re-entry)."""

    def __init__(self, directory: Path, name: str = "x.lock") -> None:
        self.fd = os.open(directory / name, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        os.close(self.fd)  # releases the lock


def test_waiting_for_ever_tries_naps_then_blocks_in_the_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A waiter asleep in flock costs the holder a wake-up at every release, so the wait starts
    # with tries and naps; only a lock still held after 6.35 ms of naps is waited for in the
    # kernel (which wakes the waiter the moment it is free).
    holder = _Holder(tmp_path)
    spy = _FlockSpy(on_block=holder.release)
    monkeypatch.setattr(_locking, "fcntl", spy)
    fake = _FakeTime()
    lock = SidecarLock(
        tmp_path / "x.lock", make_parent=lambda: None, clock=fake.clock, sleep=fake.sleep
    )
    lock.acquire()
    try:
        assert fake.sleeps == pytest.approx(_NAPS)
        # The first try, five more at once, one after each nap, then the blocking wait.
        assert spy.calls == ["try"] * (1 + 5 + len(_NAPS)) + ["block"]
        with pytest.raises(LockTimeout):
            make_lock(tmp_path).acquire(timeout=0)
    finally:
        lock.release()


@pytest.mark.parametrize("timeout", [None, 10.0])
def test_a_lock_let_go_during_the_tries_or_the_naps_is_taken_without_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, timeout: float | None
) -> None:
    holder = _Holder(tmp_path)
    spy = _FlockSpy(on_block=lambda: pytest.fail("blocked in the kernel"))
    monkeypatch.setattr(_locking, "fcntl", spy)
    fake = _FakeTime(lambda naps: holder.release() if naps == 2 else None)
    lock = SidecarLock(
        tmp_path / "x.lock", make_parent=lambda: None, clock=fake.clock, sleep=fake.sleep
    )
    lock.acquire(timeout)
    lock.release()
    assert fake.sleeps == pytest.approx(_NAPS[:2])
    assert spy.calls == ["try"] * (1 + 5 + 2)
    # Let go during the tries: taken before any nap.
    holder = _Holder(tmp_path)
    tries = len(spy.calls)

    def flock(fd: int, operation: int) -> None:
        assert operation != fcntl.LOCK_EX, "blocked in the kernel"
        if operation == fcntl.LOCK_EX | fcntl.LOCK_NB:
            spy.calls.append("try")
            if len(spy.calls) == tries + 3:
                holder.release()
        fcntl.flock(fd, operation)

    monkeypatch.setattr(spy, "flock", flock)
    lock.acquire(timeout)
    lock.release()
    assert fake.sleeps == pytest.approx(_NAPS[:2])  # no new nap
    assert len(spy.calls) == tries + 3  # the third try, made as the holder let go, took it


@pytest.mark.parametrize("durable", [False, True])
def test_a_durable_ledger_waits_in_the_kernel_without_napping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    # A durable append spends its time in the fsync after the lock: a waiter that napped would
    # come late and miss the fsync the others share, so it blocks after its tries.
    ledger = AttemptLedger(tmp_path, "run", "node", durable=durable)
    ledger.append(1, "s", [ReceiptEvent("a")])
    holder = _Holder(ledger.lock_path.parent, ledger.lock_path.name)
    spy = _FlockSpy(on_block=holder.release)
    monkeypatch.setattr(_locking, "fcntl", spy)
    assert ledger.append(1, "s", [ReceiptEvent("b")]).seq == 2
    naps = 0 if durable else len(_NAPS)
    assert spy.calls == ["try"] * (1 + 5 + naps) + ["block"]
    ledger.close()


def test_a_zero_timeout_tries_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = _Holder(tmp_path)
    spy = _FlockSpy()
    monkeypatch.setattr(_locking, "fcntl", spy)
    fake = _FakeTime()
    lock = SidecarLock(
        tmp_path / "x.lock", make_parent=lambda: None, clock=fake.clock, sleep=fake.sleep
    )
    for timeout in (0, 0.0):
        with pytest.raises(LockTimeout) as info:
            lock.acquire(timeout)
        assert info.value.timeout == 0
    holder.release()
    assert spy.calls == ["try", "try"]
    assert fake.sleeps == []


def test_a_thread_contended_mutex_times_out_naming_path_and_timeout(tmp_path: Path) -> None:
    lock = make_lock(tmp_path)
    lock.acquire()
    errors: list[LockTimeout] = []

    def contender() -> None:
        try:
            lock.acquire(timeout=0)
        except LockTimeout as error:
            errors.append(error)

    thread = threading.Thread(target=contender)
    thread.start()
    thread.join(timeout=30)
    lock.release()
    assert [(e.path, e.timeout) for e in errors] == [(tmp_path / "x.lock", 0)]


def test_the_longest_timeout_refuses_waiting_for_itself_like_none(tmp_path: Path) -> None:
    # threading.TIMEOUT_MAX is for ever: it must take the blocking path, which refuses to wait
    # for a lock this very thread holds through another object, rather than poll for 292 years.
    def sleep(_: float) -> None:
        raise AssertionError("polled")

    first = make_lock(tmp_path)
    second = SidecarLock(tmp_path / "x.lock", make_parent=lambda: None, sleep=sleep)
    first.acquire()
    try:
        with pytest.raises(LockReentered):
            second.acquire(threading.TIMEOUT_MAX)
    finally:
        first.release()


def test_waiting_for_ever_waits_for_other_threads_and_other_lock_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only a lock on the same file held by this very thread is refused; a holder in another
    # thread, or this thread holding another lock file, or only the mutex of a closed lock on
    # the same file, is waited for.
    waiting = threading.Event()
    real_flock = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        waiting.set()
        real_flock(fd, operation)

    monkeypatch.setattr(_locking, "fcntl", SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX))
    elsewhere = SidecarLock(tmp_path / "other.lock", make_parent=lambda: None)
    closed = make_lock(tmp_path)
    closed.acquire()
    closed.release()
    holder, lock = make_lock(tmp_path), make_lock(tmp_path)
    holding, stop = threading.Event(), threading.Event()

    def hold() -> None:
        holder.acquire()
        holding.set()
        waiting.wait(timeout=30)
        stop.wait(timeout=30)
        holder.release()

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(timeout=30)
    elsewhere.acquire()
    try:
        with closed.mutex:
            closed.close()
            stop.set()
            lock.acquire()  # blocks in flock until the holder thread lets go
            lock.release()
    finally:
        elsewhere.release()
        stop.set()
        thread.join(timeout=30)
    assert waiting.is_set()
    assert not thread.is_alive()


def test_a_refused_reentry_through_another_object_closes_its_descriptor(tmp_path: Path) -> None:
    lock, other = make_lock(tmp_path), make_lock(tmp_path)
    lock.acquire()
    try:
        before = _fd_count()
        with pytest.raises(LockReentered):
            other.acquire()
        assert _fd_count() == before
    finally:
        lock.release()


def test_a_lock_file_removed_while_open_is_reopened_at_the_path(tmp_path: Path) -> None:
    lock = make_lock(tmp_path)
    lock.acquire()
    lock.release()
    (tmp_path / "x.lock").unlink()
    lock.acquire()
    try:
        assert (tmp_path / "x.lock").exists()
        assert lock.is_current()
        with pytest.raises(LockTimeout):  # the file at the path is the one held
            make_lock(tmp_path).acquire(timeout=0)
    finally:
        lock.release()


def test_is_current_says_whether_the_open_lock_file_is_the_one_at_the_path(
    tmp_path: Path,
) -> None:
    lock = make_lock(tmp_path)
    with lock.mutex:
        assert not lock.is_current()  # nothing open yet
    lock.acquire()
    lock.release()
    with lock.mutex:
        assert lock.is_current()
        (tmp_path / "x.lock").rename(tmp_path / "moved.lock")
        assert not lock.is_current()  # missing
        (tmp_path / "x.lock").write_bytes(b"")
        assert not lock.is_current()  # another file
        (tmp_path / "moved.lock").replace(tmp_path / "x.lock")
        assert lock.is_current()
        lock.close()
        assert not lock.is_current()  # closed


def test_a_directory_still_missing_after_make_parent_names_the_lock_file(tmp_path: Path) -> None:
    calls: list[int] = []
    lock = SidecarLock(tmp_path / "gone" / "x.lock", make_parent=lambda: calls.append(1))
    with pytest.raises(LedgerIOError) as info:
        lock.acquire()
    assert calls == [1]
    assert info.value.path == tmp_path / "gone" / "x.lock"
    assert "cannot open the lock file" in str(info.value)
    assert info.value.errno == errno.ENOENT


def _refuse_read_write_opens(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    # As for a lock file another user created: only the read-only open is allowed. Returns the
    # flags of every open, as they come.
    real = _locking.open_regular
    flags_seen: list[int] = []

    def open_regular(path: Path, flags: int, action: str, **kwargs: Any) -> Any:
        flags_seen.append(flags)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(path, flags, action, **kwargs)

    monkeypatch.setattr(_locking, "open_regular", open_regular)
    return flags_seen


def test_a_lock_file_we_may_not_write_is_locked_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root no permission is ever denied, so the refusal is simulated for write access.
    (tmp_path / "x.lock").write_bytes(b"")
    flags_seen = _refuse_read_write_opens(monkeypatch)
    lock = make_lock(tmp_path)
    lock.acquire()
    try:
        assert lock.is_current()
        assert flags_seen[-1] & os.O_ACCMODE == os.O_RDONLY
        with pytest.raises(LockTimeout):
            make_lock(tmp_path).acquire(timeout=0)
    finally:
        lock.release()
    monkeypatch.undo()
    (tmp_path / "x.lock").unlink()
    _refuse_read_write_opens(monkeypatch)
    made: list[int] = []
    missing = SidecarLock(tmp_path / "x.lock", make_parent=lambda: made.append(1))
    with pytest.raises(LedgerIOError) as info:  # read-only and missing: named, not created
        missing.acquire()
    assert info.value.path == tmp_path / "x.lock"
    assert "cannot open the lock file" in str(info.value)
    assert info.value.errno == errno.ENOENT
    assert made == [1]  # missing is passed through to the caller, which makes the directory


def test_a_lock_path_that_cannot_be_opened_names_the_action(tmp_path: Path) -> None:
    path = tmp_path / ("x" * 300)  # longer than a file name may be: ENAMETOOLONG
    with pytest.raises(LedgerIOError) as info:
        SidecarLock(path, make_parent=lambda: None).acquire()
    assert info.value.path == path
    assert "cannot open the lock file" in str(info.value)


def _failing(*_: object, **__: object) -> Any:
    raise OSError(errno.EIO, "Input/output error")


@pytest.mark.parametrize("blocking", [False, True])
def test_a_lock_the_os_refuses_names_the_path_and_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blocking: bool
) -> None:
    holder = make_lock(tmp_path)
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        holder.acquire()
        holding.set()
        done.wait(timeout=30)
        holder.release()

    def flock(fd: int, operation: int) -> None:  # the blocking wait fails, not the try
        (_failing if operation == fcntl.LOCK_EX else real_flock)(fd, operation)

    real_flock = fcntl.flock
    thread = threading.Thread(target=hold)
    if blocking:  # the first try finds it held by another thread, the blocking wait fails
        thread.start()
        assert holding.wait(timeout=30)
        monkeypatch.setattr(_locking, "fcntl", SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX))
    else:
        monkeypatch.setattr(_locking, "fcntl", SimpleNamespace(flock=_failing))
    lock = make_lock(tmp_path)
    gc.collect()  # other tests' dropped locks first: none may close mid-count
    before = _fd_count()
    try:
        with pytest.raises(LedgerIOError) as info:
            lock.acquire()
    finally:
        done.set()
        if blocking:
            thread.join(timeout=30)
    assert info.value.path == tmp_path / "x.lock"
    assert "cannot lock the lock file: Input/output error" in str(info.value)
    assert info.value.errno == errno.EIO
    assert _fd_count() == before  # closed, not leaked
    monkeypatch.undo()
    lock.acquire(timeout=0)  # and the mutex was given back
    lock.release()


def test_a_lock_file_that_cannot_be_checked_names_the_path_and_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = make_lock(tmp_path)
    lock.acquire()
    lock.release()
    before = _fd_count()
    real_fstat = os.fstat
    monkeypatch.setattr(
        _locking.os, "fstat", lambda fd: _failing() if fd == lock._fd else real_fstat(fd)
    )
    with pytest.raises(LedgerIOError) as info:
        lock.acquire()
    monkeypatch.undo()
    assert info.value.path == tmp_path / "x.lock"
    assert "cannot check the lock file: Input/output error" in str(info.value)
    assert info.value.errno == errno.EIO
    assert _fd_count() == before - 1
    lock.acquire(timeout=0)
    lock.release()


def test_an_unlock_the_os_refuses_closes_the_descriptor_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = make_lock(tmp_path)
    before = _fd_count()
    lock.acquire()
    monkeypatch.setattr(_locking, "fcntl", SimpleNamespace(flock=_failing))
    lock.release()  # never raises
    monkeypatch.undo()
    assert _fd_count() == before
    other = make_lock(tmp_path)
    other.acquire(timeout=0)  # closing released the OS lock
    other.release()
    lock.acquire(timeout=0)  # and the mutex
    lock.release()


def test_a_dropped_lock_closes_its_descriptor(tmp_path: Path) -> None:
    gc.collect()  # other tests' dropped locks first
    before = _fd_count()
    lock = make_lock(tmp_path)
    lock.acquire()
    lock.release()
    assert _fd_count() == before + 1
    del lock
    gc.collect()
    assert _fd_count() == before


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (True, TypeError),
        ("1", TypeError),
        (-1, ValueError),
        (-0.5, ValueError),
        (math.nan, ValueError),
    ],
)
def test_check_timeout_refuses_what_is_not_seconds(value: object, error: type) -> None:
    with pytest.raises(error, match=r"lock_timeout must be None or") as info:
        check_timeout(None, None, value)  # type: ignore[arg-type]
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", [None, 0, 0.0, 1, 2.5, math.inf])
def test_check_timeout_accepts_none_and_seconds(value: float | None) -> None:
    check_timeout(None, None, value)


def test_a_zero_timeout_on_a_lock_held_elsewhere_reports_zero(tmp_path: Path) -> None:
    holder = make_lock(tmp_path)
    holder.acquire()
    try:
        with pytest.raises(LockTimeout) as info:
            make_lock(tmp_path).acquire(timeout=0)
    finally:
        holder.release()
    assert info.value.timeout == 0
    assert "within 0 s" in str(info.value)


def test_a_timeout_bounds_the_wait_for_the_thread_mutex_too(tmp_path: Path) -> None:
    # Another thread of this process inside an append holds the mutex: a timeout of 0 must try
    # it once, not wait a second for it. Recorded rather than timed (no timing assertions).
    lock = make_lock(tmp_path)
    real = lock._mutex
    waits: list[float] = []

    class Recording:
        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            waits.append(timeout)
            return real.acquire(blocking, timeout)

        def release(self) -> None:
            real.release()

        def _is_owned(self) -> bool:
            return bool(real._is_owned())  # type: ignore[attr-defined]

    lock._mutex = Recording()  # type: ignore[assignment]
    for timeout in (0, 0.5, -1.0):
        lock.acquire(timeout)
        lock.release()
    assert waits == [0, 0.5, 0]


@pytest.mark.parametrize("code", [errno.EAGAIN, errno.EACCES])
def test_a_try_refused_as_held_is_a_held_lock_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    # flock is called directly, as filelock's lock_descriptor calls it: the same errnos mean
    # "held by another" (a timeout), anything else is an error.
    def flock(fd: int, operation: int) -> None:
        if operation & fcntl.LOCK_NB:
            raise OSError(code, os.strerror(code))
        real_flock(fd, operation)

    real_flock = fcntl.flock
    lock = make_lock(tmp_path)
    lock.acquire()
    lock.release()
    monkeypatch.setattr(_locking, "fcntl", SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX))
    before = _fd_count()
    with pytest.raises(LockTimeout):
        lock.acquire(timeout=0)
    assert _fd_count() == before  # still open: nothing failed
    monkeypatch.undo()
    lock.acquire(timeout=0)
    lock.release()


def test_the_lock_is_filelocks_lock(tmp_path: Path) -> None:
    lock = make_lock(tmp_path)
    with FileLock(tmp_path / "x.lock"), pytest.raises(LockTimeout):
        lock.acquire(timeout=0)
    lock.acquire(timeout=0)
    try:
        with pytest.raises(Timeout):
            FileLock(tmp_path / "x.lock").acquire(timeout=0)
    finally:
        lock.release()


def test_the_mutex_held_through_its_context_manager_refuses_reentry(tmp_path: Path) -> None:
    lock = make_lock(tmp_path)
    with lock.mutex:
        with pytest.raises(LockReentered):
            lock.acquire()
        with pytest.raises(LockReentered), lock.mutex:
            pass
    lock.acquire(timeout=0)  # nothing stays held
    lock.release()


def test_without_fcntl_the_lock_goes_through_filelocks_descriptor_functions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The platform without fcntl (Windows) locks through filelock's lock_descriptor, which
    # POSIX has too: the branches run here with fcntl hidden.
    monkeypatch.setattr(_locking, "fcntl", None)
    holder = FileLock(tmp_path / "x.lock")
    holder.acquire()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # the holder lets go at the third poll
        sleeps.append(seconds)
        if len(sleeps) == 3:
            holder.release()

    lock = SidecarLock(tmp_path / "x.lock", make_parent=lambda: None, sleep=sleep)
    with pytest.raises(LockTimeout):
        lock.acquire(timeout=0)  # one try, refused: no wait
    assert sleeps == []
    lock.acquire()  # for ever: polls, with the backoff, until the holder lets go
    try:
        assert sleeps == pytest.approx([50e-6, 100e-6, 200e-6])
        with pytest.raises(Timeout):
            FileLock(tmp_path / "x.lock").acquire(timeout=0)
    finally:
        lock.release()
    with FileLock(tmp_path / "x.lock").acquire(timeout=0):  # released
        pass


@pytest.mark.parametrize("writable", [True, False])
def test_a_file_where_the_lock_files_directory_should_be_asks_for_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writable: bool
) -> None:
    # ENOTDIR, like ENOENT, goes to make_parent (which names the directory it cannot make),
    # through the read-write open and through the read-only one alike.
    if not writable:
        _refuse_read_write_opens(monkeypatch)
    (tmp_path / "file").write_bytes(b"")
    made: list[int] = []
    lock = SidecarLock(tmp_path / "file" / "x.lock", make_parent=lambda: made.append(1))
    with pytest.raises(LedgerIOError) as info:
        lock.acquire()
    assert made == [1]
    assert info.value.errno == errno.ENOTDIR
    assert "cannot open the lock file" in str(info.value)


def test_a_lock_file_opened_read_only_that_cannot_be_opened_names_the_action(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _refuse_read_write_opens(monkeypatch)
    path = tmp_path / ("x" * 300)  # longer than a file name may be: ENAMETOOLONG
    with pytest.raises(LedgerIOError) as info:
        SidecarLock(path, make_parent=lambda: None).acquire()
    assert info.value.path == path
    assert "cannot open the lock file" in str(info.value)


# A hostile review of the lock wait (tries, naps, then the kernel).


@pytest.mark.parametrize("taken_by", ["try", "block"])
def test_an_interrupt_as_the_os_lock_is_taken_leaves_nothing_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taken_by: str
) -> None:
    # Ctrl-C (a handler that raises) runs at the first bytecode after the flock that took the
    # lock returns: the acquire fails, so its caller never releases; the OS lock must not stay
    # held by the descriptor the lock keeps open, or every other process waits for ever.
    holder = _Holder(tmp_path)

    def flock(fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_EX and taken_by == "block":
            holder.release()
        fcntl.flock(fd, operation)  # a try refused raises here, before the signal
        if operation & fcntl.LOCK_EX:
            signal.raise_signal(signal.SIGUSR1)

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    fake = _FakeTime(lambda naps: holder.release() if naps == 2 and taken_by == "try" else None)
    lock = SidecarLock(
        tmp_path / "x.lock", make_parent=lambda: None, clock=fake.clock, sleep=fake.sleep
    )
    monkeypatch.setattr(_locking, "fcntl", SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX))
    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            lock.acquire()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    monkeypatch.undo()
    other = make_lock(tmp_path)
    other.acquire(timeout=0)  # the OS lock was let go (LockTimeout if not)
    other.release()
    lock.acquire(timeout=0)  # and the mutex
    lock.release()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


class _InterruptedAsTaken:
    """A lock's mutex around which Ctrl-C lands just as it is taken: the handler runs at the
    first bytecode after the acquire returns, with the mutex held."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def acquire(self, *args: Any, **kwargs: Any) -> bool:
        taken = bool(self.inner.acquire(*args, **kwargs))
        signal.raise_signal(signal.SIGUSR1)
        return taken

    def release(self) -> None:
        self.inner.release()

    def _is_owned(self) -> bool:
        return bool(self.inner._is_owned())


@pytest.mark.parametrize("timeout", [None, 10.0])
def test_an_interrupt_as_the_mutex_is_taken_leaves_it_to_the_other_threads(
    tmp_path: Path, timeout: float | None
) -> None:
    # Found by a signal handler raising at random moments of appends: one in ~50 left the mutex
    # held by the main thread, and every other thread's append waited for it.
    lock = make_lock(tmp_path)
    real = lock._mutex
    lock._mutex = _InterruptedAsTaken(real)  # type: ignore[assignment]
    previous = signal.signal(signal.SIGUSR1, _interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            lock.acquire(timeout)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    lock._mutex = real
    taken: list[bool] = []

    def take() -> None:
        taken.append(real.acquire(timeout=0))
        if taken[0]:
            real.release()

    thread = threading.Thread(target=take)
    thread.start()
    thread.join(timeout=30)
    assert taken == [True]  # the mutex was let go
    lock.acquire(timeout=0)  # and the lock works
    lock.release()


@pytest.mark.parametrize("entry", ["append", "asyncio's try"])
@pytest.mark.parametrize("when", ["at the door", "on the way out"])
def test_an_interrupt_as_an_append_releases_the_lock_still_lets_it_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str, when: str
) -> None:
    # Ctrl-C as the append calls release(): at its first bytecode, before it let go of anything
    # (the append calls it again), or after it has (calling it again does nothing).
    ledger = AttemptLedger(tmp_path, "run", "node")
    real_release = SidecarLock.release
    calls: list[int] = []

    def release(lock: SidecarLock) -> None:
        calls.append(1)
        if when == "on the way out":
            real_release(lock)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGUSR1)
        real_release(lock)

    batch = encode_batch(ledger.path, "run", "node", 1, "s", [ReceiptEvent("a")])
    call: Callable[[], object] = functools.partial(ledger._try_append, batch)
    if entry == "append":
        call = functools.partial(ledger.append, 1, "s", [ReceiptEvent("a")])
    monkeypatch.setattr(SidecarLock, "release", release)
    previous = signal.signal(signal.SIGUSR1, _interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            call()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    monkeypatch.undo()
    assert ledger.last_seq() == 1  # written before the interrupt
    other = AttemptLedger(tmp_path, "run", "node", lock_timeout=0)
    assert other.append(1, "t", [ReceiptEvent("b")]).seq == 2  # the OS lock was let go
    assert ledger.append(1, "s", [ReceiptEvent("c")]).seq == 3  # and the mutex


def _other_thread_takes(lock: SidecarLock) -> list[object]:
    # What another thread gets trying the lock once: None if it took (and let go of) it.
    got: list[object] = []

    def take() -> None:
        try:
            lock.acquire(timeout=0)
        except LockTimeout as error:
            got.append(error)
        else:
            lock.release()
            got.append(None)

    thread = threading.Thread(target=take)
    thread.start()
    thread.join(timeout=30)
    return got


@pytest.mark.parametrize("durable", [False, True])
def test_an_interrupt_at_any_point_of_close_leaves_the_lock_to_the_other_threads(
    tmp_path: Path, durable: bool
) -> None:
    # Found by a storm of raising handlers: close() took the mutex in a generator's context
    # manager, and an interrupt at next()'s return left it held, the generator suspended, while
    # the caller kept the KeyboardInterrupt (as a handler that logs or re-raises it does).
    ledger = AttemptLedger(tmp_path, "run", "node", durable=durable)
    for n in range(1, 200):
        ledger.append(1, "s", [ReceiptEvent("a")])
        caught: list[BaseException] = []
        sys.setprofile(interrupt_at(n))
        try:
            ledger.close()
        except KeyboardInterrupt as error:
            caught.append(error)
        finally:
            sys.setprofile(None)
        assert _other_thread_takes(ledger._lock) == [None], n
        if not caught:
            break  # close() ran whole: every point was tried
    assert n > 5
    assert [r.seq for r in ledger.records()] == list(range(1, n + 1))


@pytest.mark.parametrize("entry", ["append", "durable append", "asyncio's try"])
def test_an_interrupt_at_any_point_of_an_append_leaves_nothing_held(
    tmp_path: Path, entry: str
) -> None:
    # Every point of an append where a signal's handler can raise, one after the other: after
    # each, another thread and another process (a lock object of its own) take the lock at
    # once, the seqs are 1..N, and every append that returned is in the file.
    ledger = AttemptLedger(tmp_path, "run", "node", durable=entry == "durable append")
    other_process = SidecarLock(ledger.lock_path, make_parent=lambda: None)
    batch = encode_batch(ledger.path, "run", "node", 1, "s", [ReceiptEvent("a")])
    acked: list[int] = []
    for n in range(1, 500):
        sys.setprofile(interrupt_at(n))
        try:
            if entry == "asyncio's try":
                summary = ledger._try_append(batch)
            else:
                summary = ledger.append(1, "s", [ReceiptEvent("a")])
        except KeyboardInterrupt:
            summary = None
        finally:
            sys.setprofile(None)
        if summary is not None:
            acked.append(summary.seq)
        assert _other_thread_takes(ledger._lock) == [None], n
        assert _other_thread_takes(other_process) == [None], n
        seqs = [r.seq for r in ledger.records()]
        assert seqs == list(range(1, len(seqs) + 1)), n
        assert set(acked) <= set(seqs), n
        if n > 1 and len(acked) == 2:
            break  # the append ran whole twice: every point was tried
    assert n > 10
    assert ledger.append(1, "s", [ReceiptEvent("b")]).seq == len(seqs) + 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("via", ["the same ledger", "another", "another, with a timeout"])
@pytest.mark.parametrize("durable", [False, True])
def test_a_handler_appending_at_any_point_of_an_append(
    tmp_path: Path, durable: bool, via: str
) -> None:
    # A handler appending (the same file, through the same ledger object or another) at every
    # point of an append where CPython runs one, in turn: it is served, or refused as a
    # re-entry (a timeout, through another object), never waits for itself; the interrupted
    # append finishes whole.
    ledger = AttemptLedger(tmp_path, "run", "node", durable=durable)
    timeout = 0.01 if via == "another, with a timeout" else None
    target = ledger
    if via != "the same ledger":
        target = AttemptLedger(tmp_path, "run", "node", durable=durable, lock_timeout=timeout)
    refusal = LockTimeout if timeout else LockReentered
    outcomes: set[str] = set()
    for n in range(1, 500):
        served: list[int] = []

        def handler(served: list[int] = served) -> None:
            try:
                served.append(target.append(9, "h", [ReceiptEvent("h")]).seq)
                outcomes.add("served")
            except refusal:
                outcomes.add("refused")

        profile, seen = at_point(n, handler)
        sys.setprofile(profile)
        try:
            summary = ledger.append(1, "s", [ReceiptEvent("a")])
        finally:
            sys.setprofile(None)
        seqs = [r.seq for r in ledger.records()]
        assert seqs == list(range(1, len(seqs) + 1)), n
        assert {summary.seq, *served} <= set(seqs)
        if len(seen) < n:
            break  # the append ran whole: every point was tried
    assert outcomes == {"served", "refused"}


def test_a_release_interrupted_after_letting_go_leaves_the_next_holder_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C lands once release() has let go, and another thread takes the lock before the
    # append calls release_again(): that must not unlock the other's flock (another process
    # would then write beside it) nor release a mutex this thread does not hold.
    ledger = AttemptLedger(tmp_path, "run", "node")
    lock = ledger._lock
    real_release = SidecarLock.release
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        lock.acquire()
        taken.set()
        done.wait(timeout=30)
        lock.release()

    thread = threading.Thread(target=hold)

    def release(self: SidecarLock) -> None:
        real_release(self)
        if not thread.is_alive() and threading.current_thread() is threading.main_thread():
            thread.start()
            taken.wait(timeout=30)
            signal.raise_signal(signal.SIGUSR1)

    monkeypatch.setattr(SidecarLock, "release", release)
    previous = signal.signal(signal.SIGUSR1, _interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            ledger.append(1, "s", [ReceiptEvent("a")])
        monkeypatch.undo()
        with pytest.raises(LockTimeout):  # another process: the thread's flock still holds
            AttemptLedger(tmp_path, "run", "node", lock_timeout=0).append(
                1, "t", [ReceiptEvent("b")]
            )
    finally:
        signal.signal(signal.SIGUSR1, previous)
        done.set()
        thread.join(timeout=30)
    assert ledger.append(1, "s", [ReceiptEvent("c")]).seq == 2


def test_a_reentry_as_the_mutex_is_taken_is_refused_and_cannot_let_go_of_it(
    tmp_path: Path,
) -> None:
    # A handler runs in the instant the append has the mutex but has not said so yet. Its own
    # acquire, interrupted in turn before it took anything (a second Ctrl-C, which it caught),
    # let go of the mutex the interrupted append holds: another thread then wrote beside it.
    in_handler: list[bool] = []

    def clock() -> float:
        if in_handler == [True]:
            in_handler.append(False)
            raise KeyboardInterrupt  # the second Ctrl-C, as the handler's acquire starts
        return time.monotonic()

    lock = SidecarLock(tmp_path / "x.lock", make_parent=lambda: None, clock=clock)
    real = lock._mutex
    lock._mutex = _InterruptedAsTaken(real)  # type: ignore[assignment]
    refused: list[BaseException] = []

    def handler(*_: object) -> None:
        lock._mutex = real  # once
        in_handler.append(True)
        try:
            lock.acquire(timeout=1.0)
        except (LockReentered, KeyboardInterrupt) as error:
            refused.append(error)
        in_handler.clear()

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        lock.acquire()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    try:
        got = _other_thread_takes(lock)  # the mutex is still the append's
        assert [type(error) for error in got] == [LockTimeout]
        assert [type(error) for error in refused] == [LockReentered]
    finally:
        lock.release()
    assert _other_thread_takes(lock) == [None]


_EDGES = [0, 0.0, 1e-9, 1e9, math.inf, threading.TIMEOUT_MAX, pytest.param(10**400, id="10**400")]


@pytest.mark.parametrize("timeout", _EDGES)
def test_every_edge_timeout_appends_through_the_ledger_and_asyncio(
    tmp_path: Path, timeout: float
) -> None:
    # 10**400 is an int past any float: a deadline computed from it overflows.
    ledger = AttemptLedger(tmp_path, "run", "node", lock_timeout=timeout)
    assert ledger.append(1, "s", [ReceiptEvent("a")]).seq == 1
    aledger = AsyncAttemptLedger(tmp_path, "run", "node", lock_timeout=timeout)
    assert asyncio.run(aledger.append(1, "s", [ReceiptEvent("b")])).seq == 2


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("during", ["nap", "kernel wait"])
def test_an_interrupt_during_a_nap_or_the_kernel_wait_leaves_nothing_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, during: str
) -> None:
    holder = _Holder(tmp_path)  # held for good: the wait ends only by the interrupt
    lock = SidecarLock(
        tmp_path / "x.lock",
        make_parent=lambda: None,
        sleep=lambda _: signal.raise_signal(signal.SIGALRM) if during == "nap" else None,
    )
    previous = signal.signal(signal.SIGALRM, _interrupt)
    try:
        for attempt in range(3):  # again and again: no descriptor piles up
            if during == "kernel wait":  # flock is restarted after a handler that returns
                spy = _FlockSpy(on_block=lambda: signal.setitimer(signal.ITIMER_REAL, 0.01))
                monkeypatch.setattr(_locking, "fcntl", spy)
            with pytest.raises(KeyboardInterrupt):
                lock.acquire()
            if attempt == 0:
                count = _fd_count()
            assert _fd_count() == count
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    monkeypatch.undo()
    holder.release()
    other = make_lock(tmp_path)
    other.acquire(timeout=0)  # the waiter took nothing
    other.release()
    lock.acquire(timeout=0)  # and gave the mutex back
    lock.release()


class _HandlerAppends:
    """A ledger held by another (:class:`_Holder`), and a signal handler that appends to it or
    to another ledger, as ``target`` says."""

    def __init__(self, tmp_path: Path, target: str) -> None:
        self.ledger = AttemptLedger(tmp_path, "run", "node")
        self.other = AttemptLedger(tmp_path, "run", "other")
        self.ledger.append(1, "s", [ReceiptEvent("a")])
        self.holder = _Holder(self.ledger.lock_path.parent, self.ledger.lock_path.name)
        self.target = target
        self.in_handler: list[int] = []

    def append_in_handler(self) -> None:
        to = self.other if self.target == "another ledger" else self.ledger
        self.in_handler.append(to.append(1, "h", [ReceiptEvent("h")]).seq)

    def append_around_it(self) -> None:
        # Another ledger: the outer append goes on. The same ledger: the handler's append is
        # refused (it would wait for itself), and the outer one fails with it, holding nothing.
        if self.target == "another ledger":
            assert self.ledger.append(1, "s", [ReceiptEvent("b")]).seq == 2
            assert self.in_handler == [1]
        else:
            with pytest.raises(LockReentered):
                self.ledger.append(1, "s", [ReceiptEvent("b")])
            self.holder.release()
            assert self.in_handler == []
            assert self.ledger.append(1, "s", [ReceiptEvent("c")]).seq == 2


@pytest.mark.parametrize("target", ["another ledger", "the same ledger"])
def test_a_signal_handler_appending_during_a_nap(tmp_path: Path, target: str) -> None:
    # During a nap the waiter holds its mutex, not the OS lock: a handler appending to another
    # ledger appends; one appending to the same ledger would wait for itself, and is refused.
    case = _HandlerAppends(tmp_path, target)

    def sleep(_: float) -> None:
        naps.append(1)
        if len(naps) == 1:
            signal.raise_signal(signal.SIGUSR1)
        elif len(naps) == 2:
            case.holder.release()

    naps: list[int] = []
    case.ledger._lock._sleep = sleep
    previous = signal.signal(signal.SIGUSR1, lambda *_: case.append_in_handler())
    try:
        case.append_around_it()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert [r.event_type for r in case.ledger.records()][1:] == (
        ["b"] if target == "another ledger" else ["c"]
    )


@pytest.mark.parametrize("remove_run", [False, True])
def test_a_ledger_removed_while_a_waiter_naps_is_not_appended_into(
    tmp_path: Path, remove_run: bool
) -> None:
    # What remove_ledger (and remove_run) do under the lock: unlink the ledger and the lock
    # file (and the run directory); the waiter then locks the unlinked lock file, sees it
    # unlinked, and locks and appends at the path, never into the removed ledger.
    ledger = AttemptLedger(tmp_path, "run", "node")
    ledger.append(1, "s", [ReceiptEvent("a")])
    removed = os.open(ledger.path, os.O_RDONLY)
    holder = _Holder(ledger.lock_path.parent, ledger.lock_path.name)

    def sleep(_: float) -> None:
        if ledger.lock_path.exists():
            ledger.path.unlink()
            ledger.lock_path.unlink()
            if remove_run:
                ledger.path.parent.rmdir()
            holder.release()

    ledger._lock._sleep = sleep
    try:
        assert ledger.append(1, "s", [ReceiptEvent("b")]).seq == 1
        assert os.read(removed, 1000).count(b"\n") == 1  # the removed ledger: as it was
    finally:
        os.close(removed)
    assert [r.event_type for r in ledger.records()] == ["b"]
    ledger._lock.acquire(0)
    try:
        assert ledger._lock.is_current()  # the lock file at the path is the one it takes
    finally:
        ledger._lock.release()
    ledger.close()


@pytest.mark.parametrize("nap", [True, False])
def test_without_fcntl_waiting_for_ever_polls_at_the_cap_and_never_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nap: bool
) -> None:
    # No blocking wait to end in: naps past the seven, at 5 ms, however the ledger is built.
    monkeypatch.setattr(_locking, "fcntl", None)
    holder = FileLock(tmp_path / "x.lock")
    holder.acquire()
    fake = _FakeTime(lambda naps: holder.release() if naps == 12 else None)
    lock = SidecarLock(
        tmp_path / "x.lock", make_parent=lambda: None, sleep=fake.sleep, clock=fake.clock, nap=nap
    )
    lock.acquire()
    lock.release()
    assert fake.sleeps == pytest.approx([*_NAPS, 5e-3, 5e-3, 5e-3, 5e-3, 5e-3])


def test_fork_while_another_thread_naps_in_acquire(tmp_path: Path) -> None:
    # The napping thread holds the mutex (not the OS lock) as the process forks: the child
    # must get a fresh mutex, and take the lock once parent and thread let it go.
    ctx = multiprocessing.get_context("fork")
    parent = os.getpid()
    holder = make_lock(tmp_path)
    holder.acquire()
    napping, wake = threading.Event(), threading.Event()
    released = ctx.Event()

    def sleep(seconds: float) -> None:
        if os.getpid() == parent:
            napping.set()
            wake.wait(timeout=30)
        time.sleep(seconds)

    lock = SidecarLock(tmp_path / "x.lock", make_parent=lambda: None, sleep=sleep)
    thread = threading.Thread(target=lambda: (lock.acquire(), lock.release()))
    thread.start()
    assert napping.wait(timeout=30)
    result: multiprocessing.Queue[str] = ctx.Queue()
    child = ctx.Process(target=_acquire_once_released, args=(lock, released, result))  # type: ignore[attr-defined]
    child.start()
    try:
        holder.release()
        wake.set()
        released.set()
        assert result.get(timeout=60) == "acquired"
    finally:
        wake.set()
        released.set()
        thread.join(timeout=30)
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    assert not thread.is_alive()


@pytest.mark.parametrize("durable", [False, True])
def test_a_pickled_ledger_keeps_its_way_of_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    # What a spawned worker gets: a durable ledger's copy still blocks without napping.
    ledger = pickle.loads(pickle.dumps(AttemptLedger(tmp_path, "run", "node", durable=durable)))
    ledger.append(1, "s", [ReceiptEvent("a")])
    holder = _Holder(ledger.lock_path.parent, ledger.lock_path.name)
    spy = _FlockSpy(on_block=holder.release)
    monkeypatch.setattr(_locking, "fcntl", spy)
    ledger._lock._sleep = lambda _: None
    assert ledger.append(1, "s", [ReceiptEvent("b")]).seq == 2
    assert spy.calls == ["try"] * (1 + 5 + (0 if durable else len(_NAPS))) + ["block"]
    ledger.close()


@pytest.mark.stress
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_eight_processes_napping_and_blocking_on_one_ledger_all_finish(
    tmp_path: Path, method: str
) -> None:
    # Durable ledgers block after their tries, the others nap first: nobody starves, and
    # every acknowledged seq is in the file once.
    ctx = multiprocessing.get_context(method)
    start = ctx.Event()
    results: multiprocessing.Queue[tuple[int, list[int]]] = ctx.Queue()
    children = []
    for worker in range(8):
        ledger = AttemptLedger(tmp_path, "run", "node", durable=worker % 2 == 1)
        child = ctx.Process(  # type: ignore[attr-defined]
            target=_workers.append_many, args=(tmp_path, worker, 200, start, results, ledger)
        )
        child.start()
        children.append(child)
    try:
        start.set()
        acknowledged = dict(results.get(timeout=120) for _ in children)
        for child in children:
            child.join(timeout=60)
            assert child.exitcode == 0
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
            child.join(timeout=60)
    seqs = sorted(seq for each in acknowledged.values() for seq in each)
    assert seqs == list(range(1, len(seqs) + 1))
    assert [r.seq for r in AttemptLedger(tmp_path, "run", "node").records()] == seqs


@pytest.mark.parametrize("target", ["another ledger", "the same ledger"])
def test_a_signal_handler_appending_during_the_kernel_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    # The handler runs while flock is interrupted, then flock is restarted: one appending to
    # another ledger appends (and lets the lock go here), one on the same ledger is refused.
    case = _HandlerAppends(tmp_path, target)

    def handler(*_: object) -> None:
        case.append_in_handler()
        case.holder.release()

    spy = _FlockSpy(on_block=lambda: signal.setitimer(signal.ITIMER_REAL, 0.01))
    monkeypatch.setattr(_locking, "fcntl", spy)
    case.ledger._lock._sleep = lambda _: None
    previous = signal.signal(signal.SIGALRM, handler)
    try:
        case.append_around_it()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert spy.calls.count("block") == 1


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (-1, ValueError),
        (-math.inf, ValueError),
        (math.nan, ValueError),
        (True, TypeError),
        (False, TypeError),
        ("1", TypeError),
        (None, None),
    ],
)
def test_every_entry_point_checks_lock_timeout_before_touching_a_file(
    tmp_path: Path, value: Any, error: type[Exception] | None
) -> None:
    root = tmp_path / "root"
    makers: list[Callable[[], object]] = [
        lambda: AttemptLedger(root, "run", "node", lock_timeout=value),
        lambda: AsyncAttemptLedger(root, "run", "node", lock_timeout=value),
        lambda: remove_ledger(root, "run", "node", lock_timeout=value),
        lambda: remove_run(root, "run", lock_timeout=value),
        lambda: remove_ledger_file(root / "run" / "node.jsonl", lock_timeout=value),
        lambda: remove_run_dir(root / "run", lock_timeout=value),
    ]
    for make in makers:
        if error is None:
            make()
        else:
            with pytest.raises(error, match="lock_timeout"):
                make()
    assert not root.exists()


def test_waiting_for_ever_while_other_threads_make_locks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wait for ever first looks through every lock of the process for one this thread holds;
    # WeakSet's iterator is Python code, so a thread switch can land in it, and another thread
    # making a ledger (a lock) meanwhile changed the set under it: RuntimeError, not a wait.
    refused = [True]

    def flock(fd: int, operation: int) -> None:  # every first try finds the lock held
        if operation & fcntl.LOCK_NB and refused[0]:
            refused[0] = False
            raise BlockingIOError(errno.EAGAIN, "held")
        fcntl.flock(fd, operation)

    monkeypatch.setattr(_locking, "fcntl", SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX))
    others = [make_lock(tmp_path) for _ in range(5000)]  # a long walk: many switches in it
    lock = make_lock(tmp_path)
    stop = threading.Event()

    def make_locks() -> None:
        while not stop.is_set():
            make_lock(tmp_path)

    maker = threading.Thread(target=make_locks)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    maker.start()
    try:
        for _ in range(200):
            refused[0] = True
            lock.acquire()
            lock.release()
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        maker.join(timeout=30)
    assert not maker.is_alive()
    assert len(others) == 5000


def test_a_lock_file_replaced_while_a_waiter_naps_is_waited_for_at_the_path(
    tmp_path: Path,
) -> None:
    # Replaced (renamed over) while held: the waiter takes the old one when let go, sees it
    # unlinked, and waits for the one at the path, held by another, before appending.
    ledger = AttemptLedger(tmp_path, "run", "node")
    ledger.append(1, "s", [ReceiptEvent("a")])
    old = _Holder(ledger.lock_path.parent, ledger.lock_path.name)
    new = _Holder(tmp_path, "new.lock")
    steps: list[str] = []

    def sleep(_: float) -> None:
        if not steps:
            os.replace(tmp_path / "new.lock", ledger.lock_path)
            old.release()
            steps.append("replaced")
        elif len(steps) == 3:
            new.release()
            steps.append("released")
        else:
            steps.append("nap")

    ledger._lock._sleep = sleep
    assert ledger.append(1, "s", [ReceiptEvent("b")]).seq == 2
    assert steps == ["replaced", "nap", "nap", "released"]
    ledger._lock.acquire(0)
    try:
        assert ledger._lock.is_current()
    finally:
        ledger._lock.release()
    ledger.close()


def test_release_again_on_a_lock_never_taken_or_let_go_does_nothing(tmp_path: Path) -> None:
    lock = make_lock(tmp_path)
    lock.release_again()
    lock.release_again()
    lock.acquire(timeout=0)
    lock.release()
    lock.release_again()
    lock.release_again()
    assert _other_thread_takes(lock) == [None]
    assert _other_thread_takes(make_lock(tmp_path)) == [None]
