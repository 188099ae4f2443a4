from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from attempt_ledger import AttemptLedger, ReceiptEvent, receipts_path, reconcile_receipts
from attempt_ledger._errors import LedgerIOError
from attempt_ledger._reconcile import (
    Chunks,
    areconcile,
    check_follow,
    check_number,
    follow,
    follow_with,
    reconcile,
    start_offset,
)
from attempt_ledger._records import ReceiptRecord, ReconcileSummary
from attempt_ledger._watch import AsyncWaiter


class FakeClock:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self, on_sleep: object = None) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if callable(self.on_sleep):
            self.on_sleep()


def test_seed_reconcile_waits_for_delayed_append(root: Path) -> None:
    ledger = AttemptLedger(root, "automation-v2-run-456", "generate_report")
    # The append happens while reconcile waits, after its first read saw nothing.
    clock = FakeClock(lambda: ledger.append(1, "session-456", [ReceiptEvent("attempt_summary")]))
    summary = ledger.reconcile(1, 500, 20, clock=clock, sleep=clock.sleep)
    assert summary.found
    assert summary.last_seq >= 1
    assert summary.attempts == 2
    assert summary.elapsed_ms == 20


def test_seed_reconcile_times_out_when_missing(root: Path) -> None:
    path = receipts_path(root, "automation-v2-run-789", "research_sources")
    clock = FakeClock()
    summary = reconcile(lambda: 0, 1, 120, 30, clock=clock, sleep=clock.sleep)
    assert not summary.found
    assert summary.last_seq == 0
    assert summary.attempts == 5  # reads at 0, 30, 60, 90, 120 ms
    assert clock.sleeps == pytest.approx([0.03] * 4)
    assert summary.elapsed_ms == 120
    real = reconcile_receipts(path, 1, 0, 30)
    assert (real.found, real.last_seq, real.attempts) == (False, 0, 1)


def test_seed_reconcile_ignores_malformed_jsonl(root: Path) -> None:
    ledger = AttemptLedger(root, "automation-v2-run-999", "notify_user")
    ledger.path.parent.mkdir(parents=True)
    ledger.path.write_bytes(b"not-json\n")
    clock = FakeClock(lambda: ledger.append(1, "session-999", [ReceiptEvent("validation")]))
    summary = ledger.reconcile(1, 500, 25, clock=clock, sleep=clock.sleep)
    assert summary.found
    assert summary.last_seq == 1


def test_zero_min_seq_means_one_and_poll_is_at_least_one_ms() -> None:
    clock = FakeClock()
    summary = reconcile(lambda: 0, 0, 5, 0, clock=clock, sleep=clock.sleep)
    assert not summary.found
    assert clock.sleeps == pytest.approx([0.001] * 5)
    assert reconcile(lambda: 1, 0, 5, 0, clock=clock, sleep=clock.sleep).found


