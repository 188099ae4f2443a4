"""Kernel wake-ups for waiting readers: one inotify descriptor per process (and one per asyncio
event loop), shared by every follower in it, and one watch per directory followed; and the
waiters that the reconcile/follow drivers wait with (inotify, else the poll interval).

A follower arms a *ticket* before it reads the ledger, so that any change after that read wakes
it. The watch is on the ledger's directory, not the file, so that a ledger not yet created,
removed, or replaced by a rename wakes it too; while the directory itself is missing, the
nearest existing ancestor is watched for it to appear. Where inotify is missing (not Linux) or
refused (the ``max_user_watches`` or ``max_user_instances`` limit), :meth:`Hub.arm` returns
``None`` and the caller polls as before: the poll interval stays as a safety net either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

try:
    from inotify_simple import INotify, flags  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - not Linux, or the package is missing: poll
    INotify = None

if INotify is not None:
    _MASK: int = (
        flags.CREATE
        | flags.MODIFY
        | flags.MOVED_TO
        | flags.MOVED_FROM
        | flags.DELETE
        | flags.ATTRIB
        | flags.DELETE_SELF
        | flags.MOVE_SELF
        | flags.ONLYDIR
    )
    # The watched directory itself went away: every ticket on it must look again.
    _GONE: int = flags.DELETE_SELF | flags.MOVE_SELF | flags.IGNORED | flags.UNMOUNT
    _REMOVED: int = flags.DELETE | flags.MOVED_FROM
    _IGNORED: int = flags.IGNORED
    _OVERFLOW: int = flags.Q_OVERFLOW

# Times a watch is looked for again while the directories on the way come and go.
_RETRIES = 16
# A thread waiting on inotify with a stop event looks at the event this often.
_STOP_SLICE = 0.05
# How long the process's reader thread lingers with nobody to wake before it exits.
_IDLE = 1.0


class Ticket:
    """One waiter's interest in one name in one watched directory. ``reusable`` while it
    watches the ledger's own directory and that directory has not gone: a waiter then keeps
    it from one wait to the next instead of arming a new one."""

    __slots__ = ("extra", "name", "reusable", "wake", "wd")

    def __init__(self, wd: int, name: str, wake: Callable[[], None], reusable: bool) -> None:
        self.wd, self.name, self.wake, self.reusable = wd, name, wake, reusable
        #: A second ticket, on the directory's parent, while the ledger is missing (see arm).
        self.extra: Ticket | None = None


def watch_target(path: Path) -> tuple[Path, str]:
    """The directory to watch for ``path`` and the name in it that matters: the ledger's own
    directory, or while that is missing, the nearest ancestor that exists."""
    child, parent = path, path.parent
    while not parent.is_dir() and parent != parent.parent:
        child, parent = parent, parent.parent
    return parent, child.name


class Hub:
    """An inotify descriptor and the tickets waiting on its watches. Thread-safe."""

    def __init__(self) -> None:
        if INotify is None:  # pragma: no cover - not Linux
            raise OSError("inotify is not available")
        self.inotify: Any = INotify(nonblocking=True)
        self.mutex = threading.Lock()
        self.tickets: dict[int, set[Ticket]] = {}

    def fileno(self) -> int:
        return int(self.inotify.fileno())

    def close(self) -> None:
        with self.mutex:
            self.tickets.clear()
        self.inotify.close()

    def arm(self, path: Path, wake: Callable[[], None]) -> Ticket | None:
        """Watch for changes to the ledger at ``path``: ``wake`` is called (under the hub's
        mutex, from whichever thread reads the events) on the next one. ``None`` when the
        kernel refuses the watch (a limit, a permission): the caller polls instead."""
        with self.mutex:  # adding and registering as one, so a disarm cannot drop the watch
            for _ in range(_RETRIES):
                directory, name = watch_target(path)
                try:
                    wd = int(self.inotify.add_watch(directory, _MASK))
                except (FileNotFoundError, NotADirectoryError):
                    continue  # removed since we looked: look again
                except (OSError, ValueError):  # ENOSPC (max_user_watches), EACCES, NUL
                    return None
                # A directory on the way made before the watch was in place would hide what
                # happens inside it: watch that one instead.
                own = directory == path.parent
                if own or watch_target(path)[0] == directory:
                    ticket = Ticket(wd, name, wake, own)
                    self.tickets.setdefault(wd, set()).add(ticket)
                    if own and not os.path.lexists(path):
                        self._watch_parent(ticket, directory)
                    return ticket
                if wd not in self.tickets:
                    with contextlib.suppress(OSError):
                        self.inotify.rm_watch(wd)
        return None  # a tree that keeps changing under us: poll this round

    def _watch_parent(self, ticket: Ticket, directory: Path) -> None:
        # The ledger is missing and its directory may go next: while a file in it is still
        # open, the kernel does not report the directory gone, so watch for its name in the
        # parent too (mutex held). Without that watch, the next wake-up is the poll.
        try:
            wd = int(self.inotify.add_watch(directory.parent, _MASK))
        except (OSError, ValueError):
            return

        def look_again() -> None:
            ticket.reusable = False
            ticket.wake()

        ticket.extra = Ticket(wd, directory.name, look_again, False)
        self.tickets.setdefault(wd, set()).add(ticket.extra)

    def disarm(self, ticket: Ticket) -> None:
        """Forget ``ticket``; the last ticket on a watch removes the watch."""
        with self.mutex:
            for each in (ticket, ticket.extra):
                group = None if each is None else self.tickets.get(each.wd)
                if each is None or group is None or each not in group:
                    continue
                group.discard(each)
                if not group:
                    del self.tickets[each.wd]
                    with contextlib.suppress(OSError):  # already gone with its directory
                        self.inotify.rm_watch(each.wd)

    def dispatch(self) -> None:
        """Read the pending events and wake the tickets they concern."""
        try:
            events = self.inotify.read(timeout=0)
        except (BlockingIOError, ValueError):  # another reader got them; closed meanwhile
            return
        with self.mutex:
            for event in events:
                if event.mask & _OVERFLOW:  # events were lost: everyone looks again
                    for every in self.tickets.values():
                        for ticket in every:
                            ticket.reusable = False  # a removal may be among the lost
                            ticket.wake()
                    continue
                group = self.tickets.get(event.wd)
                if group is None:
                    continue
                gone = event.mask & _GONE
                # A name removed may be the last before the directory goes, and the kernel
                # reports a directory gone only once nobody holds a file in it open: look
                # for the directory again on the next arm.
                removed = event.mask & _REMOVED
                for ticket in group:
                    if gone or removed:
                        ticket.reusable = False
                    if gone or ticket.name == event.name:
                        ticket.wake()
                if event.mask & _IGNORED:  # the kernel dropped the watch: so do we
                    del self.tickets[event.wd]


class ProcessHub(Hub):
    """The process's hub: a reader thread, started on demand and gone when idle, wakes the
    threads that wait."""

    def __init__(self) -> None:
        super().__init__()
        self.thread: threading.Thread | None = None

    def arm(self, path: Path, wake: Callable[[], None]) -> Ticket | None:
        ticket = super().arm(path, wake)
        if ticket is not None:
            with self.mutex:
                if self.thread is None:
                    self.thread = threading.Thread(
                        target=self._run, name="attempt-ledger-inotify", daemon=True
                    )
                    self.thread.start()
        return ticket

    def _run(self) -> None:
        fd = self.fileno()
        while True:
            try:
                ready = select.select([fd], [], [], _IDLE)[0]
            except (OSError, ValueError):  # closed (after a fork, at exit): nothing to serve
                return
            if ready:
                self.dispatch()
                continue
            with self.mutex:
                if not self.tickets:
                    self.thread = None
                    return


_process_mutex = threading.Lock()
_process_hub: ProcessHub | None = None
_loop_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def process_hub() -> ProcessHub | None:
    """The hub shared by every thread of this process; ``None`` where inotify is unavailable
    (the caller polls)."""
    global _process_hub
    hub = _process_hub
    if hub is not None:
        return hub
    with _process_mutex:
        if _process_hub is None:
            try:
                _process_hub = ProcessHub()
            except OSError:  # no inotify, or max_user_instances reached: poll
                return None
        return _process_hub


def loop_hub() -> Hub | None:
    """The hub of the running event loop (events are read by the loop itself); ``None`` where
    inotify or the loop's ``add_reader`` is unavailable."""
    loop = asyncio.get_running_loop()
    hub = _loop_hubs.get(loop)
    if hub is None:
        for other in [other for other in _loop_hubs if other.is_closed()]:
            _loop_hubs.pop(other).close()  # a closed loop's descriptor is of no more use
        try:
            hub = Hub()
        except OSError:
            return None
        try:
            loop.add_reader(hub.fileno(), hub.dispatch)
        except NotImplementedError:  # pragma: no cover - a loop without add_reader
            hub.close()
            return None
        _loop_hubs[loop] = hub
        weakref.finalize(loop, hub.close)  # the loop's descriptor goes with the loop
    return hub


