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
from collections.abc import Callable
from pathlib import Path

from . import aio, report, scenarios

ALL = ["ledger", "ledger_v2", "functions", "floor", "bare", "seed", "filelock", "sqlite"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, help="directory for <date>-<host kind>.md/.json/.png")
    parser.add_argument(
        "--postgres-only",
        action="store_true",
        help="only the PostgreSQL scenarios (section 6), printed, not saved",
    )
    args = parser.parse_args(argv)
    q = args.quick
    results: dict = {
        "machine": report.machine(),
        "command": "python -m benchmarks" + (" --quick" if q else ""),
    }

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    if args.postgres_only:
        if not os.environ.get("ATTEMPT_LEDGER_PG_DSN"):
            parser.error("no PostgreSQL: run under scripts/with-postgres")
        postgres(results, q, say)
        targets = report.postgres_targets(results)
        lines = [*report.render_postgres(results), "", "## Targets", ""]
        lines += [f"- {'PASS' if ok else 'MISS'}: {text}" for text, ok in targets]
        print("\n".join(lines))
        return 0

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
        ["ledger", "ledger_lockfsync", "floor", "floor_after", "sqlite"],
        [1, 2, 4, 8],
        40 if q else 1600,
        1 if q else 3,
        durable=True,
    )
    say("5. reconcile wake-up")
    results["wakeup"] = {str(poll): scenarios.wakeup(poll, 5 if q else 100) for poll in (1, 10, 50)}

    if os.environ.get("ATTEMPT_LEDGER_PG_DSN"):
        postgres(results, q, say)
    say("7. asyncio and inotify wake-ups")
    results["aio"] = aio.run(q)
    text = report.render(results) + aio.render(results["aio"])
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


def postgres(results: dict, q: bool, say: Callable[[str], None]) -> None:
    """Section 6: PostgreSQL (the server of scripts/with-postgres, and a durable one)."""
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
    say("6. PostgreSQL against a bare INSERT")
    # One process runs briefly, so it runs more, shorter rounds against a drifting machine.
    # (--quick: one round of each, to keep the test suite's smoke run short.)
    kinds = ["postgres", "pginsert", "pginsert-plain", "pginsert-pq"]
    results["postgres_floor"] = {
        **scenarios.postgres_floor(kinds, [(1, 1)], 40 if q else 1000, 1 if q else 15),
        **scenarios.postgres_floor(kinds, [(8, 8)], 40 if q else 3000, 1 if q else 7),
    }
    with scenarios.durable_postgres() as durable_dsn:
        if durable_dsn is None:
            return
        say("6. PostgreSQL durable (fsync=on, synchronous_commit=on)")
        results["postgres_durable_single"] = scenarios.single_process(
            ["floor", "ledger", "postgres", "pginsert"],
            1,
            10 if q else 200,
            1 if q else 5,
            durable=True,
        )
        results["postgres_durable"] = scenarios.postgres_floor(
            ["postgres", "pginsert", "ledger"],
            [(8, 8)],
            40 if q else 2000,
            1 if q else 5,
            durable=True,
        )


if __name__ == "__main__":
    sys.exit(main())
