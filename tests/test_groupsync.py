"""Durable mode's group commit: the fsync after the lock's release, shared by threads, and what
an fsync failure reports once others may have appended after the failed append."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import multiprocessing
import os
import pickle
import signal
import stat
import sys
import threading
from collections.abc import Iterator
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import pytest

from attempt_ledger import (
    AttemptLedger,
    DurabilityUnknown,
    LedgerError,
    LedgerIOError,
    ReceiptEvent,
    _groupsync,
    read_receipt_records,
)
from attempt_ledger._groupsync import GroupSync, unknown_durability
from attempt_ledger._locking import SidecarLock
from attempt_ledger._reader import iter_records
from attempt_ledger._records import AppendSummary

from ._interrupts import interrupt_at

JOIN = 60
EV = [ReceiptEvent("e", {"k": "v"})]


def _is_ledger(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(".jsonl")
    except OSError:
        return False


@pytest.fixture(params=["fork", "spawn"])
def ctx(request: pytest.FixtureRequest) -> BaseContext:
    return multiprocessing.get_context(request.param)


@pytest.fixture
def children() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for process in started:
        if process.is_alive():
            process.kill()
        process.join(timeout=JOIN)


# -- GroupSync on its own -------------------------------------------------------------------------


def test_one_fsync_covers_every_write_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    monkeypatch.setattr(_groupsync, "yield_cpu", lambda: calls.append(-1))
    sync = GroupSync(3)
    first, second = sync.ticket(), sync.ticket()
    sync.wait(second)
    sync.wait(first)  # covered by the fsync that began after both writes
    assert calls == [3]  # no yield unless asked
    third = sync.ticket()
    sync.wait(third, unlocked=True)
    assert calls == [3, -1, 3]


def test_a_failed_fsync_fails_every_write_it_covered_for_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failures = [OSError(errno.EIO, "I/O error")]

    def fsync(fd: int) -> None:
        if failures:
            raise failures.pop()

    monkeypatch.setattr(os, "fsync", fsync)
    sync = GroupSync(3)
    first, second = sync.ticket(), sync.ticket()
    with pytest.raises(OSError, match="I/O error") as own:
        sync.wait(second)
    assert own.value.errno == errno.EIO
    third = sync.ticket()
    sync.wait(third)  # a later fsync succeeds: it does not vouch for the pages the failed one lost
    for ticket in (first, second):
        with pytest.raises(OSError, match="I/O error"):
            sync.wait(ticket)


def test_close_syncs_what_is_unsynced_and_then_never_touches_the_descriptor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    sync = GroupSync(7)
    ticket = sync.ticket()
    sync.close()
    assert calls == [7]
    sync.wait(ticket)
    sync.close()
    assert calls == [7]


# -- the ledger ----------------------------------------------------------------------------------


def test_durable_append_fsyncs_after_releasing_the_lock(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = AttemptLedger(root, "r", "n", durable=True)
    ledger.append(1, "s", EV)  # creates the files
    real_fsync = os.fsync
    lock_free: list[bool] = []

    def fsync(fd: int) -> None:
        if _is_ledger(fd):
            probe = os.open(ledger.lock_path, os.O_RDONLY)
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if held
                fcntl.flock(probe, fcntl.LOCK_UN)
                lock_free.append(True)
            except BlockingIOError:
                lock_free.append(False)
            finally:
                os.close(probe)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert ledger.append(1, "s", EV).seq == 2
    assert lock_free == [True]


def _record_steps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    # The ledger's fsyncs, the lock's releases and the yields, in the order they happen.
    steps: list[str] = []
    real_fsync, real_release = os.fsync, SidecarLock.release

    def fsync(fd: int) -> None:
        steps.extend(["fsync"] if _is_ledger(fd) else [])
        real_fsync(fd)

    def release(lock: SidecarLock) -> None:
        steps.append("release")
        real_release(lock)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(SidecarLock, "release", release)
    monkeypatch.setattr(_groupsync, "yield_cpu", lambda: steps.append("yield"))
    return steps


def test_the_yield_is_the_oss() -> None:
    assert _groupsync.yield_cpu is os.sched_yield


@pytest.mark.parametrize("durable", [False, True])
def test_a_durable_append_yields_the_cpu_between_the_release_and_the_fsync(
    root: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    # So that the writers the release woke write before the fsync, which then covers them.
    ledger = AttemptLedger(root, "r", "n", durable=durable)
    ledger.append(1, "s", EV)
    steps = _record_steps(monkeypatch)
    assert ledger.append(1, "s", EV).seq == 2
    assert steps == (["release", "yield", "fsync"] if durable else ["release"])


def test_try_append_fsyncs_before_it_releases_the_lock(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncio's durable append (in an executor thread): durable before the lock is let go.
    ledger = AttemptLedger(root, "r", "n", durable=True)
    ledger.append(1, "s", EV)
    from attempt_ledger._codec import encode_batch

    encoded = encode_batch(ledger.path, "r", "n", 1, "s", EV)
    steps = _record_steps(monkeypatch)
    summary = ledger._try_append(encoded)
    assert summary is not None
    assert summary.seq == 2
    assert steps == ["fsync", "release"]  # and no yield to the lock


@pytest.mark.timeout(60)
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_signal_handler_appending_while_its_thread_fsyncs_is_served(
    root: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    # A handler (SIGTERM writing a "cancelled" receipt, say) appending through the same durable
    # ledger while the append it interrupted makes its fsync: the group commit's mutex is held
    # further up the stack, and the handler's append waited for it for ever.
    ledger = AttemptLedger(root, "r", "n", durable=True)
    ledger.append(1, "s", EV)  # creates the files: the fsyncs below are the ledger's only
    real_fsync = os.fsync
    fsyncs: list[int] = []
    served: list[int] = []

    def fsync(fd: int) -> None:
        if when == "after":
            real_fsync(fd)
        fsyncs.append(fd)
        if len(fsyncs) == 1:
            signal.raise_signal(signal.SIGUSR1)
        if when == "before":
            real_fsync(fd)

    def handler(*_: object) -> None:
        served.append(ledger.append(1, "h", EV).seq)

    monkeypatch.setattr(os, "fsync", fsync)
    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        outer = ledger.append(1, "s", EV)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert (outer.seq, served) == (2, [3])
    assert len(fsyncs) == 2  # the handler's own, after its write
    assert [r.seq for r in ledger.records()] == [1, 2, 3]


def test_an_fsync_made_in_the_middle_of_another_is_not_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The handler's fsync (above) ends before the one it interrupted: that one, ending last,
    # must not set the synced mark back to what it covered.
    sync = GroupSync(99)
    calls: list[int] = []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            sync.wait(sync.ticket())  # a handler's append, written after this fsync began

    monkeypatch.setattr(os, "fsync", fsync)
    sync.wait(sync.ticket())
    sync.wait(2)  # covered already
    assert calls == [99, 99]


def test_an_interrupt_at_any_point_of_the_first_durable_append_leaves_the_next_durable(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A signal's handler raising as the ledger was opened (as its group commit was made, or
    # its directories fsynced) left the descriptor open without them: every later append was
    # acknowledged without an fsync, and the new directory entries never synced.
    real_fsync = os.fsync
    synced: list[str] = []

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        synced.append(target + ("/" if stat.S_ISDIR(os.fstat(fd).st_mode) else ""))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    for n in range(1, 300):
        ledger = AttemptLedger(root / str(n), "r", "n", durable=True)
        synced.clear()
        sys.setprofile(interrupt_at(n))
        try:
            ledger.append(1, "s", EV)
            whole = True
        except KeyboardInterrupt:
            whole = False
        finally:
            sys.setprofile(None)
        before = len(synced)
        assert ledger.append(1, "s", EV).seq == (2 if whole else ledger.last_seq())
        assert str(ledger.path) in synced[before:], n  # the second append's own fsync
        for made in (ledger.path, ledger.path.parent, root / str(n)):
            assert f"{made.parent}/" in synced, (n, made)  # every new entry, by one of them
        ledger.close()
        if whole:
            break
    assert n > 10


def test_an_interrupt_at_any_point_of_a_durable_close_leaves_no_fsync_of_a_closed_descriptor(
    root: Path,
) -> None:
    # A close() interrupted between dropping the group commit and closing it left it with the
    # descriptor the next close() closed: an append still waiting for its fsync then synced a
    # closed descriptor (EBADF, reported as unknown durability), or whatever file reused it.
    ledger = AttemptLedger(root, "r", "n", durable=True)
    made: list[GroupSync] = []
    for n in range(1, 300):
        ledger.append(1, "s", EV)
        made.append(ledger._handles.sync)  # type: ignore[arg-type]
        sys.setprofile(interrupt_at(n))
        try:
            ledger.close()
            whole = True
        except KeyboardInterrupt:
            whole = False
        finally:
            sys.setprofile(None)
        ledger.close()
        assert [sync._fd for sync in made] == [None] * len(made), n
        if whole:
            break
    assert n > 3


def test_every_append_returns_after_an_fsync_that_began_after_its_write(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = AttemptLedger(root, "r", "n", durable=True)
    real_fsync = os.fsync
    done: list[int] = []  # file sizes at the start of each fsync that succeeded
    guard = threading.Lock()

    def fsync(fd: int) -> None:
        size = os.fstat(fd).st_size
        real_fsync(fd)
        if _is_ledger(fd):
            with guard:
                done.append(size)

    monkeypatch.setattr(os, "fsync", fsync)
    problems: list[str] = []
    start = threading.Barrier(4)

    def worker(n: int) -> None:
        start.wait(timeout=JOIN)
        for i in range(40):
            seq = ledger.append(n, "s", [ReceiptEvent("e", {"n": n, "i": i})]).seq
            end = _end_of(ledger.path, seq)
            with guard:
                if not any(size >= end for size in done):
                    problems.append(f"seq {seq} acknowledged before an fsync covered it")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=JOIN)
    assert problems == []
    assert [r.seq for r in read_receipt_records(ledger.path)] == list(range(1, 161))


def _end_of(path: Path, seq: int) -> int:
    data = path.read_bytes()
    offset = 0
    for line in data.splitlines(keepends=True):
        offset += len(line)
        if f'"seq":{seq},'.encode() in line:
            return offset
    raise AssertionError(f"seq {seq} not in the file")


def test_a_failed_fsync_after_others_appended_says_what_is_known(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = AttemptLedger(root, "r", "n", durable=True)
    other = AttemptLedger(root, "r", "n", durable=True)
    ledger.append(1, "s", EV)
    real_fsync = os.fsync
    armed = [True]

    def fsync(fd: int) -> None:
        if armed and fd == ledger._handles.fd:
            armed.clear()
            other.append(2, "t", EV)  # appends after our write, before our fsync fails
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DurabilityUnknown) as info:
        ledger.append(1, "s", EV * 2)
    error = info.value
    assert (error.first_seq, error.last_seq, error.errno) == (2, 3, errno.EIO)
    assert isinstance(error.__cause__, OSError)
    assert "seqs 2..3; durability unknown" in str(error)
    assert not isinstance(error, LedgerIOError)  # the file is not as it was: no retry
    assert [r.seq for r in read_receipt_records(ledger.path)] == [1, 2, 3, 4]
    assert ledger.append(1, "s", EV).seq == 5
    ledger.close()
    other.close()


def failing_ledger_fsync(ledger: AttemptLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every fsync of ``ledger``'s descriptor fail with EIO; other fsyncs run."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if fd == ledger._handles.fd:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("entry", ["append", "asyncio's try"])
def test_a_failed_fsync_of_the_last_append_takes_it_back(
    root: Path, monkeypatch: pytest.MonkeyPatch, entry: str
) -> None:
    # asyncio's durable append fsyncs under the lock: taking the write back must not try to
    # take the lock again (that would fail as a re-entry, and leave the records unknown).
    from attempt_ledger._codec import encode_batch

    ledger = AttemptLedger(root, "r", "n", durable=True)
    ledger.append(1, "s", EV)
    before = ledger.path.read_bytes()
    failing_ledger_fsync(ledger, monkeypatch)
    batch = encode_batch(ledger.path, "r", "n", 1, "s", EV * 2)
    call = functools.partial(ledger.append, 1, "s", EV * 2)
    if entry != "append":
        call = functools.partial(ledger._try_append, batch)  # type: ignore[assignment]
    with pytest.raises(LedgerIOError) as info:
        call()
    assert type(info.value) is LedgerIOError  # taken back, not DurabilityUnknown
    assert info.value.errno == errno.EIO
    assert ledger.path.read_bytes() == before


def test_durability_unknown_pickles_with_its_fields() -> None:
    error = DurabilityUnknown(Path("/x/r/n.jsonl"), 4, 6, errno.EIO, "fsync failed: EIO")
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is DurabilityUnknown
    assert vars(clone) == vars(error)
    assert str(clone) == str(error)
    assert isinstance(clone, LedgerError)
    assert str(error).startswith("/x/r/n.jsonl: records written as seqs 4..6; durability unknown")


# -- several processes, fsyncs failing at random -------------------------------------------------


def flaky_appender(root: Path, worker: int, rounds: int, start: Any, results: Any) -> None:
    """Append ``rounds`` 1- or 2-event batches durably while every third ledger fsync fails;
    report each outcome: ("ok", last seq), ("unknown", first, last) or ("failed",)."""
    real_fsync = os.fsync
    count = [0]

    def fsync(fd: int) -> None:
        if _is_ledger(fd):
            count[0] += 1
            if count[0] % 3 == worker % 3:
                raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    os.fsync = fsync  # this process only
    ledger = AttemptLedger(root, "r", "n", durable=True)
    start.wait(timeout=JOIN)
    outcomes: list[tuple[Any, ...]] = []
    for i in range(rounds):
        events = [ReceiptEvent("e", {"w": worker, "i": i, "k": k}) for k in range(1 + i % 2)]
        try:
            outcomes.append(("ok", ledger.append(worker, "s", events).seq))
        except DurabilityUnknown as error:
            outcomes.append(("unknown", error.first_seq, error.last_seq))
        except LedgerIOError:
            outcomes.append(("failed",))
    ledger.close()
    results.put((worker, outcomes))


def test_processes_with_failing_fsyncs_get_the_truth(
    ctx: BaseContext, children: list[Any], root: Path
) -> None:
    _failing_fsyncs_from_processes(ctx, children, root, 3, 30)


@pytest.mark.stress
def test_many_processes_with_failing_fsyncs_get_the_truth(
    ctx: BaseContext, children: list[Any], root: Path
) -> None:
    _failing_fsyncs_from_processes(ctx, children, root, 8, 300)


def _failing_fsyncs_from_processes(
    ctx: BaseContext, children: list[Any], root: Path, workers: int, rounds: int
) -> None:
    start, results = ctx.Barrier(workers), ctx.Queue()
    for worker in range(workers):
        process = ctx.Process(  # type: ignore[attr-defined]
            target=flaky_appender, args=(root, worker, rounds, start, results)
        )
        process.start()
        children.append(process)
    outcomes = dict(results.get(timeout=JOIN) for _ in range(workers))
    for process in children:
        process.join(timeout=JOIN)
        assert process.exitcode == 0
    records = list(iter_records(root / "r" / "n.jsonl"))
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    where = {(r.payload["w"], r.payload["i"], r.payload["k"]): r.seq for r in records}  # type: ignore[index]
    assert len(where) == len(records)  # nothing written twice
    seen = {"ok": 0, "unknown": 0, "failed": 0}
    for worker, results_of in outcomes.items():
        for i, outcome in enumerate(results_of):
            seen[outcome[0]] += 1
            keys = [(worker, i, k) for k in range(1 + i % 2)]
            if outcome[0] == "failed":  # taken back
                assert not any(key in where for key in keys)
                continue
            last = outcome[-1]
            first = outcome[1] if outcome[0] == "unknown" else last - len(keys) + 1
            assert [where.get(key) for key in keys] == list(range(first, last + 1))
    assert seen["ok"]
    assert seen["failed"]


def test_a_fork_child_syncs_through_its_own_descriptor(children: list[Any], root: Path) -> None:
    # The parent's open file description reports an fsync error once, to whoever asks first:
    # a child sharing it could be told "synced" about pages the parent's failed fsync lost.
    ledger = AttemptLedger(root, "r", "n", durable=True)
    ledger.append(1, "s", EV)
    parent_sync = ledger._handles.sync
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()

    def child() -> None:
        inherited = ledger._handles.sync
        ledger.append(2, "t", EV)
        own = ledger._handles.sync
        results.put(
            (inherited is not None and inherited.inherited, own is not inherited, own.inherited)  # type: ignore[union-attr]
        )

    process = ctx.Process(target=child)
    process.start()
    children.append(process)
    assert results.get(timeout=JOIN) == (True, True, False)
    process.join(timeout=JOIN)
    assert process.exitcode == 0
    assert ledger._handles.sync is parent_sync
    assert not parent_sync.inherited  # type: ignore[union-attr]
    assert ledger.append(1, "s", EV).seq == 3


def test_a_failed_fsync_when_the_lock_cannot_be_had_again_says_so(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = AttemptLedger(root, "r", "n", durable=True, lock_timeout=0)
    ledger.append(1, "s", EV)
    holder = os.open(ledger.lock_path, os.O_RDONLY)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if fd == ledger._handles.fd:
            fcntl.flock(holder, fcntl.LOCK_EX)  # another writer takes the lock meanwhile
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    try:
        with pytest.raises(DurabilityUnknown, match="lock could not be taken again") as info:
            ledger.append(1, "s", EV)
    finally:
        os.close(holder)
    assert (info.value.first_seq, info.value.last_seq) == (2, 2)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert ledger.append(1, "s", EV).seq == 3


# -- what the mutation run of _groupsync asked for (CONTRIBUTING.md, "Mutation testing") ---------


def test_each_ticket_gets_the_error_of_the_failure_that_covers_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Failures in a row widen the last one (its newest error stands for all its tickets); a
    # success in between starts a new one; the tickets a success covered stay durable.
    errors = [OSError(errno.EIO, f"I/O error {n}") for n in range(6)]
    outcomes: list[OSError | None] = [errors[0], errors[1], None, errors[2], errors[3], None]
    outcomes += [errors[4], errors[5]]
    calls: list[int] = []

    def fsync(fd: int) -> None:
        calls.append(fd)
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(os, "fsync", fsync)
    sync = GroupSync(3)
    tickets = [sync.ticket(), sync.ticket()]
    for _ in range(8):
        with contextlib.suppress(OSError):
            sync.wait(tickets[-1])
        tickets.append(sync.ticket())
    assert outcomes == []
    expected = [errors[1]] * 3 + [None] + [errors[3]] * 2 + [None] + [errors[5]] * 2
    for ticket, error in zip(tickets, expected, strict=False):
        if error is None:
            sync.wait(ticket)
        else:
            with pytest.raises(OSError, match="I/O error") as raised:
                sync.wait(ticket)
            assert raised.value is error, ticket
    assert len(calls) == 8  # none of those waits needed an fsync


def test_close_fsyncs_only_what_is_unsynced(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    GroupSync(5).close()  # nothing written
    assert calls == []
    sync = GroupSync(7)
    sync.wait(sync.ticket())
    sync.close()  # everything synced already
    assert calls == [7]


def test_a_close_whose_fsync_failed_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def fsync(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", fsync)
    sync = GroupSync(7)
    ticket = sync.ticket()
    sync.close()
    sync.close()  # the descriptor is the caller's to close now: it must not be synced
    assert calls == [7]
    with pytest.raises(OSError, match="I/O error"):
        sync.wait(ticket)


def test_a_fork_childs_copy_never_syncs_the_parents_descriptor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What the at-fork hook leaves in the child, checked in this process (the fork tests of the
    # ledger run it in a child, where coverage tools do not see it).
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    sync = GroupSync(7)
    ticket = sync.ticket()
    sync._forget_parent()
    assert sync.inherited is True
    sync.wait(ticket)  # the parent's write: the parent syncs it
    sync.close()
    sync.wait(ticket)
    assert calls == []


def test_unknown_durability_names_the_seqs_the_os_cause_and_why() -> None:
    summary = AppendSummary(Path("/x/r/n.jsonl"), 6, 3)
    error = unknown_durability(summary, OSError(errno.EIO, "Input/output error"), "because")
    assert (error.path, error.first_seq, error.last_seq) == (summary.path, 4, 6)
    assert error.errno == errno.EIO
    assert str(error) == (
        "/x/r/n.jsonl: records written as seqs 4..6; durability unknown: fsync failed "
        "(Input/output error) and they could not be taken back: because"
    )
    bare = unknown_durability(summary, OSError("no strerror"), "because")
    assert "fsync failed (no strerror) and" in str(bare)
    assert bare.errno is None
