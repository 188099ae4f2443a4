"""Followers woken by inotify: one descriptor per process (per loop for asyncio), every change
to the ledger seen (created late, appended by other processes, removed, replaced), and polling
when the kernel refuses a watch.

Every wait here has an hour-long poll interval: only a kernel wake-up can end it in time, so a
follower that fell back to polling fails the test by its timeout instead of passing slowly.
"""

from __future__ import annotations

import asyncio
import errno
import multiprocessing
import os
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import attempt_ledger._watch as watch
from attempt_ledger import AttemptLedger, ReceiptEvent, reconcile_receipts
from attempt_ledger.aio import AsyncAttemptLedger

from .test_reconcile import FakeClock

pytestmark = pytest.mark.skipif(watch.INotify is None, reason="inotify is Linux's")

EV = [ReceiptEvent("e")]
HOUR = 3600.0


def inotify_fds() -> int:
    """How many inotify descriptors this process has open."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}") == "anon_inode:inotify"
        except OSError:
            continue  # the listing's own descriptor, closed meanwhile
    return count


class Follower:
    """``ledger.follow`` in a daemon thread (a regression must fail the test, not hang it)."""

    def __init__(self, ledger: AttemptLedger, count: int, since_seq: int = 0) -> None:
        self.seqs: list[int] = []
        self.stop = threading.Event()
        self.waiting = threading.Event()  # set once it waits for what is not there yet
        self._count = count

        def run() -> None:
            for record in ledger.follow(since_seq, poll_interval=HOUR, stop=self.stop):
                self.seqs.append(record.seq)
                if len(self.seqs) == self._count:
                    return

        self.thread = threading.Thread(target=run, daemon=True)

    def __enter__(self) -> Follower:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def join(self) -> list[int]:
        self.thread.join(30)
        assert not self.thread.is_alive(), f"no wake-up: saw only {self.seqs}"
        return self.seqs


@pytest.fixture
def armed(monkeypatch: pytest.MonkeyPatch) -> threading.Semaphore:
    """Released each time a follower arms a ticket (that is, before it reads the ledger)."""
    semaphore = threading.Semaphore(0)
    real = watch.Hub.arm

    def arm(self: watch.Hub, path: Path, wake: Callable[[], None]) -> Any:
        ticket = real(self, path, wake)
        semaphore.release()
        return ticket

    monkeypatch.setattr(watch.Hub, "arm", arm)
    return semaphore


def _append(root: Path, count: int) -> None:
    AttemptLedger(root, "run", "node").append(1, "s", EV * count)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_appends_by_another_process_wake_a_follower(
    root: Path, armed: threading.Semaphore, method: str
) -> None:
    ledger = AttemptLedger(root, "run", "node")
    ledger.append(1, "s", EV)
    ctx = multiprocessing.get_context(method)
    with Follower(ledger, 3) as follower:
        assert armed.acquire(timeout=30)  # it read the ledger after arming: now it waits
        child = ctx.Process(target=_append, args=(root, 2))
        child.start()
        child.join(60)
        assert child.exitcode == 0
        assert follower.join() == [1, 2, 3]


def test_a_ledger_created_after_following_starts(root: Path, armed: threading.Semaphore) -> None:
    # Not even the root exists yet: the nearest ancestor is watched until the file appears.
    ledger = AttemptLedger(root, "run", "node")
    with Follower(ledger, 2) as follower:
        assert armed.acquire(timeout=30)
        ledger.append(1, "s", EV * 2)
        assert follower.join() == [1, 2]


def test_a_ledger_removed_and_recreated(root: Path, armed: threading.Semaphore) -> None:
    ledger = AttemptLedger(root, "run", "node")
    ledger.append(1, "s", EV * 2)
    with Follower(ledger, 3) as follower:
        assert armed.acquire(timeout=30)
        ledger.path.unlink()
        ledger.lock_path.unlink()
        ledger.path.parent.rmdir()  # the run directory goes too: its watch with it
        assert armed.acquire(timeout=30)  # woken, it read the ledger, and waits again
        ledger.append(1, "s", EV * 3)  # seqs 1..3 again: only the 3rd is new to the follower
        assert follower.join() == [1, 2, 3]


def test_a_directory_removed_while_a_file_in_it_is_still_open(
    root: Path, armed: threading.Semaphore
) -> None:
    # The kernel reports the removed directory itself only when its files are closed: the
    # first ledger keeps its descriptors, so only the removal of the file can tell the
    # follower to look for the directory again (a watch kept on the old one sees nothing).
    first = AttemptLedger(root, "run", "node")
    first.append(1, "s", EV * 2)
    with Follower(first, 3) as follower:
        assert armed.acquire(timeout=30)
        first.path.unlink()
        first.lock_path.unlink()
        first.path.parent.rmdir()
        assert armed.acquire(timeout=30)  # woken by the removal, armed on what exists now
        AttemptLedger(root, "run", "node").append(1, "s", EV * 3)
        assert follower.join() == [1, 2, 3]


def test_a_ledger_replaced_by_a_rename(root: Path, armed: threading.Semaphore) -> None:
    ledger = AttemptLedger(root, "run", "node")
    ledger.append(1, "s", EV)
    other = AttemptLedger(root, "other", "node")
    other.append(1, "s", EV * 2)
    with Follower(ledger, 2) as follower:
        assert armed.acquire(timeout=30)
        os.replace(other.path, ledger.path)
        assert follower.join() == [1, 2]


def test_reconcile_wakes_on_an_append_in_another_thread(
    root: Path, armed: threading.Semaphore
) -> None:
    ledger = AttemptLedger(root, "run", "node")
    result: list[Any] = []
    waiter = threading.Thread(
        target=lambda: result.append(reconcile_receipts(ledger.path, 1, 60_000, 3_600_000)),
        daemon=True,
    )
    waiter.start()
    assert armed.acquire(timeout=30)
    ledger.append(1, "s", EV)
    waiter.join(30)
    assert not waiter.is_alive(), "reconcile_receipts was not woken"
    assert result[0].found  # after a read for each step of the creation it was woken by


def test_one_descriptor_for_every_follower_in_a_process(
    root: Path, armed: threading.Semaphore
) -> None:
    before = inotify_fds()
    ledgers = [AttemptLedger(root, "run", f"node{i % 3}") for i in range(20)]
    followers = [Follower(ledger, 1) for ledger in ledgers]
    for follower in followers:
        follower.__enter__()
    try:
        for _ in followers:
            assert armed.acquire(timeout=30)
        assert inotify_fds() - before <= 1
        for node in range(3):
            AttemptLedger(root, "run", f"node{node}").append(1, "s", EV)
        assert all(follower.join() == [1] for follower in followers)
    finally:
        for follower in followers:
            follower.__exit__()


def test_a_watch_limit_falls_back_to_polling(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What the kernel says at max_user_watches: ENOSPC. The follower polls instead.
    hub = watch.process_hub()
    assert hub is not None

    class Full:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def add_watch(self, path: Path, mask: int) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    real = hub.inotify
    monkeypatch.setattr(hub, "inotify", Full())
    ledger = AttemptLedger(root, "run", "node")
    ledger.append(1, "s", EV)
    seqs = []
    for record in ledger.follow(poll_interval=0.001, timeout=60):
        seqs.append(record.seq)
        if record.seq == 1:
            ledger.append(1, "s", EV)  # found by the poll: no watch could be added
        else:
            break
    assert seqs == [1, 2]
    assert ledger.reconcile(3, 5, 1).attempts >= 2  # polled to its deadline
    assert not hub.tickets


def test_no_inotify_instance_falls_back_to_polling(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # max_user_instances reached: no descriptor at all, for a thread or a loop.
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(watch, "_process_hub", None)
    monkeypatch.setattr(watch, "INotify", refuse)
    ledger = AttemptLedger(root, "run", "node")
    ledger.append(1, "s", EV)
    clock = FakeClock()  # the deadline is reached by polling, not by how loaded the machine is
    summary = ledger.reconcile(2, 5, 1, clock=clock, sleep=clock.sleep)
    assert not summary.found
    assert clock.sleeps  # it polled, with the interval given
    assert all(s == pytest.approx(0.001) for s in clock.sleeps)
    assert watch.process_hub() is None

    async def follow() -> list[int]:
        aledger = AsyncAttemptLedger(root, "run", "node")
        return [record.seq async for record in aledger.follow(poll_interval=0.001, timeout=0.01)]

    assert asyncio.run(follow()) == [1]


def _is_inotify(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
    except OSError:
        return False


def _follow_in_child(root: Path, out: Any, parent_fd: int) -> None:
    out.put(_is_inotify(parent_fd))  # the parent's descriptor was closed at the fork
    ledger = AttemptLedger(root, "run", "node")
    out.put([r.seq for r in ledger.follow(poll_interval=HOUR, timeout=0.0)])
    out.put(ledger.reconcile(1, 60_000, 3_600_000).found)


def test_a_fork_child_gets_its_own_descriptor(root: Path, armed: threading.Semaphore) -> None:
    ledger = AttemptLedger(root, "run", "node")
    with Follower(ledger, 1) as follower:  # the parent's hub is busy in a thread
        assert armed.acquire(timeout=30)
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        hub = watch.process_hub()
        assert hub is not None
        assert _is_inotify(hub.fileno())
        child = ctx.Process(target=_follow_in_child, args=(root, out, hub.fileno()))
        child.start()
        try:
            assert out.get(timeout=60) is False
            assert out.get(timeout=60) == []
            ledger.append(1, "s", EV)  # wakes the parent's follower and the child's reconcile
            assert out.get(timeout=60) is True
        finally:
            child.join(60)
            if child.is_alive():
                child.kill()
        assert child.exitcode == 0
        assert follower.join() == [1]


async def _follow_many(
    root: Path, armed: threading.Semaphore, followers: int, records: int
) -> tuple[list[list[int]], int]:
    ledger = AsyncAttemptLedger(root, "run", "node")
    before = inotify_fds()
    seen: list[list[int]] = [[] for _ in range(followers)]

    async def follow(mine: list[int]) -> None:
        async for record in ledger.follow(poll_interval=HOUR, timeout=60):
            mine.append(record.seq)
            if record.seq == records:
                return

    tasks = [asyncio.create_task(follow(mine)) for mine in seen]
    waiting = 0
    while waiting < followers:  # a follower that armed has read the ledger and waits
        if armed.acquire(blocking=False):
            waiting += 1
            continue
        for task in tasks:  # one that ended already would leave this loop spinning
            if task.done():
                task.result()  # its error, if it failed
                pytest.fail("a follower ended before anything was appended")
        await asyncio.sleep(0)
    writer = AttemptLedger(root, "run", "node")
    for _ in range(records):
        writer.append(1, "s", EV)
        await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return seen, inotify_fds() - before


def test_many_async_followers_share_one_descriptor(root: Path, armed: threading.Semaphore) -> None:
    seen, extra = asyncio.run(_follow_many(root, armed, 100, 5))
    assert all(mine == [1, 2, 3, 4, 5] for mine in seen)
    assert extra <= 1


@pytest.mark.stress
def test_a_thousand_async_followers(root: Path, armed: threading.Semaphore) -> None:
    seen, extra = asyncio.run(_follow_many(root, armed, 1000, 50))
    assert all(mine == list(range(1, 51)) for mine in seen)
    assert extra <= 1


def test_a_closed_loop_closes_its_descriptor(root: Path) -> None:
    before = inotify_fds()

    async def reconcile() -> None:
        ledger = AsyncAttemptLedger(root, "run", "node")
        assert not (await ledger.reconcile(1, 1, 1)).found

    for _ in range(3):
        asyncio.run(reconcile())
    assert inotify_fds() - before <= 1  # only the last loop's, until it is collected


def test_a_directory_made_while_the_watch_is_added_is_watched_instead(tmp_path: Path) -> None:
    # The run directory appears after the nearest ancestor was chosen but before its watch is
    # in place: its CREATE is never seen, so the ancestor's watch would miss the ledger.
    hub = watch.Hub()
    ledger = AttemptLedger(tmp_path / "receipts", "run", "node")
    real = hub.inotify.add_watch
    calls: list[Path] = []

    def add_watch(path: Path, mask: int) -> int:
        wd = real(path, mask)
        if not calls:
            ledger.path.parent.mkdir(parents=True)
        calls.append(Path(path))
        return int(wd)

    hub.inotify.add_watch = add_watch
    woken = threading.Event()
    try:
        assert hub.arm(ledger.path, woken.set) is not None
        # (and the run directory's parent: the ledger is missing, so its directory may go)
        assert calls == [tmp_path, ledger.path.parent, ledger.path.parent.parent]
        ledger.append(1, "s", EV)
        while not woken.is_set():
            assert select.select([hub.fileno()], [], [], 30)[0], "no event for the append"
            hub.dispatch()
    finally:
        hub.close()


def test_a_follower_keeps_its_watch_between_wake_ups(
    root: Path, armed: threading.Semaphore
) -> None:
    # Re-arming costs a system call a wake-up, a thousand of them for a thousand followers:
    # a watch on the ledger's own directory is kept while that directory stays.
    ledger = AttemptLedger(root, "run", "node")
    ledger.append(1, "s", EV)
    with Follower(ledger, 4) as follower:
        assert armed.acquire(timeout=30)
        for _ in range(3):
            ledger.append(1, "s", EV)
        assert follower.join() == [1, 2, 3, 4]
    assert not armed.acquire(blocking=False)


@pytest.mark.parametrize("exist", [False, True])
def test_an_overflowed_queue_wakes_everyone_to_look_again(root: Path, exist: bool) -> None:
    # Events were lost (IN_Q_OVERFLOW): a removal may be among them. (A missing ledger's
    # ticket has a second one, on the parent, whose wake-up also says "look again".)
    hub = watch.Hub()
    woken = [threading.Event() for _ in range(3)]
    (root / "r").mkdir(parents=True)
    for i in range(3 if exist else 0):
        AttemptLedger(root, "r", f"n{i}").path.touch()
    try:
        tickets = [
            hub.arm(AttemptLedger(root, "r", f"n{i}").path, event.set)
            for i, event in enumerate(woken)
        ]
        assert all(ticket is not None and ticket.reusable for ticket in tickets)
        from inotify_simple import Event, flags

        hub.inotify.read = lambda timeout=None: [Event(-1, flags.Q_OVERFLOW, 0, "")]
        hub.dispatch()
        assert all(event.is_set() for event in woken)
        assert not any(ticket.reusable for ticket in tickets if ticket is not None)
    finally:
        hub.close()


def test_a_run_directory_removed_while_its_files_are_open_wakes_through_its_parent(
    tmp_path: Path,
) -> None:
    # A follower that armed on the run directory between the ledger's removal and the
    # directory's: the kernel reports that directory gone only once its open files are
    # closed, so only the parent's watch can tell the follower to look again.
    hub = watch.Hub()
    ledger = AttemptLedger(tmp_path / "receipts", "run", "node")
    ledger.append(1, "s", EV)  # keeps the ledger and its lock file open
    ledger.path.unlink()
    ledger.lock_path.unlink()
    woken = threading.Event()
    try:
        ticket = hub.arm(ledger.path, woken.set)
        assert ticket is not None
        assert ticket.reusable  # on the run directory, which still exists
        ledger.path.parent.rmdir()
        while not woken.is_set():
            assert select.select([hub.fileno()], [], [], 10)[0], "no event for the removal"
            hub.dispatch()
        assert not ticket.reusable  # the next arm looks for the directory again
    finally:
        hub.close()
        ledger.close()


def test_the_process_hubs_reader_thread_serves_while_armed_and_ends_when_idle(
    root: Path, armed: threading.Semaphore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hub of this test's own (the process's is made once, by whichever test comes first).
    idle_pass = threading.Event()  # the reader thread found nothing to read
    real_select = select.select

    class Select:
        @staticmethod
        def select(*args: Any) -> Any:
            ready = real_select(*args)
            if not ready[0]:
                idle_pass.set()
            return ready

    monkeypatch.setattr(watch, "select", Select)
    monkeypatch.setattr(watch, "_IDLE", 0.01)
    monkeypatch.setattr(watch, "_process_hub", None)
    ledger = AttemptLedger(root, "run", "node")
    ledger.append(1, "s", EV)
    hub = watch.process_hub()
    assert hub is not None
    assert hub.thread is None  # started by the first arm
    try:
        with Follower(ledger, 2) as follower:
            assert armed.acquire(timeout=30)
            thread = hub.thread
            assert thread is not None
            assert (thread.name, thread.daemon) == ("attempt-ledger-inotify", True)
            idle_pass.clear()
            assert idle_pass.wait(30)  # idle with a follower armed: the thread stays for it
            ledger.append(1, "s", EV)
            assert follower.join() == [1, 2]
        thread.join(30)  # nobody left to wake: it ends
        assert not thread.is_alive()
        assert hub.thread is None
        with Follower(ledger, 3) as follower:  # a new follower starts a new thread
            assert armed.acquire(timeout=30)
            ledger.append(1, "s", EV)
            assert follower.join() == [1, 2, 3]
    finally:
        hub.close()


def test_the_hubs_descriptor_never_blocks_a_reader() -> None:
    # Another reader may take the events between the readiness and the read.
    hub = watch.Hub()
    try:
        assert os.get_blocking(hub.fileno()) is False
        hub.dispatch()  # nothing to read: returns
    finally:
        hub.close()


def test_no_inotify_at_all_is_an_os_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "INotify", None)
    with pytest.raises(OSError, match=r"^inotify is not available$"):
        watch.Hub()


def test_disarming_a_ticket_on_a_missing_ledger_removes_both_watches(tmp_path: Path) -> None:
    # The ledger is missing: a second watch, on its directory's parent, goes with the ticket.
    hub = watch.Hub()
    path = AttemptLedger(tmp_path, "run", "node").path
    path.parent.mkdir()
    try:
        ticket = hub.arm(path, lambda: None)
        assert ticket is not None
        assert ticket.extra is not None
        assert len(hub.tickets) == 2
        hub.disarm(ticket)
        assert hub.tickets == {}
    finally:
        hub.close()


def _finish(wait: Any) -> None:
    """Run a blocking :meth:`Waiter.wait` coroutine (it never suspends) to its end."""
    with pytest.raises(StopIteration):
        wait.send(None)


class _Woken:
    """A waiter's wake-up event that answers ``wait`` from a script, recording the timeouts."""

    def __init__(self, *answers: bool, then: Callable[[], None] = lambda: None) -> None:
        self.answers, self.then = list(answers), then
        self.timeouts: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        assert self.answers, "waited on past the script"
        answer = self.answers.pop(0)
        if not self.answers:
            self.then()
        return answer

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass


