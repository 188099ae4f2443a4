"""The demo behind ``attempt-ledger demo``: worker processes append, another reconciles."""

from __future__ import annotations

import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ._ledger import AttemptLedger
from ._reader import iter_records, read_last_seq
from ._reconcile import reconcile
from ._records import ReceiptEvent

RUN_ID = "demo-run"
NODE_ID = "demo-node"
JOIN_TIMEOUT = 120.0


def _worker(root: Path, worker: int, appends: int, start: Any) -> None:
    ledger = AttemptLedger(root, RUN_ID, NODE_ID)
    start.wait(timeout=JOIN_TIMEOUT)  # a barrier: the clock starts when every worker is ready
    for i in range(appends):
        ledger.append(1, f"worker-{worker}", [ReceiptEvent("step", {"worker": worker, "i": i})])
    ledger.close()


def _reconciler(path: Path, target: int, results: Any) -> None:
    summary = reconcile(lambda: read_last_seq(path), target, 120_000, 5)
    results.put((summary.found, summary.last_seq, summary.elapsed_ms, summary.attempts))


def run_demo(root: Path, workers: int, appends: int, out: TextIO = sys.stdout) -> int:
    """Run the demo; return 0 if the ledger came out exact, 1 otherwise."""
    ledger = AttemptLedger(root, RUN_ID, NODE_ID)
    base = ledger.last_seq()
    target = base + workers * appends
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(workers + 1), ctx.Queue()
    reconciler = ctx.Process(target=_reconciler, args=(ledger.path, target, results))
    processes = [
        ctx.Process(target=_worker, args=(root, n, appends, start)) for n in range(workers)
    ]
    try:
        reconciler.start()
        for process in processes:
            process.start()
        start.wait(timeout=JOIN_TIMEOUT)
        began = time.monotonic()
        while any(p.is_alive() for p in processes):
            seq = ledger.last_seq() - base
            out.write(f"\r  appended {seq:>8,} / {workers * appends:,}")
            out.flush()
            time.sleep(0.1)
            if time.monotonic() - began > JOIN_TIMEOUT:
                raise TimeoutError("workers did not finish")
        elapsed = time.monotonic() - began
        found, last_seq, waited_ms, polls = results.get(timeout=JOIN_TIMEOUT)
    finally:
        for process in (*processes, reconciler):
            if process.is_alive():
                process.kill()
            process.join(timeout=JOIN_TIMEOUT)
    seqs = [r.seq for r in iter_records(ledger.path) if r.seq > base]
    exact = seqs == list(range(base + 1, target + 1))
    out.write(f"\r  appended {len(seqs):>8,} / {workers * appends:,}\n")
    out.write(
        f"ledger       {ledger.path}\n"
        f"workers      {workers} processes x {appends} appends\n"
        f"records      {len(seqs):,} new (seq {base + 1}..{target})\n"
        f"seq check    {'exact: every seq once, in order' if exact else 'FAILED'}\n"
        f"throughput   {len(seqs) / elapsed:,.0f} appends/s over {elapsed:.2f} s\n"
        f"reconcile    found={found} last_seq={last_seq} after {waited_ms} ms, {polls} polls\n"
    )
    return 0 if exact and found else 1
