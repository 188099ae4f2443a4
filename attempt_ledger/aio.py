"""The ledger for asyncio: :class:`AsyncAttemptLedger` (and, in :mod:`attempt_ledger.postgres`,
``AsyncPostgresLedger``).

An :class:`AsyncAttemptLedger` is an :class:`AttemptLedger` driven from a coroutine: the same
encoder, lock, append and readers, so the same results, errors and guarantees. What differs is
only how it waits. The event loop never blocks on the lock: an append tries it without
blocking and, when it is free (the usual case), writes inline, with no thread hop; when
another holds it, the coroutine sleeps between tries (backing off from 50 µs to 5 ms), so a
cancellation or ``lock_timeout`` mid-wait leaves nothing held and nothing written. A durable
append's ``fsync`` runs in a thread. ``reconcile`` and ``follow`` wait on the loop's own
inotify descriptor (one per loop, shared by every follower on it), with the poll interval as
the safety net.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

from ._codec import check_expected_last_seq, empty_append, encode_batch
from ._errors import LockTimeout
from ._ledger import AttemptLedger
from ._locking import deadline_after
from ._protocol import AsyncLedger
from ._reader import iter_records, read_last_seq
from ._reconcile import Chunks, afollow_with, areconcile, file_reader
from ._records import AppendSummary, ReceiptEvent, ReceiptRecord, ReconcileSummary
from ._watch import AsyncWaiter

__all__ = ["AsyncAttemptLedger"]

# Backoff between tries of a lock another process holds, as the blocking lock's timed wait.
_FIRST_TRY = 50e-6
_LAST_TRY = 5e-3


class AsyncAttemptLedger:
    """The append-only receipt ledger of one (run, node) under ``root``, for coroutines.

    Takes the options of :class:`AttemptLedger` and keeps one (as :attr:`ledger`): several
    coroutines, threads and processes may append to the same ledger at once.

    :raises TypeError: if ``run_id`` or ``node_id`` is not a ``str``.
    :raises ValueError: if ``lock_timeout`` is negative.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        run_id: str,
        node_id: str,
        *,
        lock_timeout: float | None = None,
        durable: bool = False,
        hash_chain: bool = False,
    ) -> None:
        #: The blocking ledger this one drives (same file, lock and options).
        self.ledger = AttemptLedger(
            root, run_id, node_id, lock_timeout=lock_timeout, durable=durable, hash_chain=hash_chain
        )

    @property
    def path(self) -> Path:
        """The ledger file, as :attr:`AttemptLedger.path`."""
        return self.ledger.path

    def __repr__(self) -> str:
        return f"AsyncAttemptLedger({self.ledger!r})"

    async def __aenter__(self) -> AsyncAttemptLedger:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the descriptors the ledger holds; it reopens them when used again."""
        self.ledger.close()

    async def append(
        self,
        attempt: int,
        session_id: str,
        events: Iterable[ReceiptEvent],
        *,
        expected_last_seq: int | None = None,
    ) -> AppendSummary:
        """Append ``events`` as consecutive records, all or none: :meth:`AttemptLedger.append`.

        A cancellation while the lock is held elsewhere leaves nothing written; once the lock
        is taken the batch is written whole (a durable one finishes its ``fsync`` in its
        thread even if the caller is cancelled meanwhile).

        :raises InvalidEvent: if an id, ``attempt`` or an event is not valid; nothing is written.
        :raises SeqConflict: if ``expected_last_seq`` is given and is not the last seq.
        :raises SeqExhausted: if the batch would take seq past ``2**64 - 1``.
        :raises LockTimeout: if ``lock_timeout`` expires first.
        :raises LedgerIOError: if a system call fails; the file is left as it was.
        """
        ledger = self.ledger
        expected_last_seq = check_expected_last_seq(ledger.path, expected_last_seq)
        ids = (ledger.run_id, ledger.node_id, attempt, session_id)
        batch = encode_batch(ledger.path, *ids, events)  # checks the ids all the same
        if not batch.tails:
            return empty_append(ledger.path, ledger.last_seq(), expected_last_seq)
        loop = asyncio.get_running_loop()
        timeout = ledger.lock_timeout
        deadline = deadline_after(loop.time(), timeout)
        delay = _FIRST_TRY
        while True:
            if not ledger.durable:
                summary = ledger._try_append(batch, expected_last_seq)
            else:
                # The whole try in a thread: the fsync stays off the loop, and the lock's mutex
                # is released by the thread that took it. Shielded: a batch whose lock was taken
                # is written (and fsynced) whole even if the caller is cancelled meanwhile.
                summary = await asyncio.shield(
                    loop.run_in_executor(None, ledger._try_append, batch, expected_last_seq)
                )
            if summary is not None:
                return summary
            if deadline is not None and (left := deadline - loop.time()) <= 0:
                raise LockTimeout(ledger.lock_path, timeout or 0.0)
            await asyncio.sleep(delay if deadline is None else min(delay, left))
            delay = min(delay * 2, _LAST_TRY)

    async def last_seq(self) -> int:
        """The seq of the last valid line; 0 for a missing or empty ledger (a read of the
        tail, inline).

        :raises LedgerIOError: if the ledger exists but cannot be read.
        """
        return read_last_seq(self.ledger.path)

    async def records(self) -> list[ReceiptRecord]:
        """Every well-typed record, in file order; ``[]`` for a missing ledger.

        :raises LedgerIOError: if the ledger exists but cannot be read.
        """
        return [record async for record in self.iter_records()]

    async def iter_records(self, since_seq: int | None = None) -> AsyncIterator[ReceiptRecord]:
        """The well-typed records with ``seq > since_seq``, in file order, streaming: read in
        chunks, letting the loop run between two.

        :raises LedgerIOError: if the ledger exists but cannot be read.
        """
        records: Iterator[ReceiptRecord] = iter_records(self.ledger.path, since_seq)
        fetch = Chunks(lambda _: records)
        while chunk := fetch(0):
            for record in chunk:
                yield record
            await asyncio.sleep(0)

    async def reconcile(
        self, expected_min_seq: int, max_wait_ms: int, poll_interval_ms: int = 10
    ) -> ReconcileSummary:
        """Wait until the last seq reaches ``expected_min_seq`` (0 means 1), as
        :meth:`AttemptLedger.reconcile`, woken by inotify where available.

        :raises LedgerIOError: if the ledger exists but cannot be read.
        """
        return await areconcile(
            self.last_seq,
            expected_min_seq,
            max_wait_ms,
            poll_interval_ms,
            AsyncWaiter(None, self.ledger.path),
        )

    def follow(
        self,
        since_seq: int = 0,
        *,
        poll_interval: float = 0.05,
        stop: asyncio.Event | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[ReceiptRecord]:
        """Yield the records with ``seq > since_seq``, then each new one as it is appended, as
        :meth:`AttemptLedger.follow`. Ends when ``stop`` is set (at once, even mid-wait), after
        ``timeout`` seconds, or when the consumer stops iterating or is cancelled.

        :raises LedgerIOError: if the ledger exists but cannot be read.
        """
        path = self.ledger.path
        chunks = Chunks(file_reader(path, since_seq))

        async def fetch(last: int) -> list[ReceiptRecord]:
            await asyncio.sleep(0)  # let the loop run between two chunks
            return chunks(last)

        return afollow_with(
            fetch,
            since_seq,
            poll_interval=poll_interval,
            timeout=timeout,
            waiter=AsyncWaiter(stop, path),
        )


def _conforms(ledger: AsyncAttemptLedger) -> AsyncLedger:
    return ledger  # mypy checks that AsyncAttemptLedger satisfies the async protocol
