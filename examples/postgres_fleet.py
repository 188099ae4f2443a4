"""A fleet on PostgreSQL: worker processes (on any hosts) append to one database while a
supervisor reconciles every node's ledger there.

    ATTEMPT_LEDGER_PG_DSN=postgresql://... python examples/postgres_fleet.py [--nodes 4]

Needs ``pip install 'attempt_ledger[postgres]'`` and a server; ``migrate`` creates or upgrades
the schema once (idempotent). The run id is unique per invocation, so that the example can
run against a shared database.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import uuid

from attempt_ledger import ReceiptEvent
from attempt_ledger.postgres import PostgresLedger, migrate


def host(dsn: str, run_id: str, node: int, attempts: int) -> None:
    """One worker of the fleet: every attempt of its node, each with its two receipts."""
    with PostgresLedger(dsn, run_id, f"node-{node}") as ledger:
        for attempt in range(1, attempts + 1):
            ledger.append(
                attempt,
                f"host-{node}",
                [ReceiptEvent("attempt_started"), ReceiptEvent("attempt_summary", {"ok": True})],
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("ATTEMPT_LEDGER_PG_DSN"))
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--attempts", type=int, default=3)
    parser.add_argument("--start-method", default="spawn", choices=["fork", "spawn", "forkserver"])
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("no server: pass --dsn or set ATTEMPT_LEDGER_PG_DSN")

    migrate(args.dsn)
    run_id = f"fleet-{uuid.uuid4().hex}"
    context = multiprocessing.get_context(args.start_method)
    workers = [
        context.Process(target=host, args=(args.dsn, run_id, node, args.attempts))
        for node in range(args.nodes)
    ]
    for worker in workers:
        worker.start()
    expected = 2 * args.attempts
    try:
        for node in range(args.nodes):  # the supervisor: LISTEN/NOTIFY ends each wait at once
            with PostgresLedger(args.dsn, run_id, f"node-{node}") as ledger:
                result = ledger.reconcile(expected_min_seq=expected, max_wait_ms=60_000)
                assert result.found, f"node-{node}: {result}"
                assert [r.seq for r in ledger.records()] == list(range(1, expected + 1))
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()
    assert all(worker.exitcode == 0 for worker in workers)
    print(f"{args.nodes} hosts x {args.attempts} attempts reconciled on PostgreSQL ({run_id})")


if __name__ == "__main__":
    main()