@pytest.mark.parametrize("stopped_at_last", [False, True])
def test_an_armed_blocking_wait_with_a_stop_looks_at_it_between_slices(
    root: Path, stopped_at_last: bool
) -> None:
    stop = threading.Event()
    waiter = watch.Waiter(time.sleep, stop, AttemptLedger(root, "run", "node").path)
    waiter.arm()
    try:
        assert waiter._ticket is not None
        # Woken at the third slice, or stopped after the second.
        woken = waiter._woken = _Woken(True)
        _finish(waiter.wait(1.0))  # a wait of a second or less is sliced too
        assert woken.timeouts == [watch._STOP_SLICE]
        answers = (False, False) if stopped_at_last else (False, False, True)
        woken = _Woken(*answers, then=stop.set if stopped_at_last else lambda: None)
        waiter._woken = woken
        _finish(waiter.wait(HOUR))
        assert woken.timeouts == [watch._STOP_SLICE] * len(answers)
    finally:
        waiter.disarm()


def test_an_armed_blocking_wait_with_a_stop_ends_at_its_deadline(root: Path) -> None:
    # Neither woken nor stopped: it returns when its seconds have passed.
    stop = threading.Event()
    waiter = watch.Waiter(time.sleep, stop, AttemptLedger(root, "run", "node").path)
    waiter.arm()
    done = threading.Event()

    def wait() -> None:
        _finish(waiter.wait(0.001))
        done.set()

    thread = threading.Thread(target=wait, daemon=True)
    try:
        assert waiter._ticket is not None
        thread.start()
        assert done.wait(30), "the wait outlived its deadline"
    finally:
        stop.set()
        thread.join(30)
        waiter.disarm()