def test_last_sleep_is_cut_to_the_deadline() -> None:
    clock = FakeClock()
    summary = reconcile(lambda: 3, 4, 50, 20, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == pytest.approx([0.02, 0.02, 0.01])
    assert (summary.found, summary.last_seq, summary.attempts) == (False, 3, 4)


def test_found_on_first_read_never_sleeps() -> None:
    clock = FakeClock()
    summary = reconcile(lambda: 9, 5, 1000, 10, clock=clock, sleep=clock.sleep)
    assert (summary.found, summary.last_seq, summary.attempts, summary.elapsed_ms) == (
        True,
        9,
        1,
        0,
    )
    assert clock.sleeps == []


def test_reconcile_receipts_reads_the_file(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", [ReceiptEvent("e")] * 3)
    summary = reconcile_receipts(ledger.path, 3, 0, 1)
    assert (summary.found, summary.last_seq, summary.attempts) == (True, 3, 1)


@pytest.mark.parametrize("field", ["expected_min_seq", "max_wait_ms", "poll_interval_ms"])
def test_nan_and_wrong_types_are_refused_instead_of_waiting_for_ever(field: str) -> None:
    # A NaN deadline never passes (every comparison is False): the loop polled for ever.
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        assert len(clock.sleeps) < 100, "reconcile kept polling past any deadline"

    arguments = {"expected_min_seq": 5, "max_wait_ms": 50, "poll_interval_ms": 10}
    for bad, error in ((float("nan"), ValueError), ("10", TypeError), (True, TypeError)):
        call = {**arguments, field: bad}
        with pytest.raises(error, match=field):
            reconcile(lambda: 0, **call, clock=clock, sleep=sleep)  # type: ignore[arg-type]
    assert clock.sleeps == []


# Pinned by the mutation run over _reconcile (CONTRIBUTING.md, "Mutation testing").


def test_a_negative_wait_reads_once_and_never_sleeps() -> None:
    clock = FakeClock()
    summary = reconcile(lambda: 0, 1, -50, 10, clock=clock, sleep=clock.sleep)
    assert (summary.found, summary.attempts, summary.elapsed_ms) == (False, 1, 0)
    assert clock.sleeps == []


def _follow_nothing(
    clock: FakeClock, *, poll_interval: float, timeout: float | None, stop: object = None
) -> list[object]:
    return list(
        follow_with(
            lambda _last: [],
            0,
            poll_interval=poll_interval,
            stop=stop,  # type: ignore[arg-type]
            timeout=timeout,
            clock=clock,
            sleep=clock.sleep,
        )
    )


def test_follow_waits_while_half_a_millisecond_or_more_is_left() -> None:
    clock = FakeClock()
    clock.now = 0.0  # exact sums: 0.0 + 0.0005 - 0.0 is 0.0005
    assert _follow_nothing(clock, poll_interval=1.0, timeout=0.0005) == []
    assert clock.sleeps == [0.0005]
    clock = FakeClock()
    clock.now = 0.0
    assert _follow_nothing(clock, poll_interval=1.0, timeout=0.00049) == []
    assert clock.sleeps == []


def test_follow_polls_in_whole_milliseconds_of_at_least_one() -> None:
    for interval, poll in ((0.0001, 0.001), (0.0123, 0.012), (0.0127, 0.013)):
        clock = FakeClock()
        _follow_nothing(clock, poll_interval=interval, timeout=0.05)
        assert clock.sleeps[0] == poll
        assert sum(clock.sleeps) == pytest.approx(0.05)


def test_follow_without_a_timeout_waits_at_most_an_hour_at_a_time() -> None:
    stop = threading.Event()
    clock = FakeClock(stop.set)  # ends the follow after its first wait
    assert _follow_nothing(clock, poll_interval=5000.0, timeout=None, stop=stop) == []
    assert clock.sleeps == [3600.0]


def test_chunks_fetch_a_bounded_number_of_records_at_a_time() -> None:
    opened: list[int] = []

    def open_(last: int) -> Iterator[int]:
        opened.append(last)
        return iter(range(300))  # more than a chunk: a fetch must not read it all

    chunks = Chunks(open_)  # type: ignore[arg-type]
    assert chunks(7) == list(range(256))
    assert chunks(9) == list(range(256, 300))
    assert opened == [7]  # one iterator until a fetch comes back empty
    ends = Chunks(lambda last: iter(range(last, 3)))  # type: ignore[arg-type]
    assert ends(0) == [0, 1, 2]
    assert ends(0) == []
    assert ends(1) == [1, 2]  # reopened after the empty fetch


def test_argument_errors_name_the_argument_the_kinds_and_the_value() -> None:
    with pytest.raises(TypeError, match=r"^poll must be int or float, not '1'$"):
        check_number("poll", "1")
    with pytest.raises(TypeError, match=r"^seq must be int, not 0\.5$"):
        check_number("seq", 0.5, (int,))
    with pytest.raises(ValueError, match=r"^poll must be a number, not NaN$"):
        check_number("poll", float("nan"))
    with pytest.raises(TypeError, match=r"^stop must be a threading\.Event or None, not 1$"):
        check_follow(0, 1.0, None, 1)
    check_follow(0, 1, 2.5, threading.Event())


def test_start_offset_is_the_end_only_of_a_file_ending_in_a_newline(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    assert start_offset(path, 0) == 0  # missing
    path.write_bytes(b"")
    assert start_offset(path, 0) == 0
    path.write_bytes(b"\n")
    assert start_offset(path, 0) == 1
    path.write_bytes(b"x\n\n")
    assert start_offset(path, 0) == 3
    path.write_bytes(b"\nx")
    assert start_offset(path, 0) == 0


def test_reconcile_stops_when_no_more_than_a_nanosecond_is_left() -> None:
    # A clock read at 1e-9 then 0.0: with max_wait_ms 0, exactly 1e-9 s is left after the read.
    times = iter([1e-9, 0.0])
    sleeps: list[float] = []
    summary = reconcile(lambda: 0, 1, 0, 10, clock=lambda: next(times, 1.0), sleep=sleeps.append)
    assert (summary.found, summary.attempts) == (False, 1)
    assert sleeps == []


def test_elapsed_ms_counts_milliseconds() -> None:
    clock = FakeClock()
    clock.now = 0.0
    summary = reconcile(lambda: 0, 1, 1000, 250, clock=clock, sleep=clock.sleep)
    assert (summary.attempts, summary.elapsed_ms) == (5, 1000)


def test_argument_errors_name_the_argument_exactly() -> None:
    bad = {"expected_min_seq": 5, "max_wait_ms": 50, "poll_interval_ms": 10}
    for field in bad:
        with pytest.raises(TypeError, match=rf"^{field} must be int or float, not '1'$"):
            reconcile(lambda: 0, **{**bad, field: "1"})  # type: ignore[arg-type]
    good: dict[str, object] = {"since_seq": 0, "poll_interval": 1.0, "timeout": None}
    for field, kinds in (("since_seq", "int"), ("poll_interval", "int or float")):
        with pytest.raises(TypeError, match=rf"^{field} must be {kinds}, not 0\.5j$"):
            check_follow(**{**good, field: 0.5j, "stop": None})
    with pytest.raises(TypeError, match=r"^since_seq must be int, not 0\.5$"):
        check_follow(0.5, 1.0, None, None)
    with pytest.raises(TypeError, match=r"^timeout must be int or float, not '1'$"):
        check_follow(0, 1.0, "1", None)


def test_setting_stop_cuts_a_reconcile_wait_short() -> None:
    from .test_follow import _WaitSpy  # imported here: test_follow imports this module

    stop = _WaitSpy()
    summaries: list[ReconcileSummary] = []
    waiter = threading.Thread(
        target=lambda: summaries.append(reconcile(lambda: 0, 1, 3_600_000, 3_600_000, stop=stop)),
        daemon=True,  # a regression must fail the test, not hang the run
    )
    waiter.start()
    try:
        assert stop.waiting.wait(30), "reconcile never waited on stop"
        stop.set()
        waiter.join(30)  # far less than the hour-long poll interval
        assert not waiter.is_alive(), "stop did not cut the wait short"
    finally:
        stop.set()
        waiter.join(30)
    [summary] = summaries
    assert (summary.found, summary.attempts) == (False, 2)  # read, wait cut short, read


def test_areconcile_returns_once_its_waiters_stop_is_set() -> None:
    async def main() -> ReconcileSummary:
        stop = asyncio.Event()
        stop.set()

        async def read_seq() -> int:
            return 0

        return await areconcile(read_seq, 1, 200, 10, AsyncWaiter(stop))

    summary = asyncio.run(main())
    assert (summary.found, summary.attempts) == (False, 1)


def test_follow_checks_its_arguments_on_the_call_and_polls_every_50_ms(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with pytest.raises(TypeError, match=r"^timeout must be int or float, not '1'$"):
        follow(path, timeout="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^stop must be a threading\.Event or None, not 1$"):
        follow(path, stop=1)  # type: ignore[arg-type]
    clock = FakeClock()
    assert list(follow(path, timeout=0.2, clock=clock, sleep=clock.sleep)) == []
    assert clock.sleeps == pytest.approx([0.05] * 4)


def test_a_second_long_poll_is_a_thousand_milliseconds() -> None:
    clock = FakeClock()
    clock.now = 0.0
    _follow_nothing(clock, poll_interval=1.0, timeout=1.5)
    assert clock.sleeps == [1.0, 0.5]


def test_follow_with_asks_for_the_records_past_the_last_seq_yielded() -> None:
    asked: list[int] = []

    def read_after(last: int) -> list[ReceiptRecord]:
        asked.append(last)
        return []

    clock = FakeClock()
    followed = follow_with(
        read_after,
        5,
        poll_interval=1,
        stop=None,
        timeout=0,
        clock=clock,
        sleep=clock.sleep,
    )
    assert list(followed) == []
    assert asked == [5]


def test_follow_starts_after_seq_0_by_default(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", [ReceiptEvent("e")] * 2)
    clock = FakeClock()
    assert [r.seq for r in follow(ledger.path, timeout=0, clock=clock, sleep=clock.sleep)] == [1, 2]


def test_start_offset_names_the_path_and_the_cause_of_a_failed_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b"x\n")
    failure = OSError(errno.EIO, os.strerror(errno.EIO))

    def pread(fd: int, n: int, offset: int) -> bytes:
        raise failure

    monkeypatch.setattr(os, "pread", pread)
    with pytest.raises(LedgerIOError) as caught:
        start_offset(path, 0)
    assert caught.value.path == path
    assert caught.value.reason == f"cannot read the ledger: {os.strerror(errno.EIO)}"
    assert caught.value.errno == errno.EIO
    assert caught.value.__cause__ is failure
