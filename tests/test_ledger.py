from __future__ import annotations

import errno
import fcntl
import json
import os
import pickle
import threading
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

import attempt_ledger._codec as codec_module
import attempt_ledger._ledger as ledger_module
import attempt_ledger._watch as watch
from attempt_ledger import (
    AttemptLedger,
    DurabilityUnknown,
    InvalidEvent,
    LedgerIOError,
    LockTimeout,
    ReceiptEvent,
    SeqExhausted,
    append_receipts,
    read_last_seq,
    read_receipt_records,
    receipts_path,
)
from attempt_ledger._codec import encode_batch

from .strategies import seq_line
from .test_groupsync import failing_ledger_fsync

EV = [ReceiptEvent("attempt_summary", {"ok": True})]


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def seqs(path: Path) -> list[int]:
    return [r.seq for r in read_receipt_records(path)]


# -- the seed's tests ---------------------------------------------------------------------------


def test_seed_appends_and_increments_seq(root: Path) -> None:
    first = append_receipts(root, "automation-v2-run-123", "research_sources", 1, "session-123", EV)
    assert (first.record_count, first.seq) == (1, 1)
    with first.path.open("ab") as f:
        f.write(b"not-json\n")
    second = append_receipts(
        root,
        "automation-v2-run-123",
        "research_sources",
        2,
        "session-123",
        [ReceiptEvent("validation_summary", {"status": "completed"})],
    )
    assert (second.record_count, second.seq) == (1, 2)


def test_seed_serializes_concurrent_appends(root: Path) -> None:
    barrier = threading.Barrier(3)
    results = []

    def worker(event_type: str) -> None:
        barrier.wait(timeout=10)
        results.append(
            append_receipts(
                root,
                "automation-v2-run-321",
                "notify_user",
                1,
                "session-321",
                [ReceiptEvent(event_type, {"status": "x"})],
            )
        )

    threads = [
        threading.Thread(target=worker, args=(name,))
        for name in ("attempt_summary", "validation_summary")
    ]
    for thread in threads:
        thread.start()
    barrier.wait(timeout=10)
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive()
    assert sorted(r.record_count for r in results) == [1, 1]
    records = read_receipt_records(receipts_path(root, "automation-v2-run-321", "notify_user"))
    assert sorted(r.seq for r in records) == [1, 2]
    assert sorted(r.event_type for r in records) == ["attempt_summary", "validation_summary"]


def test_seed_read_records_returns_timeline_entries(root: Path) -> None:
    summary = append_receipts(
        root,
        "automation-v2-run-456",
        "generate_report",
        3,
        "session-2",
        [
            ReceiptEvent(
                "attempt_summary", {"receipt_kind": "attempt_summary", "status": "blocked"}
            ),
            ReceiptEvent("validation_summary", {"validator_summary": {"outcome": "blocked"}}),
        ],
    )
    assert summary.record_count == 2
    records = read_receipt_records(summary.path)
    assert [(r.seq, r.event_type, r.attempt, r.session_id) for r in records] == [
        (1, "attempt_summary", 3, "session-2"),
        (2, "validation_summary", 3, "session-2"),
    ]


# -- append semantics ---------------------------------------------------------------------------


def test_ids_are_stored_raw_and_event_type_trimmed(root: Path) -> None:
    ledger = AttemptLedger(root, "run/1 é", "node:a")
    ledger.append(7, "sess\n1", [ReceiptEvent("\u3000 start \x1c\u2029", [1])])
    (record,) = ledger.records()
    assert (record.run_id, record.node_id, record.session_id) == ("run/1 é", "node:a", "sess\n1")
    assert record.event_type == "start \x1c"
    assert ledger.path == root / "run-1" / "node-a.jsonl"
    assert "é".encode() in ledger.path.read_bytes()


def test_torn_fragment_is_sealed_not_swallowed(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV)
    with ledger.path.open("ab") as f:
        f.write(b'{"version":1,"run_id":"r","se')  # a crash mid-line
    summary = ledger.append(1, "s", EV)
    assert summary.seq == 2
    assert lines(ledger.path)[1] == b'{"version":1,"run_id":"r","se\n'
    assert seqs(ledger.path) == [1, 2]


