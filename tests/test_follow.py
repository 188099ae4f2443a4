"""follow(), expected_last_seq and iter_ledgers: the additions for workers and tools."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import attempt_ledger._reconcile as reconcile_module
from attempt_ledger import (
    AttemptLedger,
    ReceiptEvent,
    SeqConflict,
    iter_ledgers,
)
from attempt_ledger._reconcile import reconcile

from .test_reconcile import FakeClock

EV = [ReceiptEvent("e")]


def test_follow_yields_existing_then_new_records(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV * 3)
    appended = []

    def on_sleep() -> None:  # the ledger grows while follow waits
        if len(appended) < 2:
            appended.append(ledger.append(1, "s", EV).seq)

    clock = FakeClock(on_sleep)
    seqs = [
        r.seq
        for r in ledger.follow(
            since_seq=1, poll_interval=0.01, timeout=1.0, clock=clock, sleep=clock.sleep
        )
    ]
    assert seqs == [2, 3, 4, 5]
    assert appended == [4, 5]


def test_follow_skips_junk_and_survives_a_torn_line(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV)
    with ledger.path.open("ab") as f:
        f.write(b"junk\n" + b'{"version":1')  # a torn line, sealed by the next append
    steps = iter([lambda: ledger.append(1, "s", EV * 2)])

    def on_sleep() -> None:
        next(steps, lambda: None)()

    clock = FakeClock(on_sleep)
    seqs = [r.seq for r in ledger.follow(timeout=0.5, clock=clock, sleep=clock.sleep)]
    assert seqs == [1, 2, 3]


def test_following_from_the_last_seq_skips_reading_the_old_records(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV * 5)
    size = ledger.path.stat().st_size
    offsets: list[int] = []
    real = reconcile_module.iter_decoded

    def spy(path: Path, offset: int = 0) -> object:
        offsets.append(offset)
        return real(path, offset)

    monkeypatch.setattr(reconcile_module, "iter_decoded", spy)
    clock = FakeClock(lambda: ledger.append(1, "s", EV) if len(offsets) == 1 else None)
    seqs = [r.seq for r in ledger.follow(since_seq=5, timeout=0.2, clock=clock, sleep=clock.sleep)]
    assert seqs == [6]
    assert offsets[0] == size
    # Behind the last seq, or with a torn last line, it reads from the front.
    offsets.clear()
    list(ledger.follow(since_seq=3, timeout=0, clock=clock, sleep=clock.sleep))
    with ledger.path.open("ab") as f:
        f.write(b"torn")
    list(ledger.follow(since_seq=6, timeout=0, clock=clock, sleep=clock.sleep))
    assert offsets == [0, 0]


def test_follow_stops_when_the_event_is_set(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV)
    stop = threading.Event()
    seen = []
    for record in ledger.follow(stop=stop, poll_interval=60):
        seen.append(record.seq)
        stop.set()  # a long poll interval: only the event can end the wait promptly
    assert seen == [1]


def test_follow_of_a_missing_ledger_times_out_empty(root: Path) -> None:
    clock = FakeClock()
    ledger = AttemptLedger(root, "r", "n")
    assert list(ledger.follow(timeout=0.2, clock=clock, sleep=clock.sleep)) == []
    assert sum(clock.sleeps) == pytest.approx(0.2)


def test_reconcile_returns_when_stopped() -> None:
    stop = threading.Event()
    stop.set()
    summary = reconcile(lambda: 0, 5, 60_000, 10, stop=stop)
    assert (summary.found, summary.attempts) == (False, 1)


def test_expected_last_seq(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    assert ledger.append(1, "s", EV, expected_last_seq=0).seq == 1
    before = ledger.path.read_bytes()
    with pytest.raises(SeqConflict) as info:
        ledger.append(1, "s", EV, expected_last_seq=0)
    assert (info.value.expected, info.value.actual, info.value.path) == (0, 1, ledger.path)
    assert ledger.path.read_bytes() == before
    assert ledger.append(1, "s", EV * 2, expected_last_seq=1).seq == 3
    with pytest.raises(SeqConflict):
        ledger.append(1, "s", [], expected_last_seq=2)


def test_expected_last_seq_counts_a_sealed_record_and_writes_nothing_on_conflict(
    root: Path,
) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV * 2)
    ledger.path.write_bytes(ledger.path.read_bytes()[:-1])  # seq 2 lost its "\n"
    before = ledger.path.read_bytes()
    with pytest.raises(SeqConflict) as info:
        ledger.append(1, "s", EV, expected_last_seq=1)
    assert info.value.actual == 2
    assert ledger.path.read_bytes() == before  # not even the seal
    assert ledger.append(1, "s", EV, expected_last_seq=2).seq == 3


def test_racing_workers_with_expected_last_seq_never_both_win(root: Path) -> None:
    barrier = threading.Barrier(8)
    wins: list[int] = []
    conflicts: list[int] = []

    def worker(n: int) -> None:
        ledger = AttemptLedger(root, "r", "n")
        barrier.wait(timeout=30)
        try:
            ledger.append(n, "s", EV, expected_last_seq=0)
            wins.append(n)
        except SeqConflict as error:
            conflicts.append(error.actual)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(wins) == 1
    assert conflicts == [1] * 7


def test_iter_ledgers(root: Path) -> None:
    assert list(iter_ledgers(root)) == []
    for run, node in [("b", "y"), ("a", "z"), ("a", "x"), ("run/1", "n:1")]:
        AttemptLedger(root, run, node).append(1, "s", EV)
    (root / "a" / "notes.txt").write_text("not a ledger")
    (root / "stray-file").write_text("not a run")
    assert [(run, node) for run, node, _ in iter_ledgers(root)] == [
        ("a", "x"),
        ("a", "z"),
        ("b", "y"),
        ("run-1", "n-1"),
    ]
    assert all(path.is_file() for _, _, path in iter_ledgers(root))


def test_follow_yields_a_final_record_that_lost_its_newline_then_what_comes_after(
    root: Path,
) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV * 3)
    ledger.path.write_bytes(ledger.path.read_bytes()[:-1])  # a crash took seq 3's newline
    clock = FakeClock()
    followed = ledger.follow(poll_interval=0.01, timeout=5, clock=clock, sleep=clock.sleep)
    assert [next(followed).seq for _ in range(3)] == [1, 2, 3]
    ledger.append(1, "s", EV)  # seals seq 3's line, then writes seq 4
    assert next(followed).seq == 4
    followed.close()


def test_follow_restarts_from_the_front_of_a_ledger_replaced_by_a_shorter_one(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV * 10)
    other = AttemptLedger(root / "other", "r", "n")
    other.append(1, "s", EV * 12)
    shorter = other.path.read_bytes().split(b"\n")[10:]  # seqs 11 and 12 only
    # A real clock: a reader stuck past the end would spin without sleeping, until the timeout.
    followed = ledger.follow(poll_interval=0.01, timeout=5)
    assert [next(followed).seq for _ in range(10)] == list(range(1, 11))
    replacement = ledger.path.with_name("replacement")
    replacement.write_bytes(b"\n".join(shorter))
    assert replacement.stat().st_size < ledger.path.stat().st_size
    replacement.replace(ledger.path)
    assert [next(followed).seq for _ in range(2)] == [11, 12]
    followed.close()


class _WaitSpy(threading.Event):
    """An event that says when someone starts waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)

    def is_set(self) -> bool:  # a wait on inotify looks at the event between slices
        self.waiting.set()
        return super().is_set()


