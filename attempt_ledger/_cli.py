"""The ``attempt-ledger`` command line (also ``python -m attempt_ledger``).

Exit status: 0 done; 1 a negative answer (``reconcile`` timed out, ``verify`` found problems);
2 a usage error or bad input; 3 an error of the ledger or the system (I/O, lock timeout).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from ._cli_admin import COMMANDS as admin_commands
from ._cli_admin import add_commands as add_admin_commands
from ._cli_support import (
    COUNT,
    FAILURE,
    U32,
    U64,
    UNENCODABLE,
    USAGE,
    Failure,
    Parser,
    UsageError,
    existing,
    json_text,
    ledger_args,
    number,
    one_line,
    one_or_all,
    root_dir,
)
from ._errors import InvalidEvent, LedgerError
from ._ledger import AttemptLedger
from ._paths import receipts_root
from ._records import ReceiptEvent
from ._verify import chain_problems


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="attempt-ledger", description="Inspect and write attempt-receipt ledgers.")
    parser.add_argument(
        "--root",
        type=root_dir,
        help="receipts root (default: $ATTEMPT_LEDGER_DIR, else the per-user state directory)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = commands.add_parser

    demo = add("demo", help="worker processes append to one ledger while another reconciles")
    demo.add_argument(
        "--workers", type=number(1, 16), default=4, help="worker processes, 1..16 (default 4)"
    )
    demo.add_argument(
        "--appends",
        type=number(1, 100_000),
        default=2000,
        help="appends per worker, 1..100000 (default 2000)",
    )

    ls = add("ls", help="runs and nodes under the root, with record counts and last seq")
    ls.add_argument("--json", action="store_true", help="one JSON object per ledger")

    show = add("show", help="a ledger's records as a table")
    ledger_args(show)
    show.add_argument("--attempt", type=U32, help="only this attempt")
    show.add_argument("--session", help="only this session id")
    show.add_argument("--event-type", help="only this event type")
    show.add_argument("--since-seq", type=U64, help="only records after this seq")
    show.add_argument("--json", action="store_true", help="the matching lines, unchanged")

    tail = add("tail", help="the last records; -f follows new ones until interrupted")
    ledger_args(tail)
    tail.add_argument("-n", type=COUNT, default=10, help="how many records (default 10)")
    tail.add_argument("-f", "--follow", action="store_true", help="then follow new appends")
    tail.add_argument("--json", action="store_true", help="the lines, unchanged")

    append = add("append", help="append events: JSON lines on stdin, or one from the options")
    ledger_args(append)
    append.add_argument("--attempt", type=U32, required=True)
    append.add_argument("--session", required=True)
    append.add_argument("--event-type", help="one event of this type instead of stdin")
    append.add_argument("--payload", help="its payload, as JSON (default null)")
    append.add_argument("--durable", action="store_true", help="fsync the append")
    append.add_argument(
        "--hash-chain",
        action="store_true",
        help="write schema-2 (hash-chained) records; a chained ledger is continued anyway",
    )

    last_help = "the seq of the ledger's last valid line (0 if there is none, or no ledger)"
    last = add("last-seq", help=last_help, description=last_help)
    ledger_args(last)

    rec = add("reconcile", help="wait for a seq; exit 0 found, 1 timed out")
    ledger_args(rec)
    rec.add_argument("--min-seq", type=U64, required=True)
    rec.add_argument("--timeout-ms", type=U32, required=True)
    rec.add_argument("--poll-ms", type=U32, default=10)

    verify = add("verify", help="check ledgers line by line; exit 0 clean, 1 problems")
    verify.add_argument("ids", nargs="*", metavar="RUN NODE", help="one ledger (or --all)")
    verify.add_argument("--all", action="store_true", help="every ledger under the root")
    verify.add_argument(
        "--root-hash",
        metavar="HEX",
        help="a root hash saved earlier (see manifest): some record must have it, or the "
        "ledger was truncated or rewritten since",
    )

    manifest_help = "the ledger's manifest as JSON: record count, last seq, root hash"
    manifest = add("manifest", help=manifest_help, description=manifest_help)
    ledger_args(manifest)

    add_admin_commands(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors=UNENCODABLE)
    args = _parser().parse_args(argv)
    root: Path = args.root or receipts_root()
    try:
        return _COMMANDS[args.command](args, root)
    except UsageError as error:
        print(f"attempt-ledger: {one_line(error)}", file=sys.stderr)
        return USAGE
    except (LedgerError, Failure) as error:
        print(f"attempt-ledger: {one_line(error)}", file=sys.stderr)
        return FAILURE
    except BrokenPipeError:  # `attempt-ledger show ... | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130


def _ledger(args: argparse.Namespace, root: Path, **options: Any) -> AttemptLedger:
    return AttemptLedger(root, args.run, args.node, **options)


def _demo(args: argparse.Namespace, root: Path) -> int:
    from ._demo import run_demo

    try:
        return run_demo(root, args.workers, args.appends)
    except TimeoutError as error:  # the workers stalled (LockTimeout is a LedgerError)
        if isinstance(error, LedgerError):
            raise
        raise Failure(f"demo: {error}") from None


def _ls(args: argparse.Namespace, root: Path) -> int:
    from ._inspect import ledger_summaries

    for summary in ledger_summaries(root):
        if args.json:
            print(json_text(summary))
        else:
            print(
                f"{summary['run']}/{summary['node']}  records={summary['records']}  "
                f"last_seq={summary['last_seq']}  bytes={summary['bytes']}"
            )
    return 0


def _show(args: argparse.Namespace, root: Path) -> int:
    from ._inspect import print_rows, record_row
    from ._reader import iter_decoded

    path = existing(_ledger(args, root).path)

    def matching() -> Any:
        for record, line, _ in iter_decoded(path):
            if record is None or line is None:
                continue
            if args.since_seq is not None and record.seq <= args.since_seq:
                continue
            if args.attempt is not None and record.attempt != args.attempt:
                continue
            if args.session is not None and record.session_id != args.session:
                continue
            if args.event_type is not None and record.event_type != args.event_type:
                continue
            yield record, line

    if args.json:
        for _, line in matching():
            sys.stdout.buffer.write(line + b"\n")
    else:
        print_rows((record_row(r, line) for r, line in matching()), sys.stdout)
    return 0


def _tail(args: argparse.Namespace, root: Path) -> int:
    from ._inspect import follow_lines, last_records, print_rows, record_row

    ledger = _ledger(args, root)
    last = last_records(existing(ledger.path), args.n)
    if args.json:
        sys.stdout.buffer.writelines(line + b"\n" for _, line in last)
    else:
        print_rows((record_row(r, line) for r, line in last), sys.stdout)
    sys.stdout.flush()
    if args.follow:
        since = last[-1][0].seq if last else ledger.last_seq()
        stop = threading.Event()
        try:
            for record, line in follow_lines(ledger.path, since, poll_interval=0.1, stop=stop):
                if args.json:
                    sys.stdout.buffer.write(line + b"\n")
                else:
                    print_rows([record_row(record, line)], sys.stdout, header=False)
                sys.stdout.flush()
        except KeyboardInterrupt:
            stop.set()
    return 0


def _append(args: argparse.Namespace, root: Path) -> int:
    if args.event_type is not None:
        try:
            payload = None if args.payload is None else json.loads(args.payload)
        except ValueError as error:
            raise UsageError(f"--payload is not JSON: {error}") from None
        except RecursionError:  # nested past the stack: far past what a payload may nest
            raise UsageError("--payload is not JSON this library reads: nested too deep") from None
        events = [ReceiptEvent(args.event_type, payload)]
    else:
        if args.payload is not None:
            raise UsageError("--payload goes with --event-type")
        from ._inspect import read_events

        if sys.stdin is None:  # started with stdin closed
            raise UsageError("no events: stdin is closed (give --event-type)")
        # Bytes that are not UTF-8 become surrogates, which the checks name with their line.
        stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape")
        try:
            events = read_events(stdin)
        except ValueError as error:
            raise UsageError(str(error)) from None
    ledger = _ledger(args, root, durable=args.durable, hash_chain=args.hash_chain)
    try:
        summary = ledger.append(args.attempt, args.session, events)
    except InvalidEvent as error:  # bad input: nothing was written
        raise UsageError(str(error)) from None
    finally:
        ledger.close()
    print(json_text(attrs.asdict(summary)))
    return 0


def _last_seq(args: argparse.Namespace, root: Path) -> int:
    ledger = _ledger(args, root)
    existing(ledger.path, required=False)  # a missing ledger's last seq is 0, as in the seed
    print(ledger.last_seq())
    return 0


def _reconcile(args: argparse.Namespace, root: Path) -> int:
    ledger = _ledger(args, root)
    existing(ledger.path, required=False)  # a missing ledger is waited for
    summary = ledger.reconcile(args.min_seq, args.timeout_ms, args.poll_ms)
    print(json_text(attrs.asdict(summary)))
    return 0 if summary.found else 1


def _verify(args: argparse.Namespace, root: Path) -> int:
    from ._chain import is_hash
    from ._paths import receipts_path, sanitize_segment
    from ._verify import verify_ledger, verify_root

    ids = one_or_all(args)
    if args.root_hash is not None and (ids is None or not is_hash(args.root_hash)):
        raise UsageError("--root-hash takes 64 lowercase hex digits, with RUN NODE")
    if ids is None:
        problems = verify_root(root)
    else:
        run, node = ids
        path = existing(receipts_path(root, run, node))
        lines = verify_ledger(path, sanitize_segment(run), sanitize_segment(node))
        problems = itertools.chain(lines, chain_problems(path, args.root_hash))
    found = 0
    for problem in problems:
        found += 1
        print(problem)
    print(f"{found} problem{'s' if found != 1 else ''} found", file=sys.stderr)
    return 1 if found else 0


def _manifest(args: argparse.Namespace, root: Path) -> int:
    from ._manifest import receipt_ledger_manifest

    path = existing(_ledger(args, root).path)
    print(receipt_ledger_manifest(path).to_json())
    return 0


_COMMANDS = {
    "demo": _demo,
    "ls": _ls,
    "show": _show,
    "tail": _tail,
    "append": _append,
    "last-seq": _last_seq,
    "reconcile": _reconcile,
    "verify": _verify,
    "manifest": _manifest,
    **admin_commands,
}
