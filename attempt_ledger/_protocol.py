"""What every ledger backend offers: the file ledger and the PostgreSQL one satisfy
:class:`Ledger`, and their asyncio twins :class:`AsyncLedger`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Protocol

from ._records import AppendSummary, ReceiptEvent, ReceiptRecord, ReconcileSummary


class Ledger(Protocol):
    """One (run, node) ledger, whatever stores it. See :class:`AttemptLedger` for the rules."""

    @property
    def path(self) -> Path:
        """The file, or for a database a ``postgres:/<run>/<node>`` name used in errors."""
        ...

    def append(
        self,
        attempt: int,
        session_id: str,
        events: Iterable[ReceiptEvent],
        *,
        expected_last_seq: int | None = None,
    ) -> AppendSummary:
        """Append ``events`` as consecutive records, all or none."""
        ...

    def last_seq(self) -> int:
        """The ledger's last seq; 0 when empty."""
        ...

    def records(self) -> list[ReceiptRecord]:
        """Every record, in order."""
        ...

    def iter_records(self, since_seq: int = 0) -> Iterator[ReceiptRecord]:
        """The records with ``seq > since_seq``, in order."""
        ...

    def reconcile(
        self, expected_min_seq: int, max_wait_ms: int, poll_interval_ms: int = 10
    ) -> ReconcileSummary:
        """Wait until the last seq reaches ``expected_min_seq``."""
        ...

    def follow(
        self,
        since_seq: int = 0,
        *,
        poll_interval: float = 0.05,
        stop: threading.Event | None = None,
        timeout: float | None = None,
    ) -> Iterator[ReceiptRecord]:
        """Records after ``since_seq``, then new ones as they come."""
        ...

    def close(self) -> None:
        """Release connections or descriptors; the ledger reopens them on demand."""
        ...


class AsyncLedger(Protocol):
    """:class:`Ledger` for asyncio: the same operations, awaited. See
    :class:`attempt_ledger.aio.AsyncAttemptLedger` for the rules."""

    @property
    def path(self) -> Path:
        """The file, or for a database a ``postgres:/<run>/<node>`` name used in errors."""
        ...

    async def append(
        self,
        attempt: int,
        session_id: str,
        events: Iterable[ReceiptEvent],
        *,
        expected_last_seq: int | None = None,
    ) -> AppendSummary:
        """Append ``events`` as consecutive records, all or none."""
        ...

    async def last_seq(self) -> int:
        """The ledger's last seq; 0 when empty."""
        ...

    async def records(self) -> list[ReceiptRecord]:
        """Every record, in order."""
        ...

    def iter_records(self, since_seq: int = 0) -> AsyncIterator[ReceiptRecord]:
        """The records with ``seq > since_seq``, in order."""
        ...

    async def reconcile(
        self, expected_min_seq: int, max_wait_ms: int, poll_interval_ms: int = 10
    ) -> ReconcileSummary:
        """Wait until the last seq reaches ``expected_min_seq``."""
        ...

    def follow(
        self,
        since_seq: int = 0,
        *,
        poll_interval: float = 0.05,
        stop: asyncio.Event | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[ReceiptRecord]:
        """Records after ``since_seq``, then new ones as they come."""
        ...

    async def aclose(self) -> None:
        """Release connections or descriptors; the ledger reopens them on demand."""
        ...

    async def __aenter__(self) -> AsyncLedger: ...

    async def __aexit__(self, *exc_info: object) -> None: ...