def test_record_that_lost_only_its_newline_counts_once(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV * 2)
    data = ledger.path.read_bytes()
    ledger.path.write_bytes(data[:-1])  # seq 2 lost its final "\n"
    assert ledger.last_seq() == 2  # it parses on its own: it counts, for readers too
    assert seqs(ledger.path) == [1, 2]
    assert ledger.append(1, "s", EV).seq == 3
    assert seqs(ledger.path) == [1, 2, 3]


def test_optimistic_append_after_a_lost_newline_does_not_livelock(root: Path) -> None:
    # Readers and the append agree on the last seq, so the README's retry loop progresses.
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV * 7)
    ledger.path.write_bytes(ledger.path.read_bytes()[:-1])
    seen = ledger.last_seq()
    assert seen == read_last_seq(ledger.path) == 7
    assert ledger.append(1, "s", [], expected_last_seq=seen).seq == 7  # empty: same answer
    assert ledger.append(1, "s", EV, expected_last_seq=seen).seq == 8
    assert seqs(ledger.path) == list(range(1, 9))


def test_records_with_seq_zero_are_returned(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.path.parent.mkdir(parents=True)
    zero = json.dumps(
        {
            "version": 1,
            "run_id": "r",
            "node_id": "n",
            "attempt": 0,
            "session_id": "s",
            "seq": 0,
            "ts_ms": 0,
            "event_type": "e",
            "payload": None,
        }
    )
    ledger.path.write_bytes(zero.encode() + b"\n")
    assert [r.seq for r in ledger.records()] == [0]
    assert [r.seq for r in ledger.iter_records()] == [0]
    assert [r.seq for r in ledger.iter_records(since_seq=0)] == []
    assert seqs(ledger.path) == [0]
    assert ledger.append(1, "s", EV).seq == 1


def test_invalid_utf8_does_not_restart_seq(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV * 3)
    with ledger.path.open("ab") as f:
        f.write(b"\xff\xfe\xfd\n")
    assert ledger.append(1, "s", EV).seq == 4


def test_seq_follows_the_last_valid_line_not_the_largest(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.path.parent.mkdir(parents=True)
    ledger.path.write_bytes(seq_line(10) + seq_line(4) + b"junk\n")
    assert ledger.append(1, "s", EV).seq == 5


def test_empty_batch_creates_nothing(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    summary = ledger.append(1, "s", [])
    assert (summary.path, summary.seq, summary.record_count) == (ledger.path, 0, 0)
    assert not root.exists()
    ledger.append(1, "s", EV)
    assert ledger.append(1, "s", iter([])).seq == 1


def test_events_may_be_any_iterable(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    assert ledger.append(1, "s", (e for e in EV * 3)).seq == 3


def test_seq_exhausted_writes_nothing(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.path.parent.mkdir(parents=True)
    ledger.path.write_bytes(seq_line(2**64 - 2))
    before = ledger.path.read_bytes()
    with pytest.raises(SeqExhausted) as info:
        ledger.append(1, "s", EV * 2)
    assert (info.value.last_seq, info.value.count, info.value.path) == (2**64 - 2, 2, ledger.path)
    assert isinstance(info.value, OverflowError)
    assert ledger.path.read_bytes() == before
    assert ledger.append(1, "s", EV).seq == 2**64 - 1
    before = ledger.path.read_bytes()
    with pytest.raises(SeqExhausted):
        ledger.append(1, "s", EV)
    assert ledger.path.read_bytes() == before


def test_seq_exhausted_leaves_a_torn_fragment_unsealed(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.path.parent.mkdir(parents=True)
    ledger.path.write_bytes(b'{"seq":18446744073709551615}')
    with pytest.raises(SeqExhausted):
        ledger.append(1, "s", EV)
    assert ledger.path.read_bytes() == b'{"seq":18446744073709551615}'


class Weird:
    pass


BAD_APPENDS = [
    pytest.param({"attempt": True}, id="bool-attempt"),
    pytest.param({"attempt": -1}, id="negative-attempt"),
    pytest.param({"attempt": 2**32}, id="attempt-too-big"),
    pytest.param({"attempt": 1.0}, id="float-attempt"),
    pytest.param({"attempt": "1"}, id="str-attempt"),
    pytest.param({"session_id": 5}, id="int-session"),
    pytest.param({"session_id": "\ud800"}, id="surrogate-session"),
    pytest.param({"events": [ReceiptEvent(5)]}, id="int-event-type"),  # type: ignore[arg-type]
    pytest.param({"events": [*EV, ReceiptEvent("e", float("nan"))]}, id="nan-second"),
    pytest.param({"events": [ReceiptEvent("e", {1: 2})]}, id="int-key"),
    pytest.param({"events": [ReceiptEvent("e", Weird())]}, id="object-payload"),
    pytest.param({"events": [ReceiptEvent("e", b"x")]}, id="bytes-payload"),
    pytest.param({"events": [{"event_type": "e"}]}, id="dict-event"),
    pytest.param({"events": ["e"]}, id="str-event"),
]


@pytest.mark.parametrize("change", BAD_APPENDS)
def test_bad_input_is_rejected_and_leaves_the_file_byte_identical(
    root: Path, change: dict[str, object]
) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV)
    with ledger.path.open("ab") as f:
        f.write(b"torn")
    before = ledger.path.read_bytes()
    args = {"attempt": 1, "session_id": "s", "events": EV, **change}
    with pytest.raises(InvalidEvent) as info:
        ledger.append(**args)  # type: ignore[arg-type]
    assert info.value.path == ledger.path
    assert isinstance(info.value, ValueError)
    assert ledger.path.read_bytes() == before
    assert sorted(p.name for p in ledger.path.parent.iterdir()) == ["n.jsonl", "n.jsonl.lock"]


def test_invalid_event_names_its_index(root: Path) -> None:
    with pytest.raises(InvalidEvent) as info:
        AttemptLedger(root, "r", "n").append(1, "s", [*EV, *EV, ReceiptEvent("e", {1: 1})])
    assert info.value.index == 2
    assert "event 2" in str(info.value)
    assert not root.exists()


def test_non_str_ids_are_rejected(root: Path) -> None:
    with pytest.raises(InvalidEvent):
        append_receipts(root, 5, "n", 1, "s", EV)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        AttemptLedger(root, "r", None)  # type: ignore[arg-type]
    assert not root.exists()


# -- locking options ----------------------------------------------------------------------------


def test_filelock_on_the_lock_path_excludes_appends(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n", lock_timeout=0)
    ledger.append(1, "s", EV)
    with FileLock(ledger.lock_path):
        with pytest.raises(LockTimeout) as info:
            ledger.append(1, "s", EV)
        assert info.value.path == ledger.lock_path
        assert isinstance(info.value, TimeoutError)
    assert ledger.append(1, "s", EV).seq == 2


def test_lock_timeout_polls_on_the_injected_clock(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n", lock_timeout=1.0)
    ledger.append(1, "s", EV)
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    ledger._lock._clock = lambda: now[0]
    ledger._lock._sleep = sleep
    with FileLock(ledger.lock_path), pytest.raises(LockTimeout):
        ledger.append(1, "s", EV)
    assert sum(sleeps) == pytest.approx(1.0)
    assert sleeps[0] < 0.001  # first poll is short: an append holds the lock for microseconds
    assert max(sleeps) <= 0.005


def test_lock_timeout_must_not_be_negative(root: Path) -> None:
    with pytest.raises(ValueError, match="lock_timeout"):
        AttemptLedger(root, "r", "n", lock_timeout=-1)


# -- files that change under the ledger ---------------------------------------------------------


def test_deleted_ledger_is_recreated_not_written_into_the_void(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV * 2)
    ledger.path.unlink()
    assert ledger.append(1, "s", EV).seq == 1
    assert seqs(ledger.path) == [1]


def test_ledger_replaced_by_rename_is_followed(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV)
    replacement = ledger.path.with_name("new")
    replacement.write_bytes(seq_line(40))
    os.replace(replacement, ledger.path)
    assert ledger.append(1, "s", EV).seq == 41


def test_foreign_append_is_seen(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV)
    with ledger.path.open("ab") as f:
        f.write(seq_line(100))
    assert ledger.append(1, "s", EV).seq == 101


def test_removed_lock_file_is_recreated_and_locked(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n", lock_timeout=0)
    ledger.append(1, "s", EV)
    ledger.lock_path.unlink()
    with FileLock(ledger.lock_path), pytest.raises(LockTimeout):
        ledger.append(1, "s", EV)  # must contend on the new file, not the old inode
    assert ledger.append(1, "s", EV).seq == 2


def test_removed_run_directory_is_recreated(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV)
    ledger.path.unlink()
    ledger.lock_path.unlink()
    ledger.path.parent.rmdir()
    assert ledger.append(1, "s", EV).seq == 1


# -- reading and the object itself --------------------------------------------------------------


def test_records_and_iter_records(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    assert ledger.records() == []
    assert ledger.last_seq() == 0
    ledger.append(1, "s", [ReceiptEvent(f"e{i}") for i in range(5)])
    with ledger.path.open("ab") as f:
        f.write(b'{"seq":99}\n')  # a valid line for seq, but not a record
    assert [r.event_type for r in ledger.records()] == [f"e{i}" for i in range(5)]
    assert [r.seq for r in ledger.iter_records(since_seq=3)] == [4, 5]
    assert ledger.last_seq() == 99


def test_pickled_ledger_is_a_fresh_equivalent(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n", lock_timeout=2.5, durable=True)
    ledger.append(1, "s", EV)
    clone = pickle.loads(pickle.dumps(ledger))
    assert (clone.path, clone.lock_timeout, clone.durable) == (ledger.path, 2.5, True)
    assert clone.append(1, "s", EV).seq == 2


def test_close_releases_descriptors_and_ledger_stays_usable(root: Path) -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    with AttemptLedger(root, "r", "n") as ledger:
        ledger.append(1, "s", EV)
        assert len(os.listdir("/proc/self/fd")) == fds_before + 2
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert ledger.append(1, "s", EV).seq == 2
    ledger.close()


def test_dropped_ledgers_do_not_leak_descriptors(root: Path) -> None:
    AttemptLedger(root, "r", "n").append(1, "s", EV)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(300):
        AttemptLedger(root, "r", "n").append(1, "s", EV)
    assert len(os.listdir("/proc/self/fd")) == before


def test_file_format_of_an_append(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module.time, "time_ns", lambda: 1_700_000_000_123_456_789)
    ledger = AttemptLedger(root, "run", "node")
    ledger.append(2, "sess", [ReceiptEvent("done", {"b": [1, {"d": 1, "c": 2}], "a": "é"})])
    assert ledger.path.read_bytes() == (
        b'{"version":1,"run_id":"run","node_id":"node","attempt":2,"session_id":"sess",'
        b'"seq":1,"ts_ms":1700000000123,"event_type":"done",'
        b'"payload":{"a":"\xc3\xa9","b":[1,{"c":2,"d":1}]}}\n'
    )
    assert json.loads(ledger.path.read_bytes())["seq"] == 1
    assert read_last_seq(ledger.path) == 1


@pytest.mark.parametrize(("attempt", "ok"), [(0, True), (2**32 - 1, True), (2**32, False)])
def test_attempt_bounds_are_exact(root: Path, attempt: int, ok: bool) -> None:
    ledger = AttemptLedger(root, "r", "n")
    if ok:
        assert ledger.append(attempt, "s", EV).seq == 1
        assert ledger.records()[0].attempt == attempt
    else:
        with pytest.raises(InvalidEvent, match="attempt"):
            ledger.append(attempt, "s", EV)
        assert not ledger.path.exists()


# -- the ids' head, encoded once and reused by the appends that repeat them ----------------------


class _Liar(str):
    """A session id that says it equals any other, as a str subclass may."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash(str(self))


def test_a_session_id_subclass_never_lends_its_head_to_another_session(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, _Liar("liar"), EV)
    ledger.append(1, "honest", EV)
    ledger.append(1, _Liar("liar"), EV)
    ledger.append(1, "honest", EV)
    assert [r.session_id for r in ledger.records()] == ["liar", "honest"] * 2


def test_ids_equal_to_the_last_ones_but_not_of_their_type_are_checked(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV)
    with pytest.raises(InvalidEvent, match="attempt must be int, not bool"):
        ledger.append(True, "s", EV)
    with pytest.raises(InvalidEvent, match="attempt must be int, not float"):
        ledger.append(1.0, "s", EV)  # type: ignore[arg-type]
    assert ledger.append(1, "s", EV).seq == 2
    assert [(r.attempt, r.session_id) for r in ledger.records()] == [(1, "s")] * 2


# -- what the mutation run asked for (CONTRIBUTING.md, "Mutation testing") ----------------------


class FakeTime:
    """A clock and a sleep that only moves it: waits are recorded, never slept."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_an_old_pickle_without_hash_chain_rebuilds_a_plain_ledger(root: Path) -> None:
    # Pickles made before hash_chain existed carry five arguments.
    ledger = ledger_module._rebuild(root, "r", "n", None, False)
    assert ledger.hash_chain is False
    ledger.append(1, "s", EV)
    assert b"record_hash" not in ledger.path.read_bytes()


def test_reconcile_polls_every_10_ms_by_default(root: Path) -> None:
    fake = FakeTime()
    summary = AttemptLedger(root, "r", "n").reconcile(1, 30, clock=fake.clock, sleep=fake.sleep)
    assert not summary.found
    assert fake.sleeps[0] == 0.01
    assert max(fake.sleeps) <= 0.01


@pytest.mark.parametrize(("given", "first_sleep"), [({}, 0.05), ({"poll_interval": 0.2}, 0.2)])
def test_follow_waits_its_poll_interval(
    root: Path, given: dict[str, float], first_sleep: float
) -> None:
    fake = FakeTime()
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV)
    follow = ledger.follow(timeout=1.0, clock=fake.clock, sleep=fake.sleep, **given)
    assert [r.seq for r in follow] == [1]
    assert fake.sleeps[0] == first_sleep


@pytest.mark.skipif(watch.INotify is None, reason="inotify is Linux's")
def test_reconcile_is_woken_by_an_append_not_its_poll(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = AttemptLedger(root, "r", "n")
    real_last_seq = AttemptLedger.last_seq
    reads: list[int] = []

    def last_seq(self: AttemptLedger) -> int:
        seq = real_last_seq(self)
        reads.append(seq)
        if len(reads) == 1:
            AttemptLedger(root, "r", "n").append(1, "s", EV)  # after the read: only a watch sees it
        return seq

    monkeypatch.setattr(AttemptLedger, "last_seq", last_seq)
    result: list[Any] = []
    hour = 3_600_000
    waiter = threading.Thread(
        target=lambda: result.append(ledger.reconcile(1, hour, hour)), daemon=True
    )
    waiter.start()
    waiter.join(30)
    assert not waiter.is_alive(), "reconcile was not woken by the append"
    assert result[0].found
    assert reads == [0, 1]


def test_try_append_never_waits_for_a_held_lock(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV)
    before = ledger.path.read_bytes()
    holder = os.open(ledger.lock_path, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        # A wait would find the lock free: asyncio's append must get None at once instead.
        ledger._lock._sleep = lambda _: fcntl.flock(holder, fcntl.LOCK_UN)
        batch = encode_batch(ledger.path, "r", "n", 1, "s", EV)
        assert ledger._try_append(batch) is None
    finally:
        os.close(holder)
    assert ledger.path.read_bytes() == before


def test_a_failed_fsync_when_the_size_cannot_be_checked_says_so(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = AttemptLedger(root, "r", "n", durable=True)
    ledger.append(1, "s", EV)
    failing_ledger_fsync(ledger, monkeypatch)
    real_fstat = os.fstat

    def fstat(fd: int) -> os.stat_result:
        if fd == ledger._handles.fd:
            raise OSError(errno.EIO, "Input/output error")
        return real_fstat(fd)

    monkeypatch.setattr(os, "fstat", fstat)
    why = "the ledger has changed since (another writer appended, or it was moved)"
    with pytest.raises(DurabilityUnknown) as info:
        ledger.append(1, "s", EV)  # whether its records still end the file is unknown
    assert str(info.value).endswith(f"and they could not be taken back: {why}")
    assert (info.value.first_seq, info.value.last_seq) == (2, 2)
    monkeypatch.undo()
    assert seqs(ledger.path) == [1, 2]


def test_an_unreadable_tail_names_the_read_and_writes_nothing(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    AttemptLedger(root, "r", "n").append(1, "s", EV)
    ledger = AttemptLedger(root, "r", "n")  # knows nothing of the tail: it must read it
    before = ledger.path.read_bytes()

    def pread(fd: int, length: int, offset: int) -> bytes:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "pread", pread)
    with pytest.raises(LedgerIOError) as info:
        ledger.append(1, "s", EV)
    assert info.value.reason == "cannot read the ledger's tail: Input/output error"
    assert info.value.errno == errno.EIO
    assert ledger.path.read_bytes() == before


def test_a_path_that_cannot_be_statted_names_the_stat_and_writes_nothing(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV)  # open: the next append checks that the path still names it
    before = ledger.path.read_bytes()
    real_lstat = os.lstat

    def lstat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if os.fspath(path) == str(ledger.path):
            raise OSError(errno.EACCES, "Permission denied")
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", lstat)
    with pytest.raises(LedgerIOError) as info:
        ledger.append(1, "s", EV)
    assert info.value.reason == "cannot stat the ledger: Permission denied"
    assert info.value.errno == errno.EACCES
    monkeypatch.undo()
    assert ledger.path.read_bytes() == before


def test_an_append_right_after_our_own_reads_no_tail(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ledger remembers where its last append ended: while the file still ends there, the
    # next append knows the last seq without reading the tail again.
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV)
    offsets: list[int] = []
    real_pread = os.pread

    def pread(fd: int, length: int, offset: int) -> bytes:
        offsets.append(offset)
        return real_pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", pread)
    assert ledger.append(1, "s", EV).seq == 2
    assert offsets == []
    with ledger.path.open("ab") as f:
        f.write(seq_line(7))  # another writer: the tail must be read again
    assert ledger.append(1, "s", EV).seq == 8
    assert offsets != []


def test_a_non_str_id_is_named_with_its_type(root: Path) -> None:
    with pytest.raises(TypeError, match=r"^run_id must be str, not int$"):
        AttemptLedger(root, 5, "n")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^node_id must be str, not bytes$"):
        AttemptLedger(root, "r", b"n")  # type: ignore[arg-type]
    assert not root.exists()


def test_ts_ms_is_the_clock_floored_to_the_millisecond(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 999_999 ns short of the next millisecond: a float division would round it up.
    monkeypatch.setattr(ledger_module.time, "time_ns", lambda: 1_700_000_000_123_999_999)
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", EV)
    assert [r.ts_ms for r in ledger.records()] == [1_700_000_000_123]


def test_a_worker_repeating_its_ids_has_them_encoded_once(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The append's cache of the encoded ids: what a worker appending in a loop saves.
    encoded: list[tuple[int, str]] = []
    real_encode_head = codec_module.encode_head

    def encode_head(run_id: str, node_id: str, attempt: int, session_id: str) -> bytes:
        encoded.append((attempt, session_id))
        return real_encode_head(run_id, node_id, attempt, session_id)

    monkeypatch.setattr(codec_module, "encode_head", encode_head)
    ledger = AttemptLedger(root, "r", "n")
    for _ in range(3):
        ledger.append(1, "s", EV)
    ledger.append(2, "s", EV)
    ledger.append(2, "s", EV)
    assert encoded == [(1, "s"), (2, "s")]
    assert [(r.attempt, r.session_id) for r in ledger.records()] == [(1, "s")] * 3 + [(2, "s")] * 2


def test_the_ledger_descriptor_is_opened_once(root: Path) -> None:
    # What copying a database ledger out writes through: opened (the file created) on first
    # use, then the same descriptor, not one more each call.
    ledger = AttemptLedger(root, "r", "n")
    ledger._lock.acquire()  # makes the run directory, as the copy does
    try:
        fd = ledger._ledger_fd()
        assert os.fstat(fd).st_ino == ledger.path.stat().st_ino
        fds = len(os.listdir("/proc/self/fd"))
        assert ledger._ledger_fd() == fd
        assert len(os.listdir("/proc/self/fd")) == fds
    finally:
        ledger._lock.release()
        ledger.close()
