"""The sidecar lock: filelock's OS-level primitive on a descriptor the ledger keeps open.

An OS lock (``flock`` on POSIX) belongs to an *open file description*: it excludes other
``open()`` calls, in this process or any other, but not threads sharing the descriptor, nor a
child that inherited it over ``fork()``. So the lock pairs the OS lock with a thread mutex, and
a process that finds itself a fork child drops the inherited descriptor (without unlocking it:
that would release the parent's lock) and opens its own.

The thread that holds the lock cannot take it again (a signal handler or a callback appending
in the middle of an append): that would wait for itself for ever, so it raises
:class:`LockReentered` instead.
"""

from __future__ import annotations

import errno
import os
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from threading import get_ident
from typing import Any

from filelock import lock_descriptor, unlock_descriptor

from ._errors import LedgerIOError, LockReentered, LockTimeout
from ._files import CLOEXEC, open_regular

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

# filelock's primitive on POSIX, called directly: its wrappers cost more than the flock itself.
_TRY_EXCLUSIVE = fcntl.LOCK_EX | fcntl.LOCK_NB if fcntl is not None else 0
_UNLOCK = fcntl.LOCK_UN if fcntl is not None else 0
# What a non-blocking lock fails with when another holds it (filelock's set).
_HELD = frozenset({errno.EAGAIN, errno.EACCES})

_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | CLOEXEC
_READ_ONLY_FLAGS = os.O_RDONLY | CLOEXEC
_MISSING = (FileNotFoundError, NotADirectoryError)

# Timeouts this long are for ever: threading's waits refuse anything above TIMEOUT_MAX
# (~292 years), math.inf included.
_FOREVER = threading.TIMEOUT_MAX

# Waiting for a lock another holds: a few more tries at once, then naps from 50 us, doubling
# to 5 ms, between tries; without a timeout, after 6.35 ms of naps, a blocking flock. An append
# holds the lock for microseconds, and a release wakes the waiters asleep in flock: they cost
# the holder a wake-up per append, which halved the throughput of two processes sharing a
# ledger; a napping waiter costs it nothing. A lock held longer still ends up waited for in the
# kernel, which wakes the waiter the moment it is free.
_SPINS = 5
_FIRST_POLL = 50e-6
_LAST_POLL = 5e-3
_NAPS_BEFORE_BLOCKING = 7

_live: weakref.WeakSet[SidecarLock] = weakref.WeakSet()


def _live_locks() -> list[SidecarLock]:
    # WeakSet's iterator is Python code: a thread switch can land in it, and a lock another
    # thread makes meanwhile changes the set under it (RuntimeError). Walk it again: a lock
    # made since is not one this thread holds.
    while True:
        try:
            return list(_live)
        except RuntimeError:
            continue


def _after_fork_in_child() -> None:
    for lock in _live_locks():
        lock._forget_parent()


if hasattr(os, "register_at_fork"):  # every POSIX Python; Windows has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


