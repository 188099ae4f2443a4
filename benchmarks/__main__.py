"""``python -m benchmarks``: run every scenario, print the table, save it with a plot.

``--quick`` runs tiny sizes (what the test suite's smoke test uses); the default sizes are the
ones the README reports.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

from . import report, scenarios

ALL = ["ledger", "functions", "floor", "bare", "seed", "filelock", "sqlite"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, help="directory for <date>-<host kind>.md/.json/.png")
    args = parser.parse_args(argv)
    q = args.quick
    results: dict = {
        "machine": report.machine(),
        "command": "python -m benchmarks" + (" --quick" if q else ""),
    }

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    say("1. one process")
    results["single"] = {
        str(batch): scenarios.single_process(ALL, batch, calls, 3 if q else 40)
        for batch, calls in (
            (1, 50 if q else 400),
            (10, 20 if q else 100),
            (100, 5 if q else 15),
        )
    }
    say("2. contention")
    results["contention"] = scenarios.contention_matrix(
        ["ledger", "floor", "filelock", "sqlite"], [1, 2, 4, 8], 40 if q else 3000, 1 if q else 5
    )
    say("3. ledger size")
    sizes = [0, 1 << 20] if q else [0, 10 << 20, 100 << 20, 1 << 30]
    results["sizes"] = scenarios.size_sweep(sizes, 20 if q else 2000, seed_limit_s=1.0)
    say("4. durable")
    results["durable"] = scenarios.durable(
        ["ledger", "floor", "sqlite"], 10 if q else 300, 3 if q else 5
    )
    say("4b. durable, N processes")
    results["durable_contention"] = scenarios.contention_matrix(
        ["ledger", "ledger_lockfsync", "floor", "sqlite"],
        [1, 2, 4, 8],
        40 if q else 1600,
        1 if q else 3,
        durable=True,
    )
    say("5. reconcile wake-up")
    results["wakeup"] = {str(poll): scenarios.wakeup(poll, 5 if q else 100) for poll in (1, 10, 50)}

    if os.environ.get("ATTEMPT_LEDGER_PG_DSN"):
        say("6. PostgreSQL")
        n = 80 if q else 4000
        results["postgres"] = {
            f"{kind}, {procs} processes, {ledgers} ledgers": scenarios.many_ledgers(
                kind, procs, ledgers, n // procs
            )
            for procs, ledgers in ((1, 1), (8, 1), (8, 8))
            for kind in ("postgres", "ledger")
        }
        results["postgres_wakeup"] = scenarios.wakeup(50, 5 if q else 100, "postgres")
    text = report.render(results)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = (
            args.out
            / f"{datetime.date.today()}-{platform.machine()}-{results['machine']['cpus']}cpu"
        )
        stem.with_suffix(".md").write_text(text)
        stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
        report.plot(results, stem.with_suffix(".png"))
        say(f"saved {stem}.md, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
