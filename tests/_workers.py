"""Process entry points for the multiprocess tests (importable, so ``spawn`` can use them)."""

from __future__ import annotations

import multiprocessing.synchronize
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

from filelock import FileLock

from attempt_ledger import AttemptLedger, ReceiptEvent, append_receipts, reconcile_receipts


def append_many(
    root: Path,
    worker: int,
    rounds: int,
    start: Any,
    results: Queue[tuple[int, list[int]]],
    ledger: AttemptLedger | None = None,
) -> None:
    """Append ``rounds`` batches (sizes 1..3) and report every seq acknowledged."""
    start.wait(timeout=30)
    acknowledged: list[int] = []
    for i in range(rounds):
        size = 1 + (worker + i) % 3
        events = [ReceiptEvent("tick", {"worker": worker, "i": i, "k": k}) for k in range(size)]
        if ledger is None:
            summary = append_receipts(root, "run", "node", worker, f"w{worker}", events)
        else:
            summary = ledger.append(worker, f"w{worker}", events)
        acknowledged.extend(range(summary.seq - size + 1, summary.seq + 1))
    results.put((worker, acknowledged))


def reconcile_after(
    path: Path, min_seq: int, started: multiprocessing.synchronize.Event, results: Queue[Any]
) -> None:
    started.set()
    summary = reconcile_receipts(path, min_seq, 60_000, 2)
    results.put((summary.found, summary.last_seq))


def hold_filelock(
    lock_path: Path,
    held: multiprocessing.synchronize.Event,
    release: multiprocessing.synchronize.Event,
) -> None:
    with FileLock(lock_path):
        held.set()
        release.wait(timeout=60)


def append_one(root: Path, done: Queue[int]) -> None:
    done.put(AttemptLedger(root, "run", "node").append(9, "late", [ReceiptEvent("late")]).seq)
