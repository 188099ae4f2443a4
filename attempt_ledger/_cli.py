"""The ``attempt-ledger`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ._errors import LedgerError
from ._paths import receipts_root


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attempt-ledger", description="Inspect and exercise attempt-receipt ledgers."
    )
    parser.add_argument(
        "--root",
        type=Path,
        help="receipts root (default: $ATTEMPT_LEDGER_DIR, else the per-user state directory)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="worker processes append to one ledger while another process reconciles"
    )
    demo.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    demo.add_argument("--appends", type=int, default=2000, help="appends per worker (default 2000)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    root: Path = args.root or receipts_root()
    try:
        if args.command == "demo":
            from ._demo import run_demo

            return run_demo(root, max(args.workers, 1), max(args.appends, 1))
    except LedgerError as error:
        print(f"attempt-ledger: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    raise AssertionError(args.command)  # pragma: no cover - argparse allows no other
