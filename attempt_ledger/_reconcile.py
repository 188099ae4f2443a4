"""Waiting for a ledger to reach a seq (a blocking poll loop with a monotonic deadline), and
following a ledger as it grows."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ._errors import LedgerIOError
from ._reader import iter_decoded, open_ledger, read_last_seq
from ._records import ReceiptRecord, ReconcileSummary

# Sleeps of a float interval do not add up to the float deadline exactly; a nanosecond short
# of it is there.
_EPSILON = 1e-9


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


def reconcile(
    read_seq: Callable[[], int],
    expected_min_seq: int,
    max_wait_ms: int,
    poll_interval_ms: int,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    stop: threading.Event | None = None,
) -> ReconcileSummary:
    """Call ``read_seq`` until it returns at least ``expected_min_seq`` or ``max_wait_ms`` pass.

    ``expected_min_seq`` 0 means 1; the poll interval is at least 1 ms; the ledger is read at least
    once, and each sleep is the smaller of the interval and the time left, so the loop never
    overshoots its deadline by more than one read.

    :param clock: monotonic seconds; replace it (with ``sleep``) to test without waiting.
    :param stop: when set, the loop returns (not found) at once, even mid-sleep when ``sleep``
        is the default.
    :raises TypeError: if a number is not an ``int`` or ``float`` (a ``bool`` neither).
    :raises ValueError: if a number is NaN (a NaN deadline would never pass).
    :raises OSError: if reading the ledger fails.
    """
    check_number("expected_min_seq", expected_min_seq)
    check_number("max_wait_ms", max_wait_ms)
    check_number("poll_interval_ms", poll_interval_ms)
    start = clock()
    target = max(expected_min_seq, 1)
    poll = max(poll_interval_ms, 1) / 1000
    deadline = start + max(max_wait_ms, 0) / 1000
    attempts = 0
    while True:
        attempts += 1
        last_seq = read_seq()
        now = clock()
        found = last_seq >= target
        remaining = deadline - now
        stopped = stop is not None and stop.is_set()
        if found or stopped or remaining <= _EPSILON:
            return ReconcileSummary(found, last_seq, round((now - start) * 1000), attempts)
        if stop is not None and sleep is time.sleep:
            stop.wait(min(poll, remaining))  # set() cuts the sleep short
        else:
            sleep(min(poll, remaining))


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

    Between reads it waits with :func:`reconcile` for the seq after the last one yielded. It
    ends when ``stop`` is set or ``timeout`` seconds (monotonic) pass without being stopped
    early by either; ``None`` for both follows until the consumer stops iterating.

    :raises TypeError: if an argument is of the wrong kind (as :meth:`PostgresLedger.follow`).
    :raises ValueError: if a number is NaN.
    :raises LedgerIOError: if the ledger exists but cannot be read.
    """
    check_number("since_seq", since_seq, (int,))
    check_number("poll_interval", poll_interval)
    if timeout is not None:
        check_number("timeout", timeout)
    if stop is not None and not callable(getattr(stop, "is_set", None)):
        raise TypeError(f"stop must be a threading.Event or None, not {stop!r}")
    offset = _start_offset(path, since_seq)

    def read_after(_: int) -> Iterator[ReceiptRecord]:
        # Records past the bytes already read; ``follow_with`` drops seqs it has yielded.
        nonlocal offset
        for record, _line, end in iter_decoded(path, offset):
            offset = end
            if record is not None:
                yield record

    return follow_with(
        read_after,
        lambda: read_last_seq(path),
        since_seq,
        poll_interval=poll_interval,
        stop=stop,
        timeout=timeout,
        clock=clock,
        sleep=sleep,
    )


def follow_with(
    read_after: Callable[[int], Iterable[ReceiptRecord]],
    read_seq: Callable[[], int],
    since_seq: int,
    *,
    poll_interval: float,
    stop: threading.Event | None,
    timeout: float | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> Iterator[ReceiptRecord]:
    """The loop behind every ``follow``: yield what ``read_after(last)`` returns past the last
    seq yielded, then wait with :func:`reconcile` on ``read_seq`` for the next one."""
    deadline = None if timeout is None else clock() + timeout
    last = since_seq
    while True:
        for record in read_after(last):
            if record.seq > last:
                last = record.seq
                yield record
        remaining = 3600.0 if deadline is None else deadline - clock()
        # Reconcile counts whole milliseconds: less than half of one left is none.
        if (stop is not None and stop.is_set()) or remaining < 0.0005:
            return
        wait_ms = max(1, round(min(remaining, 3600.0) * 1000))
        poll_ms = max(1, round(poll_interval * 1000))
        reconcile(
            read_seq,
            last + 1,
            wait_ms,
            poll_ms,
            clock=clock,
            sleep=sleep,
            stop=stop,
        )


def _start_offset(path: Path, since_seq: int) -> int:
    # Following from the last seq on (``tail -f``) need not read a big ledger from the front:
    # when nothing in the file is past ``since_seq``, start at its end. The size is taken
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