def _after_fork_in_child() -> None:
    # The parent's reader thread does not exist here, and its loops are not ours to serve.
    global _process_hub, _process_mutex
    _process_mutex = threading.Lock()
    hubs = [_process_hub, *_loop_hubs.values()]
    _process_hub = None
    _loop_hubs.clear()
    for hub in hubs:
        if hub is not None:
            hub.mutex = threading.Lock()
            hub.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Armed:
    """An inotify ticket on ``watch``, armed before each read and woken by ``woken.set``;
    ``hub`` gives the hub (``None``: poll)."""

    def __init__(self, watch: Path | None, hub: Callable[[], Hub | None], woken: Any) -> None:
        self._watch, self._get_hub, self._woken = watch, hub, woken
        self._hub: Hub | None = None
        self._ticket: Ticket | None = None

    def arm(self) -> None:
        ticket = self._ticket
        if ticket is not None and ticket.reusable:
            self._woken.clear()  # before the read: what lands after it sets it again
            return
        self.disarm()
        self._woken.clear()
        if self._watch is not None:
            self._hub = self._hub or self._get_hub()
            if self._hub is not None:
                self._ticket = self._hub.arm(self._watch, self._woken.set)

    def disarm(self) -> None:
        if self._ticket is not None and self._hub is not None:
            self._hub.disarm(self._ticket)
        self._ticket = None


