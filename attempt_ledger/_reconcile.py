"""Waiting for a ledger to reach a seq: a blocking poll loop with a monotonic deadline."""

from __future__ import annotations

import time
from collections.abc import Callable

from ._records import ReconcileSummary

# Sleeps of a float interval do not add up to the float deadline exactly; a nanosecond short
# of it is there.
_EPSILON = 1e-9


def reconcile(
    read_seq: Callable[[], int],
    expected_min_seq: int,
    max_wait_ms: int,
    poll_interval_ms: int,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ReconcileSummary:
    """Call ``read_seq`` until it returns at least ``expected_min_seq`` or ``max_wait_ms`` pass.

    ``expected_min_seq`` 0 means 1; the poll interval is at least 1 ms; the ledger is read at least
    once, and each sleep is the smaller of the interval and the time left, so the loop never
    overshoots its deadline by more than one read.

    :param clock: monotonic seconds; replace it (with ``sleep``) to test without waiting.
    :raises OSError: if reading the ledger fails.
    """
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
        if found or remaining <= _EPSILON:
            return ReconcileSummary(found, last_seq, round((now - start) * 1000), attempts)
        sleep(min(poll, remaining))