def test_an_unarmed_blocking_wait_with_a_stop_ends_at_its_deadline() -> None:
    # No watch (polling): ``stop.wait(seconds)``, which setting ``stop`` cuts short.
    stop = threading.Event()
    waiter = watch.Waiter(time.sleep, stop)
    waiter.arm()
    assert waiter._ticket is None
    done = threading.Event()

    def wait() -> None:
        _finish(waiter.wait(0.001))
        done.set()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    try:
        assert done.wait(30), "the wait outlived its deadline"
    finally:
        stop.set()
        thread.join(30)


def test_an_async_wait_ends_when_stop_is_set_mid_wait() -> None:
    async def main() -> None:
        stop = asyncio.Event()
        waiter = watch.AsyncWaiter(stop)
        task = asyncio.create_task(waiter.wait(HOUR))
        await asyncio.sleep(0)  # the task runs up to its wait
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, 30)

    asyncio.run(main())


def test_an_async_wait_with_a_sleep_of_its_own_sleeps_the_seconds_asked() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    asyncio.run(watch.AsyncWaiter(None, sleep=sleep).wait(1.5))
    assert slept == [1.5]


def kernel_watches(hub: watch.Hub) -> int:
    """How many watches the kernel holds on ``hub``'s descriptor."""
    with open(f"/proc/self/fdinfo/{hub.fileno()}", encoding="ascii") as info:
        return sum(line.startswith("inotify wd:") for line in info)