class Waiter(_Armed):
    """How a blocking driver waits: ``sleep`` (``stop.wait`` when ``sleep`` is
    :func:`time.sleep`, so that setting ``stop`` cuts it short), or with ``watch``, an inotify
    ticket on that ledger, falling back to the sleep when the kernel refuses one."""

    def __init__(
        self,
        sleep: Callable[[float], None],
        stop: threading.Event | None,
        watch: Path | None = None,
    ) -> None:
        self._sleep, self._stop = sleep, stop
        # A test's fake sleep: no kernel.
        super().__init__(watch if sleep is time.sleep else None, process_hub, threading.Event())

    async def wait(self, seconds: float) -> None:
        # Blocks and never suspends: only :func:`_drive` awaits it, without a loop.
        stop = self._stop
        if self._ticket is None:
            if stop is not None and self._sleep is time.sleep:
                stop.wait(seconds)  # set() cuts the sleep short
            else:
                self._sleep(seconds)
            return
        if stop is None:
            self._woken.wait(seconds)
            return
        # A thread cannot wait on two events: look at ``stop`` between short slices.
        deadline = time.monotonic() + seconds
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            if self._woken.wait(min(left, _STOP_SLICE)):
                return


class AsyncWaiter(_Armed):
    """How an async driver waits: on the loop's inotify ticket for ``watch``, on ``stop``, or
    for the poll interval, whichever comes first. ``sleep`` replaces all that (PostgreSQL's
    LISTEN)."""

    def __init__(
        self,
        stop: asyncio.Event | None,
        watch: Path | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self._stop, self._sleep = stop, sleep
        super().__init__(watch, loop_hub, asyncio.Event())

    async def wait(self, seconds: float) -> None:
        if self._sleep is not None:
            await self._sleep(seconds)
            return
        woken = self._woken
        timer = asyncio.get_running_loop().call_later(seconds, woken.set)
        stopper = None
        if self._stop is not None:
            stopper = asyncio.ensure_future(self._stop.wait())
            stopper.add_done_callback(lambda _: woken.set())
        try:
            await woken.wait()
        finally:  # also when cancelled: no timer, task or watch is left behind
            timer.cancel()
            if stopper is not None:
                stopper.cancel()
