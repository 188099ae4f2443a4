"""Process entry points for the multiprocess tests (importable, so ``spawn`` can use them)."""

from __future__ import annotations

import itertools
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


def append_and_acknowledge(
    root: Path, worker: int, ack_path: Path, ready: Any, big_every: int = 0
) -> None:
    """Append in a tight loop until killed; after each append returns, record its seqs.

    Each acknowledgement is one 8-byte ``os.write`` to an O_APPEND file, which a kill cannot
    tear, so the parent reads back exactly the seqs that were acknowledged.
    """
    import os
    import random

    ledger = AttemptLedger(root, "run", "node")
    ack = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    rng = random.Random(worker)
    ready.set()
    i = 0
    while True:
        i += 1
        size = rng.choice([1, 1, 1, 2, 5, 20])
        payload: Any = {"w": worker, "i": i}
        if big_every and i % big_every == 0:
            payload = {"w": worker, "blob": "x" * rng.randint(1 << 20, 4 << 20)}
        summary = ledger.append(1, f"w{worker}", [ReceiptEvent("tick", payload)] * size)
        os.write(
            ack,
            b"".join(
                s.to_bytes(8, "little") for s in range(summary.seq - size + 1, summary.seq + 1)
            ),
        )


def read_and_check(root: Path, violations: Path, ready: Any) -> None:
    """Read the ledger in a loop; record any reading that breaks an invariant."""
    from attempt_ledger import AttemptLedger

    ledger = AttemptLedger(root, "run", "node")
    ready.set()
    last = 0
    while True:
        seqs = [r.seq for r in ledger.iter_records()]
        now = ledger.last_seq()
        problems = []
        if any(b <= a for a, b in itertools.pairwise(seqs)):
            problems.append("record seqs not strictly increasing")
        if now < last:
            problems.append(f"last_seq went back from {last} to {now}")
        if problems:
            with violations.open("a") as f:
                f.write("; ".join(problems) + "\n")
        last = now


def reconcile_forever(root: Path, violations: Path, ready: Any) -> None:
    """Wait for the next seq again and again; a found seq must never be lower than asked."""
    from attempt_ledger import AttemptLedger

    ledger = AttemptLedger(root, "run", "node")
    ready.set()
    while True:
        target = ledger.last_seq() + 1
        summary = ledger.reconcile(target, 2000, 1)
        if summary.found and summary.last_seq < target:
            with violations.open("a") as f:
                f.write(f"reconcile found {summary.last_seq} for {target}\n")