class SidecarLock:
    """An exclusive lock on one lock file, for threads and processes alike.

    :param path: the lock file; created on first use.
    :param make_parent: called when the lock file's directory is missing, to create it.
    :param clock: monotonic clock used for timeouts.
    :param sleep: used for naps between tries.
    :param nap: waiting for ever, nap between tries before blocking in the kernel; ``False``
        blocks at once after the tries, for holders whose waiters must not come late (durable
        appends: a waiter that naps misses the fsync that others share).
    """

    def __init__(
        self,
        path: Path,
        *,
        make_parent: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        nap: bool = True,
    ) -> None:
        self.path = path
        self._naps = _NAPS_BEFORE_BLOCKING if nap else 0
        self._make_parent = make_parent
        self._clock = clock
        self._sleep = sleep
        # An RLock for its owner check: a re-entry (a signal handler appending) is refused
        # before it would wait for itself (_refuse_reentry); it is never taken twice.
        self._mutex = threading.RLock()
        self._owner: int | None = None  # the thread inside acquire/release
        self._fd: int | None = None
        self._ident: tuple[int, int] = (-1, -1)  # (st_dev, st_ino) of the file _fd is open on
        _live.add(self)

    def _forget_parent(self) -> None:
        # Runs in a fork child: the mutex may have been held by a thread that does not exist here,
        # and the descriptor is the parent's open file description.
        self._mutex = threading.RLock()
        self._owner = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def acquire(self, timeout: float | None = None) -> None:
        """Take the lock; ``timeout`` in seconds, ``None`` (or infinite) to wait for ever, 0 to
        try once.

        :raises LockTimeout: if the lock is still held by another when ``timeout`` expires.
        :raises LockReentered: if this thread holds it already (through this object, or, when
            it would wait for ever, through another object on the same lock file).
        :raises LedgerIOError: if the lock file cannot be opened, locked or checked.
        """
        mutex: Any = self._mutex  # _refuse_reentry(), inline: every append runs this
        if mutex._is_owned():
            raise LockReentered(self.path)
        try:
            if timeout is None or timeout >= _FOREVER:
                deadline = timeout = None
                mutex.acquire()
            else:
                deadline = self._clock() + timeout
                if not mutex.acquire(timeout=max(timeout, 0)):
                    raise LockTimeout(self.path, timeout)
            self._owner = get_ident()
            while True:
                fd = self._fd if self._fd is not None else self._open()
                if not self._try_lock(fd):
                    self._wait(fd, deadline, timeout)
                try:
                    if os.fstat(fd).st_nlink:
                        return
                except OSError as error:
                    self._close()
                    raise LedgerIOError.wrap(self.path, "check the lock file", error) from error
                # The lock file was removed or replaced since we opened it: holding the old one
                # excludes nobody who opens the path now. Closing also releases it.
                self._close()
        except BaseException:
            self._let_go(mutex)
            raise

    def _refuse_reentry(self) -> Any:
        # The thread that holds the mutex (even in the instant before _owner says so) is in an
        # append, or close(), further up its stack: a signal's handler or a callback.
        mutex: Any = self._mutex  # _is_owned: RLock's, not in its stubs
        if mutex._is_owned():
            raise LockReentered(self.path)
        return mutex

    def _let_go(self, mutex: Any) -> None:
        # Lets go of what a failed acquire took: a signal's handler raising (Ctrl-C) just as the
        # mutex or a flock is taken fails it with them held, and every other thread or process
        # would wait for them. The mutex is this call's: it was not held before (unlocking a
        # lock not taken does nothing).
        if mutex._is_owned():
            self._owner = get_ident()
            self.release()

    def release(self) -> None:
        """Release the lock taken by :meth:`acquire`. Never raises.

        If the OS refuses to unlock, the descriptor is closed instead, which releases the lock
        just as well; raising would report a failed append for records already written.
        """
        try:
            if self._fd is not None:
                try:
                    if fcntl is None:  # pragma: no cover - Windows
                        unlock_descriptor(self._fd)
                    else:
                        fcntl.flock(self._fd, _UNLOCK)
                except OSError:
                    self._close()
        finally:
            self._owner = None
            self._mutex.release()

    def release_again(self) -> None:
        """:meth:`release` once more if the lock is still held: for a caller whose release an
        exception stopped at the door (a signal's handler raising as it was called)."""
        if self._owner == get_ident():  # not another thread's, taken since the release
            self.release()

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)

    @property
    def mutex(self) -> AbstractContextManager[bool]:
        """The thread mutex that :meth:`acquire` takes first, as a context manager; hold it to
        use state it guards.

        It is the RLock itself, whose ``__enter__`` and ``__exit__`` are C: a Python one (a
        generator's, or a class's) has points where a signal's handler raising (Ctrl-C) leaves
        the mutex taken and nothing to let go of it, and every other thread's append waits.

        :raises LockReentered: if this thread holds it already.
        """
        return self._refuse_reentry()  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the lock file's descriptor (the mutex must be held); it is reopened on demand."""
        self._close()

    def is_current(self) -> bool:
        """Whether the lock file held open is still the file at the path (the mutex must be
        held): not moved away, removed or replaced. One ``lstat``.
        """
        try:
            status = os.lstat(self.path)
        except OSError:
            return False
        return self._fd is not None and (status.st_dev, status.st_ino) == self._ident

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _open(self) -> int:
        if self._fd is None:
            try:
                self._fd = self._open_path()
            except _MISSING:
                self._make_parent()  # raises LedgerIOError naming the directory it could not make
                try:
                    self._fd = self._open_path()
                except _MISSING as error:
                    raise LedgerIOError.wrap(self.path, "open the lock file", error) from error
        return self._fd

    def _open_path(self) -> int:
        action = "open the lock file"
        try:
            fd, status = open_regular(
                self.path, _OPEN_FLAGS, action, passthrough=(*_MISSING, PermissionError)
            )
        except PermissionError:
            # A lock file another user created and we may not write: flock needs no write
            # access, so lock it read-only, as everyone else does.
            fd, status = open_regular(self.path, _READ_ONLY_FLAGS, action, passthrough=_MISSING)
        self._ident = (status.st_dev, status.st_ino)
        return fd

    def _try_lock(self, fd: int) -> bool:
        try:
            if fcntl is None:  # pragma: no cover - Windows
                return lock_descriptor(fd, blocking=False)
            fcntl.flock(fd, _TRY_EXCLUSIVE)
            return True
        except OSError as error:
            if error.errno in _HELD:
                return False
            raise self._cannot_lock(error) from error

    def _wait(self, fd: int, deadline: float | None, timeout: float | None) -> None:
        if deadline is None:
            self._refuse_waiting_for_ourselves()
        elif timeout == 0:
            raise LockTimeout(self.path, 0.0)
        for _ in range(_SPINS):
            if self._try_lock(fd):
                return
        delay, naps = _FIRST_POLL, 0
        while True:
            if deadline is None:
                if naps == self._naps and fcntl is not None:
                    self._block(fd)
                    return
                naps += 1
                self._sleep(delay)
            else:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise LockTimeout(self.path, timeout or 0.0)
                self._sleep(min(delay, remaining))
            if self._try_lock(fd):
                return
            delay = min(delay * 2, _LAST_POLL)

    def _block(self, fd: int) -> None:
        # The primitive filelock uses on POSIX, blocking: the kernel wakes us the moment the
        # holder releases.
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as error:
            raise self._cannot_lock(error) from error

    def _cannot_lock(self, error: OSError) -> LedgerIOError:
        # flock failed for another reason than a holder: give the descriptor up, name the path.
        self._close()
        return LedgerIOError.wrap(self.path, "lock the lock file", error)

    def _refuse_waiting_for_ourselves(self) -> None:
        # Another object of this process on the same lock file, held by this very thread further
        # up the stack (a signal handler appending through a second ledger object): the OS lock
        # excludes it like any other holder, and waiting for ever would wait for ourselves.
        me = get_ident()
        for other in _live_locks():
            held = other._owner == me and other._fd is not None and other._ident == self._ident
            if held and other is not self:
                self._close()
                raise LockReentered(self.path)


def deadline_after(now: float, timeout: float | None) -> float | None:
    """The deadline of a ``lock_timeout`` that starts ``now``; ``None`` for one that waits as
    long as it takes: ``None``, or longer than threading's waits allow (``math.inf``, or an
    ``int`` past any ``float``, which no deadline could hold).
    """
    return None if timeout is None or timeout >= _FOREVER else now + timeout


class StaleLock(Exception):
    """Raised under the lock when the lock file held is no longer the one at its path."""


def check_timeout(_: object, __: object, value: float | None) -> None:
    """Check a ``lock_timeout`` (an attrs validator): ``None`` or a number of seconds >= 0.

    :raises TypeError: if it is neither ``None`` nor an ``int`` or ``float`` (a ``bool`` is not).
    :raises ValueError: if it is negative or NaN.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"lock_timeout must be None or a number of seconds, not {value!r}")
    if not value >= 0:  # NaN too
        raise ValueError(f"lock_timeout must be None or >= 0, not {value!r}")
