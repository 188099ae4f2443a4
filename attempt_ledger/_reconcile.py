"""Waiting for a ledger to reach a seq (a loop with a monotonic deadline), and following a
ledger as it grows: for threads and for asyncio alike.

The loops are written once, as generators that say what they need next (read the last seq,
fetch records, wait) and never do I/O themselves. A driver serves them: :func:`_drive` with
blocking calls, :func:`_adrive` with awaits. Each wait is a :class:`Waiter`'s: for a file
ledger on Linux, an inotify ticket armed *before* each read (a change after the read wakes the
wait at once); otherwise, or when the kernel refuses the watch, a plain sleep of the poll
interval, which stays as the safety net in every case.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
)
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from ._errors import LedgerIOError
from ._reader import iter_decoded, open_ledger, read_last_seq
from ._records import ReceiptRecord, ReconcileSummary
from ._watch import AsyncWaiter, Waiter

# Sleeps of a float interval do not add up to the float deadline exactly; a nanosecond short
# of it is there.
_EPSILON = 1e-9
# Records fetched per step: an async driver lets its loop run between two fetches.
_CHUNK = 256


class _Read(NamedTuple):
    """Read the last seq (after arming the wake-up)."""


class _Arm(NamedTuple):
    """Arm the wake-up (before a read)."""


class _Wait(NamedTuple):
    seconds: float


class _Fetch(NamedTuple):
    """The next records past ``last``; ``[]`` once caught up."""

    last: int


_READ = _Read()
_ARM = _Arm()
T = TypeVar("T")
Steps = Generator[Any, Any, Any]


def _reconcile_steps(
    expected_min_seq: int,
    max_wait_ms: int,
    poll_interval_ms: int,
    clock: Callable[[], float],
    stopped: Callable[[], bool],
) -> Generator[Any, Any, ReconcileSummary]:
    start = clock()
    target = max(expected_min_seq, 1)
    poll = max(poll_interval_ms, 1) / 1000
    deadline = start + max(max_wait_ms, 0) / 1000
    attempts = 0
    while True:
        attempts += 1
        last_seq = yield _READ
        now = clock()
        found = last_seq >= target
        remaining = deadline - now
        if found or stopped() or remaining <= _EPSILON:
            return ReconcileSummary(found, last_seq, round((now - start) * 1000), attempts)
        yield _Wait(min(poll, remaining))


def _follow_steps(
    since_seq: int,
    poll_interval: float,
    timeout: float | None,
    clock: Callable[[], float],
    stopped: Callable[[], bool],
) -> Generator[Any, Any, None]:
    deadline = None if timeout is None else clock() + timeout
    poll = max(1, round(poll_interval * 1000)) / 1000  # whole milliseconds, as reconcile's
    last = since_seq
    while True:
        # Armed before reading, so that whatever lands after the read ends the wait; reading
        # the records is the check (no separate read of the last seq).
        yield _ARM
        while chunk := (yield _Fetch(last)):
            for record in chunk:
                if record.seq > last:
                    last = record.seq
                    yield record  # the driver hands it to the consumer
        remaining = 3600.0 if deadline is None else deadline - clock()
        # Waits count whole milliseconds: less than half of one left is none.
        if stopped() or remaining < 0.0005:
            return
        yield _Wait(min(poll, remaining))


def _stopped(stop: threading.Event | asyncio.Event | None) -> Callable[[], bool]:
    return (lambda: False) if stop is None else stop.is_set


def _drive(
    steps: Steps, read_seq: Callable[[], int], fetch: Callable[[int], list[Any]], waiter: Waiter
) -> Iterator[Any]:
    """Serve ``steps`` with blocking calls: :func:`_adrive`, run without a loop. Every await
    in it is then a blocking call that returns without suspending, so each step of the async
    generator completes in one ``send``."""
    served = _adrive(steps, _blocking(read_seq), _blocking(fetch), waiter)
    try:
        while True:
            try:
                served.__anext__().send(None)
            except StopIteration as step:
                yield step.value
            except StopAsyncIteration:
                return
    finally:
        with contextlib.suppress(StopIteration):
            served.aclose().send(None)


def _blocking(call: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    async def awaitable(*args: Any) -> T:
        return call(*args)

    return awaitable


async def _adrive(
    steps: Steps,
    read_seq: Callable[[], Awaitable[int]],
    fetch: Callable[[int], Awaitable[list[Any]]],
    waiter: Waiter | AsyncWaiter,
) -> AsyncGenerator[Any, None]:
    """Serve ``steps``: yield what they emit, then what they return."""
    reply: Any = None
    try:
        while True:
            try:
                step = steps.send(reply)
            except StopIteration as done:
                if done.value is not None:
                    yield done.value
                return
            reply = None
            if step is _READ:
                waiter.arm()
                reply = await read_seq()
            elif step is _ARM:
                waiter.arm()
            elif type(step) is _Wait:
                await waiter.wait(step.seconds)
            elif type(step) is _Fetch:
                reply = await fetch(step.last)
            else:
                yield step
    finally:
        waiter.disarm()
        steps.close()


class Chunks:
    """Fetches records in chunks from the iterator ``open_(last)`` returns, opened on the
    first fetch after a caught-up one."""

    def __init__(self, open_: Callable[[int], Iterable[ReceiptRecord]]) -> None:
        self._open = open_
        self._it: Iterator[ReceiptRecord] | None = None

    def __call__(self, last: int) -> list[ReceiptRecord]:
        if self._it is None:
            self._it = iter(self._open(last))
        chunk = list(islice(self._it, _CHUNK))
        if not chunk:
            self._it = None
        return chunk


def check_number(name: str, value: object, kinds: tuple[type, ...] = (int, float)) -> None:
    """Check an argument of the waiting loops before any I/O: a number of ``kinds``.

    :raises TypeError: if ``value`` is not one (a ``bool`` is not).
    :raises ValueError: if it is NaN (a NaN deadline never passes: every comparison is False).
    """
    if isinstance(value, bool) or not isinstance(value, kinds):
        wanted = " or ".join(kind.__name__ for kind in kinds)
        raise TypeError(f"{name} must be {wanted}, not {value!r}")
    if value != value:
        raise ValueError(f"{name} must be a number, not NaN")


def _check_reconcile(
    expected_min_seq: object, max_wait_ms: object, poll_interval_ms: object
) -> None:
    check_number("expected_min_seq", expected_min_seq)
    check_number("max_wait_ms", max_wait_ms)
    check_number("poll_interval_ms", poll_interval_ms)


def check_follow(since_seq: object, poll_interval: object, timeout: object, stop: object) -> None:
    """Check ``follow``'s arguments before any I/O.

    :raises TypeError: if one is of the wrong kind.
    :raises ValueError: if a number is NaN.
    """
    check_number("since_seq", since_seq, (int,))
    check_number("poll_interval", poll_interval)
    if timeout is not None:
        check_number("timeout", timeout)
    if stop is not None and not callable(getattr(stop, "is_set", None)):
        raise TypeError(f"stop must be a threading.Event or None, not {stop!r}")


def reconcile(
    read_seq: Callable[[], int],
    expected_min_seq: int,
    max_wait_ms: int,
    poll_interval_ms: int,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    stop: threading.Event | None = None,
    watch: Path | None = None,
) -> ReconcileSummary:
    """Call ``read_seq`` until it returns at least ``expected_min_seq`` or ``max_wait_ms`` pass.

    ``expected_min_seq`` 0 means 1; the poll interval is at least 1 ms; the ledger is read at least
    once, and each sleep is the smaller of the interval and the time left, so the loop never
    overshoots its deadline by more than one read.

    :param clock: monotonic seconds; replace it (with ``sleep``) to test without waiting.
    :param stop: when set, the loop returns (not found) at once, even mid-sleep when ``sleep``
        is the default.
    :param watch: the ledger file whose changes end a wait at once (inotify, where available
        and ``sleep`` is the default); the poll interval stays as the safety net.
    :raises OSError: if reading the ledger fails.
    """
    _check_reconcile(expected_min_seq, max_wait_ms, poll_interval_ms)
    steps = _reconcile_steps(expected_min_seq, max_wait_ms, poll_interval_ms, clock, _stopped(stop))
    *_, summary = _drive(steps, read_seq, lambda _: [], Waiter(sleep, stop, watch))
    assert isinstance(summary, ReconcileSummary)
    return summary


async def areconcile(
    read_seq: Callable[[], Awaitable[int]],
    expected_min_seq: int,
    max_wait_ms: int,
    poll_interval_ms: int,
    waiter: AsyncWaiter,
) -> ReconcileSummary:
    """:func:`reconcile`, awaiting ``read_seq`` and the ``waiter``."""
    _check_reconcile(expected_min_seq, max_wait_ms, poll_interval_ms)
    stopped = _stopped(waiter._stop)
    steps = _reconcile_steps(
        expected_min_seq, max_wait_ms, poll_interval_ms, time.monotonic, stopped
    )
    summary = None
    async for summary in _adrive(steps, read_seq, _no_fetch, waiter):  # noqa: B007
        pass
    assert isinstance(summary, ReconcileSummary)
    return summary


def follow(
    path: Path,
    since_seq: int = 0,
    *,
    poll_interval: float = 0.05,
    stop: threading.Event | None = None,
    timeout: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[ReceiptRecord]:
    """Yield the records of the ledger at ``path`` with ``seq > since_seq``, then each new one.

    Between reads it waits with :func:`reconcile` for the seq after the last one yielded,
    woken by inotify where available. It ends when ``stop`` is set or ``timeout`` seconds
    (monotonic) pass without being stopped early by either; ``None`` for both follows until
    the consumer stops iterating.

    :raises TypeError: if an argument is of the wrong kind (as :meth:`PostgresLedger.follow`).
    :raises ValueError: if a number is NaN.
    :raises LedgerIOError: if the ledger exists but cannot be read.
    """
    check_follow(since_seq, poll_interval, timeout, stop)
    return follow_with(
        file_reader(path, since_seq),
        since_seq,
        poll_interval=poll_interval,
        stop=stop,
        timeout=timeout,
        clock=clock,
        sleep=sleep,
        watch=path,
    )


def file_reader(path: Path, since_seq: int) -> Callable[[int], Iterator[ReceiptRecord]]:
    """What follows the file at ``path`` reads: the records past the bytes already read (the
    loop drops the seqs it has yielded), starting at :func:`start_offset`."""
    offset = start_offset(path, since_seq)

    def read_after(_: int) -> Iterator[ReceiptRecord]:
        nonlocal offset
        for record, _line, end in iter_decoded(path, offset):
            offset = end
            if record is not None:
                yield record

    return read_after


def follow_with(
    read_after: Callable[[int], Iterable[ReceiptRecord]],
    since_seq: int,
    *,
    poll_interval: float,
    stop: threading.Event | None,
    timeout: float | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    watch: Path | None = None,
) -> Iterator[ReceiptRecord]:
    """The loop behind every blocking ``follow``: yield what ``read_after(last)`` returns past
    the last seq yielded, then wait (woken by ``watch``'s changes, or ``sleep``) and read
    again. Reading the records is the check: the last seq is never read."""
    steps = _follow_steps(since_seq, poll_interval, timeout, clock, _stopped(stop))
    return _drive(steps, _no_blocking_read, Chunks(read_after), Waiter(sleep, stop, watch))


def afollow_with(
    fetch: Callable[[int], Awaitable[list[ReceiptRecord]]],
    since_seq: int,
    *,
    poll_interval: float,
    timeout: float | None,
    waiter: AsyncWaiter,
) -> AsyncIterator[ReceiptRecord]:
    """:func:`follow_with` for asyncio: ``fetch(last)`` returns the next chunk of records."""
    stopped = _stopped(waiter._stop)
    steps = _follow_steps(since_seq, poll_interval, timeout, time.monotonic, stopped)
    return _adrive(steps, _no_read, fetch, waiter)


async def _no_read() -> int:  # pragma: no cover - follow reads records, not the last seq
    return 0


def _no_blocking_read() -> int:  # pragma: no cover - likewise, for the blocking driver
    return 0


async def _no_fetch(_: int) -> list[Any]:  # pragma: no cover - reconcile fetches nothing
    return []


def start_offset(path: Path, since_seq: int) -> int:
    """Where following from ``since_seq`` starts reading: from the last seq on (``tail -f``)
    a big ledger need not be read from the front."""
    # When nothing in the file is past ``since_seq``, start at its end. The size is taken
    # before the last seq, so a record appended in between is still read; and only a file that
    # ends in a newline qualifies, so reading starts at a line's start.
    fd = open_ledger(path)
    if fd is None:
        return 0
    try:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) != b"\n":
            return 0
    except OSError as error:
        raise LedgerIOError.wrap(path, "read the ledger", error) from error
    finally:
        os.close(fd)
    return size if read_last_seq(path) <= since_seq else 0
