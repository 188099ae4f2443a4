"""Prune old runs: remove every run whose newest record is older than a cutoff.

Ledgers only grow. ``attempt-ledger prune --older-than 30d`` removes the runs whose newest
record is older than 30 days, each ledger under its lock (never ``rm -r``, which races the
writers). This example writes a run "from last month" (its record stamped 40 days ago, as a
copy or a restore would bring it), a fresh run, then prunes from Python and from the command
line, dry run first.

    python examples/prune_old_runs.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attempt_ledger import (
    AttemptLedger,
    ReceiptEvent,
    ReceiptRecord,
    encode_record,
    iter_ledgers,
    read_receipt_records,
    receipts_path,
    remove_run_dir,
)

DAY_MS = 86_400_000


def write_old_run(root: Path, run_id: str, age_ms: int) -> None:
    """A run whose one record was written ``age_ms`` ago (as a restored copy would be)."""
    path = receipts_path(root, run_id, "node")
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.time_ns() // 1_000_000 - age_ms
    record = ReceiptRecord(1, run_id, "node", 1, "w", 1, stamp, "attempt_started", None)
    path.write_bytes(encode_record(record))


def newest_record_ms(run_dir: Path) -> int:
    """The newest ``ts_ms`` among the last records of a run's ledgers (0 if none)."""
    newest = 0
    for ledger in run_dir.glob("*.jsonl"):
        records = read_receipt_records(ledger)
        if records:
            newest = max(newest, records[-1].ts_ms)
    return newest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="ledger root (default: a temporary dir)")
    args = parser.parse_args(argv)
    root = Path(args.root or tempfile.mkdtemp())

    write_old_run(root, "run-2026-01", 40 * DAY_MS)
    write_old_run(root, "run-2026-02", 35 * DAY_MS)
    AttemptLedger(root, "run-today", "node").append(1, "w", [ReceiptEvent("attempt_started")])

    # From Python: judge each run by its newest record, remove it under its ledgers' locks.
    cutoff = time.time_ns() // 1_000_000 - 38 * DAY_MS
    for run in sorted({run for run, _, _ in iter_ledgers(root)}):
        if newest_record_ms(root / run) < cutoff:
            removal = remove_run_dir(root / run)
            assert removal.dir_removed, removal.kept
    assert sorted({run for run, _, _ in iter_ledgers(root)}) == ["run-2026-02", "run-today"]

    # From the command line: the same rule (the tail reader reads only each ledger's end).
    command = [sys.executable, "-m", "attempt_ledger", "--root", str(root), "prune"]
    dry = subprocess.run(
        [*command, "--older-than", "30d", "--dry-run"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "would remove" in dry.stdout, dry.stdout
    assert "run-today" not in dry.stdout, dry.stdout
    done = subprocess.run(
        [*command, "--older-than", "30d"], check=True, capture_output=True, text=True, timeout=60
    )
    print(done.stdout, end="")  # a `removed PATH` line for each file and directory removed
    assert [run for run, _, _ in iter_ledgers(root)] == ["run-today"]
    print("pruned the runs older than 30 days; run-today kept")


if __name__ == "__main__":
    main()