def test_a_watch_on_an_ancestor_is_one_watch(tmp_path: Path) -> None:
    # Only the ledger's own directory gets the second watch, on its parent, while it is missing.
    hub = watch.Hub()
    try:
        ticket = hub.arm(AttemptLedger(tmp_path / "receipts", "run", "node").path, lambda: None)
        assert ticket is not None
        assert (ticket.name, ticket.reusable, ticket.extra) == ("receipts", False, None)
        assert len(hub.tickets) == kernel_watches(hub) == 1
    finally:
        hub.close()


def test_a_watch_added_on_a_directory_no_longer_the_target_is_removed(tmp_path: Path) -> None:
    # The run directory appears between the look and the add_watch: the ancestor's fresh watch
    # goes (even when removing it fails, the directory being gone), the others stay.
    hub = watch.Hub()
    ledger = AttemptLedger(tmp_path / "receipts", "run", "node")
    real_add, real_rm = hub.inotify.add_watch, hub.inotify.rm_watch
    removed: list[int] = []

    def add_watch(path: Path, mask: int) -> int:
        wd = int(real_add(path, mask))
        if Path(path) == tmp_path:
            ledger.path.parent.mkdir(parents=True)
        return wd

    def rm_watch(wd: int) -> None:
        removed.append(wd)
        real_rm(wd)
        raise OSError(errno.EINVAL, "Invalid argument")  # as for a directory already gone

    hub.inotify.add_watch, hub.inotify.rm_watch = add_watch, rm_watch
    try:
        ticket = hub.arm(ledger.path, lambda: None)
        assert ticket is not None
        assert ticket.extra is not None
        assert len(removed) == 1
        assert removed[0] not in hub.tickets
        assert len(hub.tickets) == kernel_watches(hub) == 2  # the run directory and its parent
    finally:
        hub.close()