def test_setting_stop_cuts_a_long_wait_short(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV)
    stop = _WaitSpy()
    seen: list[int] = []
    follower = threading.Thread(
        target=lambda: seen.extend(r.seq for r in ledger.follow(stop=stop, poll_interval=3600)),
        daemon=True,  # a regression must fail the test, not hang the run
    )
    follower.start()
    try:
        assert stop.waiting.wait(30), "follow never waited"
        stop.set()
        follower.join(30)  # far less than the hour-long poll interval
        assert not follower.is_alive(), "stop did not cut the wait short"
    finally:
        stop.set()
        follower.join(30)
    assert seen == [1]


def test_a_record_appended_while_follow_takes_its_start_is_not_skipped(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # follow takes the file's size before the last seq: an append between the two is read.
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV * 3)
    real = reconcile_module.read_last_seq
    calls = []

    def last_seq_then_append(path: Path) -> int:
        seq = real(path)
        calls.append(seq)
        if len(calls) == 1:
            ledger.append(1, "s", EV)  # lands after the seq was read
        return seq

    monkeypatch.setattr(reconcile_module, "read_last_seq", last_seq_then_append)
    clock = FakeClock()
    followed = ledger.follow(
        since_seq=3, poll_interval=0.01, timeout=5, clock=clock, sleep=clock.sleep
    )
    assert next(followed).seq == 4
    followed.close()


def test_follow_refuses_arguments_of_the_wrong_kind_as_postgres_does(root: Path) -> None:
    # stop=1 raised AttributeError, a NaN poll "cannot convert float NaN to integer" only once
    # the records were read; PostgresLedger.follow refuses them all with TypeError up front.
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", [ReceiptEvent("a")])
    nan = float("nan")
    for bad, error in (
        ({"since_seq": "0"}, TypeError),
        ({"since_seq": 0.5}, TypeError),
        ({"since_seq": True}, TypeError),
        ({"poll_interval": "1"}, TypeError),
        ({"poll_interval": nan}, ValueError),
        ({"timeout": "1"}, TypeError),
        ({"timeout": nan}, ValueError),
        ({"stop": 1}, TypeError),
    ):
        with pytest.raises(error, match=next(iter(bad))):
            ledger.follow(**bad)  # type: ignore[arg-type]
