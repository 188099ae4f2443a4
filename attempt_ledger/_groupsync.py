"""Group commit: the fsyncs of one open ledger file, made after the lock is released.

A durable append writes under the lock, takes a ticket, releases the lock, and only then waits
for an fsync that began after its write. The threads of a process wait in turn; each finds its
write covered by an fsync another began after it (and returns), or begins one that covers every
write made so far. Processes fsync their own descriptors, which the filesystem merges.

A failed fsync leaves it unknown whether the writes it covered reached the disk (Linux marks
the pages clean; a later fsync of the same file succeeds without writing them), so each ticket
it covered fails, whoever waits for it, and no later fsync is taken as covering it.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable

import attrs

from ._errors import DurabilityUnknown
from ._records import AppendSummary

_live: weakref.WeakSet[GroupSync] = weakref.WeakSet()


def _no_yield() -> None:
    """Where the OS has no ``sched_yield``."""


#: Called by a durable append between its lock's release and its fsync. The release woke the
#: writers waiting for the lock; letting them run first puts their writes before the fsync,
#: which then covers them too: ~+20% appends/s with 8 processes on 2 cores (docs/performance.md).
yield_cpu: Callable[[], None] = getattr(os, "sched_yield", _no_yield)


def _after_fork_in_child() -> None:
    for sync in list(_live):
        sync._forget_parent()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class GroupSync:
    """The fsyncs of the ledger descriptor ``fd``, shared by the threads that write through it.

    ``ticket`` is taken under the ledger's lock after each write; ``wait`` is called after it,
    with or without the lock. ``close`` (under the ledger's lock, before ``fd`` is closed) syncs
    what is still unsynced, so that no one waits on a closed descriptor.
    """

    __slots__ = ("__weakref__", "_failed", "_fd", "_mutex", "_synced", "_written", "inherited")

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        # Reentrant: a signal's handler appending through the same ledger while this thread
        # waits for (or makes) an fsync would otherwise wait for itself for ever; it makes its
        # own fsync, after its write.
        self._mutex = threading.RLock()
        self._written = 0  # tickets handed out
        self._synced = 0  # every ticket up to this one is durable, unless in _failed
        # (after, upto, error): the tickets in after+1..upto an fsync failed for.
        self._failed: list[tuple[int, int, OSError]] = []
        #: Set in a fork child: the descriptor is the parent's open file description, whose
        #: fsync errors the parent may consume; the child must open the ledger again.
        self.inherited = False
        _live.add(self)

    def ticket(self) -> int:
        """Number the write just made. Ledger lock held."""
        self._written += 1
        return self._written

    def wait(self, ticket: int, *, unlocked: bool = False) -> None:
        """Return once an fsync that began after write ``ticket`` has succeeded.

        :param unlocked: the ledger's lock was released after the write: first yield the CPU.
        :raises OSError: the error of an fsync that began after that write and failed (this
            thread's, or another's).
        """
        if unlocked:
            yield_cpu()
        with self._mutex:
            self._settle(ticket)

    def _settle(self, ticket: int) -> None:
        for after, upto, error in self._failed:
            if after < ticket <= upto:
                raise error
        if ticket <= self._synced or self._fd is None:
            return  # None: closed, after a final fsync that covered every ticket
        self._sync()
        self._settle(ticket)

    def _sync(self) -> None:
        upto = self._written  # every ticket so far was taken after its write
        assert self._fd is not None
        try:
            os.fsync(self._fd)
        except OSError as error:
            if self._failed and self._failed[-1][0] == self._synced:
                self._failed[-1] = (self._synced, upto, error)  # it widens the last failure
            else:
                self._failed.append((self._synced, upto, error))
            return
        # max: a handler's fsync, made in the middle of this one, may have covered more.
        self._synced = max(self._synced, upto)

    def close(self) -> None:
        """Sync what is unsynced (errors go to the waiters), then stop using the descriptor."""
        with self._mutex:
            if self._fd is not None and not self.inherited and self._written > self._synced:
                self._sync()
            self._fd = None

    def _forget_parent(self) -> None:
        self._mutex = threading.RLock()
        self._fd = None
        self.inherited = True


@attrs.frozen
class Unsynced:
    """A durable append's write, awaiting its fsync: its ticket, and where its bytes lie."""

    sync: GroupSync
    ticket: int
    start: int
    end: int


def unknown_durability(summary: AppendSummary, error: OSError, why: str) -> DurabilityUnknown:
    """The error of an append whose records stay in the file, unsynced after ``error``.

    :param why: why they could not be taken back.
    """
    first = summary.seq - summary.record_count + 1
    cause = f"fsync failed ({error.strerror or error}) and they could not be taken back: {why}"
    return DurabilityUnknown(summary.path, first, summary.seq, error.errno, cause)
