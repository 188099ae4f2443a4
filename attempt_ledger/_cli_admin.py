"""The administrative commands: ``prune``, and copying ledgers to and from PostgreSQL."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._cli_support import Failure, UsageError, json_text, one_or_all


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the administrative commands' parsers, with ``add`` (``add_subparsers().add_parser``)."""
    prune = add(
        "prune",
        help="remove the runs whose newest record is older than DURATION",
        description="Remove the runs whose newest record is older than DURATION, each ledger "
        "under its lock, so writers appending meanwhile start a fresh ledger. A run's age is "
        "the newest ts_ms among the last records of its ledgers (read back from each end); a "
        "ledger holding no valid record counts by its modification time. Prints one line per "
        "removed ledger and run.",
    )
    prune.add_argument(
        "--older-than", required=True, metavar="DURATION", help="e.g. 30d, 12h, 90m, 45s"
    )
    prune.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    prune.add_argument(
        "--lock-timeout", type=float, metavar="SECONDS", help="wait at most this for each lock"
    )

    dsn_help = "PostgreSQL connection string (default: $ATTEMPT_LEDGER_PG_DSN)"
    migrate = add("pg-migrate", help="create the PostgreSQL tables (idempotent)")
    migrate.add_argument("--dsn", help=dsn_help)
    for name, what in (
        ("to-postgres", "copy file ledgers into PostgreSQL, line for line"),
        ("from-postgres", "write PostgreSQL ledgers out as files, line for line"),
    ):
        copy = add(name, help=what)
        copy.add_argument("ids", nargs="*", metavar="RUN NODE", help="one ledger (or --all)")
        copy.add_argument("--all", action="store_true", help="every ledger")
        copy.add_argument("--dsn", help=dsn_help)


def prune(args: argparse.Namespace, root: Path) -> int:
    import time

    from ._remove import parse_duration, prune_run, runs_older_than

    try:
        cutoff = time.time_ns() // 1_000_000 - parse_duration(args.older_than)
    except ValueError as error:
        raise UsageError(f"--older-than: {error}") from None
    if args.lock_timeout is not None and not args.lock_timeout >= 0:
        raise UsageError(f"--lock-timeout must be >= 0, not {args.lock_timeout}")

    def say(text: str) -> None:  # paths may hold newlines, or bytes that are not UTF-8
        sys.stdout.buffer.write(os.fsencode(text.replace("\n", "\\n")) + b"\n")
        sys.stdout.buffer.flush()

    for run_dir, ledgers in runs_older_than(root, cutoff):
        if args.dry_run:
            for path in ledgers:
                say(f"would remove {path}")
            say(f"would remove {run_dir}")
            continue
        removal = prune_run(run_dir, cutoff, lock_timeout=args.lock_timeout)
        for path in removal.ledgers:
            say(f"removed {path}")
        if removal.dir_removed:
            say(f"removed {run_dir}")
        elif removal.kept is not None:
            say(f"kept {run_dir}: {removal.kept}")
    return 0


def _postgres(args: argparse.Namespace) -> tuple[Any, str]:
    dsn = args.dsn or os.environ.get("ATTEMPT_LEDGER_PG_DSN")
    if not dsn:
        raise UsageError("no database: give --dsn or set $ATTEMPT_LEDGER_PG_DSN")
    try:
        from . import postgres
    except ImportError:
        raise UsageError(
            "PostgreSQL support needs: pip install 'attempt_ledger[postgres]'"
        ) from None
    return postgres, dsn


def pg_migrate(args: argparse.Namespace, root: Path) -> int:
    postgres, dsn = _postgres(args)
    print(json_text({"schema_version": _database(postgres.migrate, dsn)}))
    return 0


def _database(call: Any, *args: Any) -> Any:
    import psycopg

    try:
        return call(*args)
    except psycopg.Error as error:
        raise Failure(f"database: {str(error).strip()}") from None


def to_postgres(args: argparse.Namespace, root: Path) -> int:
    from ._paths import iter_ledgers, receipts_path

    postgres, dsn = _postgres(args)
    ids = one_or_all(args)
    paths = [receipts_path(root, *ids)] if ids else [path for _, _, path in iter_ledgers(root)]
    for path in paths:
        run_id, node_id, count = _database(postgres.copy_to_postgres, path, dsn)
        print(
            json_text({"path": str(path), "run_id": run_id, "node_id": node_id, "records": count})
        )
    return 0


def from_postgres(args: argparse.Namespace, root: Path) -> int:
    postgres, dsn = _postgres(args)
    ids = one_or_all(args)
    for run_id, node_id in [tuple(ids)] if ids else _database(postgres.ledger_ids, dsn):
        path = _database(postgres.copy_from_postgres, dsn, run_id, node_id, root)
        print(json_text({"run_id": run_id, "node_id": node_id, "path": str(path)}))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Path], int]] = {
    "prune": prune,
    "pg-migrate": pg_migrate,
    "to-postgres": to_postgres,
    "from-postgres": from_postgres,
}