@pytest.mark.parametrize("dispatched", [False, True])
def test_disarming_after_the_directory_went(tmp_path: Path, dispatched: bool) -> None:
    # The kernel dropped the run directory's watch with it: before the hub has read that
    # (removing the watch fails), or after (the hub dropped it too). The parent's watch goes.
    hub = watch.Hub()
    path = AttemptLedger(tmp_path, "run", "node").path
    path.parent.mkdir()
    try:
        ticket = hub.arm(path, lambda: None)
        assert ticket is not None
        assert ticket.extra is not None
        path.parent.rmdir()
        while dispatched and ticket.wd in hub.tickets:
            assert select.select([hub.fileno()], [], [], 30)[0], "no event for the removal"
            hub.dispatch()
        hub.disarm(ticket)
        assert hub.tickets == {}
        assert kernel_watches(hub) == 0
    finally:
        hub.close()


def test_a_directory_removed_wakes_the_tickets_on_it(tmp_path: Path) -> None:
    # The ledger's root is watched for the run directory to appear; the root itself goes.
    hub = watch.Hub()
    root = tmp_path / "receipts"
    root.mkdir()
    woken = threading.Event()
    try:
        ticket = hub.arm(AttemptLedger(root, "run", "node").path, woken.set)
        assert ticket is not None
        assert (ticket.name, ticket.extra) == ("run", None)
        root.rmdir()
        while not woken.is_set():
            assert select.select([hub.fileno()], [], [], 30)[0], "no event for the removal"
            hub.dispatch()
        assert hub.tickets == {}  # the kernel dropped the watch: so did the hub
    finally:
        hub.close()


