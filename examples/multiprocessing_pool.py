"""A multiprocessing pool whose workers append receipts while a supervisor reconciles.

Each task is one attempt of one node: the worker appends ``attempt_started`` and
``attempt_summary`` to the node's ledger. The supervisor, in the parent, waits with
``reconcile`` until every ledger holds its two records, then reads them back.

    python examples/multiprocessing_pool.py [--nodes 8] [--workers 4] [--start-method spawn]
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile

from attempt_ledger import AttemptLedger, ReceiptEvent

RUN_ID = "pool-run"


def attempt(root: str, node: int) -> int:
    """One task: append its receipts, return the seq of the last one."""
    ledger = AttemptLedger(root, RUN_ID, f"node-{node}")
    session = multiprocessing.current_process().name
    ledger.append(1, session, [ReceiptEvent("attempt_started")])
    summary = ledger.append(1, session, [ReceiptEvent("attempt_summary", {"ok": True})])
    ledger.close()
    return summary.seq


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--start-method", default="spawn", choices=["fork", "spawn", "forkserver"])
    parser.add_argument("--root", default=None, help="ledger root (default: a temporary dir)")
    args = parser.parse_args(argv)
    root = args.root or tempfile.mkdtemp()

    context = multiprocessing.get_context(args.start_method)
    with context.Pool(args.workers) as pool:
        pending = pool.starmap_async(attempt, [(root, node) for node in range(args.nodes)])
        # The supervisor: wait for every node's ledger to reach seq 2, while the pool works.
        for node in range(args.nodes):
            ledger = AttemptLedger(root, RUN_ID, f"node-{node}")
            result = ledger.reconcile(expected_min_seq=2, max_wait_ms=60_000)
            assert result.found, f"node-{node} did not reach seq 2: {result}"
            kinds = [record.event_type for record in ledger.records()]
            assert kinds == ["attempt_started", "attempt_summary"], kinds
            ledger.close()
        assert pending.get(timeout=60) == [2] * args.nodes
    print(f"{args.nodes} nodes reconciled under {root}")


if __name__ == "__main__":
    main()
