from __future__ import annotations

import math
import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from attempt_ledger import LedgerError, LedgerIOError, LockTimeout
from attempt_ledger._locking import SidecarLock


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