def test_an_append_keeps_the_ticket_reusable(root: Path) -> None:
    # Only a removal or a directory gone makes the next arm look again.
    hub = watch.Hub()
    ledger = AttemptLedger(root, "run", "node")
    ledger.append(1, "s", EV)
    woken = threading.Event()
    try:
        ticket = hub.arm(ledger.path, woken.set)
        assert ticket is not None
        assert ticket.reusable
        ledger.append(1, "s", EV)
        while not woken.is_set():
            assert select.select([hub.fileno()], [], [], 30)[0], "no event for the append"
            hub.dispatch()
        assert ticket.reusable
    finally:
        hub.close()
        ledger.close()


def test_a_waiter_keeps_its_ticket_while_it_is_reusable(root: Path) -> None:
    ledger = AttemptLedger(root, "run", "node")
    ledger.append(1, "s", EV)
    waiter = watch.Waiter(time.sleep, None, ledger.path)
    waiter.arm()
    try:
        ticket = waiter._ticket
        assert ticket is not None
        waiter._woken.set()
        waiter.arm()  # kept, and cleared: what lands after the next read sets it again
        assert waiter._ticket is ticket
        assert not waiter._woken.is_set()
        ticket.reusable = False
        waiter.arm()
        assert waiter._ticket is not ticket
    finally:
        waiter.disarm()
        ledger.close()
