"""The ``attempt-ledger`` command line (also ``python -m attempt_ledger``).

Exit status: 0 done; 1 a negative answer (``reconcile`` timed out, ``verify`` found problems);
2 a usage error or bad input; 3 an error of the ledger or the system (I/O, lock timeout).
"""

from __future__ import annotations

import argparse
import codecs
import io
import json
import os
import re
import stat
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import attrs

from ._errors import InvalidEvent, LedgerError, LedgerIOError
from ._ledger import AttemptLedger
from ._paths import receipts_root
from ._records import U32_MAX, U64_MAX, ReceiptEvent

USAGE, FAILURE = 2, 3


class _UsageError(Exception):
    """Bad arguments or input: one line on stderr, exit 2."""


class _Failure(Exception):
    """An error outside the ledger (the database): one line on stderr, exit 3."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (exit 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: {message} (see --help)\n")


def _number(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in ``low..high``."""

    def parse(text: str) -> int:
        # int() would also take " 1", "1_0" and other scripts' digits.
        if not re.fullmatch("[+-]?[0-9]+", text, re.ASCII):
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
        value = int(text) if len(text) <= 40 else high + 1  # int() refuses 4,300 digits
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text[:40]} is outside {low}..{high}")
        return value

    return parse


def _root_dir(text: str) -> Path:
    if not text:
        raise argparse.ArgumentTypeError("empty path")
    return Path(text)


_U32, _U64, _COUNT = _number(0, U32_MAX), _number(0, U64_MAX), _number(0, 2**63 - 1)


def _ledger_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run id (raw; sanitized for the path)")
    parser.add_argument("node", metavar="NODE", help="node id (raw; sanitized for the path)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="attempt-ledger", description="Inspect and write attempt-receipt ledgers."
    )
    parser.add_argument(
        "--root",
        type=_root_dir,
        help="receipts root (default: $ATTEMPT_LEDGER_DIR, else the per-user state directory)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = commands.add_parser

    demo = add("demo", help="worker processes append to one ledger while another reconciles")
    demo.add_argument(
        "--workers", type=_number(1, 16), default=4, help="worker processes, 1..16 (default 4)"
    )
    demo.add_argument(
        "--appends",
        type=_number(1, 100_000),
        default=2000,
        help="appends per worker, 1..100000 (default 2000)",
    )

    ls = add("ls", help="runs and nodes under the root, with record counts and last seq")
    ls.add_argument("--json", action="store_true", help="one JSON object per ledger")

    show = add("show", help="a ledger's records as a table")
    _ledger_args(show)
    show.add_argument("--attempt", type=_U32, help="only this attempt")
    show.add_argument("--session", help="only this session id")
    show.add_argument("--event-type", help="only this event type")
    show.add_argument("--since-seq", type=_U64, default=0, help="only records after this seq")
    show.add_argument("--json", action="store_true", help="the matching lines, unchanged")

    tail = add("tail", help="the last records; -f follows new ones until interrupted")
    _ledger_args(tail)
    tail.add_argument("-n", type=_COUNT, default=10, help="how many records (default 10)")
    tail.add_argument("-f", "--follow", action="store_true", help="then follow new appends")
    tail.add_argument("--json", action="store_true", help="the lines, unchanged")

    append = add("append", help="append events: JSON lines on stdin, or one from the options")
    _ledger_args(append)
    append.add_argument("--attempt", type=_U32, required=True)
    append.add_argument("--session", required=True)
    append.add_argument("--event-type", help="one event of this type instead of stdin")
    append.add_argument("--payload", help="its payload, as JSON (default null)")
    append.add_argument("--durable", action="store_true", help="fsync the append")

    last_help = "the seq of the ledger's last valid line (0 if there is none, or no ledger)"
    last = add("last-seq", help=last_help, description=last_help)
    _ledger_args(last)

    rec = add("reconcile", help="wait for a seq; exit 0 found, 1 timed out")
    _ledger_args(rec)
    rec.add_argument("--min-seq", type=_U64, required=True)
    rec.add_argument("--timeout-ms", type=_U32, required=True)
    rec.add_argument("--poll-ms", type=_U32, default=10)

    verify = add("verify", help="check ledgers line by line; exit 0 clean, 1 problems")
    verify.add_argument("ids", nargs="*", metavar="RUN NODE", help="one ledger (or --all)")
    verify.add_argument("--all", action="store_true", help="every ledger under the root")

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors=_UNENCODABLE)
    args = _parser().parse_args(argv)
    root: Path = args.root or receipts_root()
    try:
        return _COMMANDS[args.command](args, root)
    except _UsageError as error:
        print(f"attempt-ledger: {error}", file=sys.stderr)
        return USAGE
    except (LedgerError, _Failure) as error:
        print(f"attempt-ledger: {error}", file=sys.stderr)
        return FAILURE
    except BrokenPipeError:  # `attempt-ledger show ... | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130


def _ledger(args: argparse.Namespace, root: Path, **options: Any) -> AttemptLedger:
    return AttemptLedger(root, args.run, args.node, **options)


def _unencodable(error: UnicodeError) -> tuple[str | bytes, int]:
    # A path that is not UTF-8 (os.fsdecode made its bytes surrogates) goes out as its bytes;
    # anything else the stream cannot encode (a lone "\ud800", any non-ASCII in the C locale)
    # as a backslash escape.
    try:
        return codecs.lookup_error("surrogateescape")(error)
    except UnicodeError:
        return codecs.lookup_error("backslashreplace")(error)


_UNENCODABLE = "attempt_ledger.unencodable"
codecs.register_error(_UNENCODABLE, _unencodable)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _json(obj: Any) -> str:
    # A lone surrogate (from a path that is not UTF-8) as its JSON escape: valid JSON, and
    # json.loads then os.fsencode give the path's bytes back.
    text = json.dumps(obj, ensure_ascii=False, default=str)
    return _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def _existing(path: Path, *, required: bool = True) -> Path:
    """Check the ledger at ``path`` is a regular file (opening a FIFO would block), or missing
    when not ``required``.

    :raises _UsageError: if it is missing and ``required``.
    :raises LedgerIOError: if it is not a regular file, or cannot be looked up.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if required:
            raise _UsageError(f"{path}: no such ledger") from None
        return path
    except OSError as error:
        raise LedgerIOError.wrap(path, "open the ledger", error) from error
    if not stat.S_ISREG(mode):
        raise LedgerIOError(path, "cannot open the ledger: not a regular file")
    return path


def _demo(args: argparse.Namespace, root: Path) -> int:
    from ._demo import run_demo

    try:
        return run_demo(root, args.workers, args.appends)
    except TimeoutError as error:  # the workers stalled (LockTimeout is a LedgerError)
        if isinstance(error, LedgerError):
            raise
        raise _Failure(f"demo: {error}") from None


def _ls(args: argparse.Namespace, root: Path) -> int:
    from ._inspect import ledger_summaries

    for summary in ledger_summaries(root):
        if args.json:
            print(_json(summary))
        else:
            print(
                f"{summary['run']}/{summary['node']}  records={summary['records']}  "
                f"last_seq={summary['last_seq']}  bytes={summary['bytes']}"
            )
    return 0


def _show(args: argparse.Namespace, root: Path) -> int:
    from ._inspect import print_rows, record_row
    from ._reader import iter_decoded

    path = _existing(_ledger(args, root).path)

    def matching() -> Any:
        for record, line, _ in iter_decoded(path):
            if record is None or line is None or record.seq <= args.since_seq:
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
        print_rows((record_row(r) for r, _ in matching()), sys.stdout)
    return 0


def _tail(args: argparse.Namespace, root: Path) -> int:
    from ._inspect import follow_lines, last_records, print_rows, record_row

    ledger = _ledger(args, root)
    last = last_records(_existing(ledger.path), args.n)
    if args.json:
        sys.stdout.buffer.writelines(line + b"\n" for _, line in last)
    else:
        print_rows((record_row(r) for r, _ in last), sys.stdout)
    sys.stdout.flush()
    if args.follow:
        since = last[-1][0].seq if last else ledger.last_seq()
        stop = threading.Event()
        try:
            for record, line in follow_lines(ledger.path, since, poll_interval=0.1, stop=stop):
                if args.json:
                    sys.stdout.buffer.write(line + b"\n")
                else:
                    print_rows([record_row(record)], sys.stdout, header=False)
                sys.stdout.flush()
        except KeyboardInterrupt:
            stop.set()
    return 0


def _append(args: argparse.Namespace, root: Path) -> int:
    if args.event_type is not None:
        try:
            payload = None if args.payload is None else json.loads(args.payload)
        except ValueError as error:
            raise _UsageError(f"--payload is not JSON: {error}") from None
        events = [ReceiptEvent(args.event_type, payload)]
    else:
        if args.payload is not None:
            raise _UsageError("--payload goes with --event-type")
        from ._inspect import read_events

        if sys.stdin is None:  # started with stdin closed
            raise _UsageError("no events: stdin is closed (give --event-type)")
        # Bytes that are not UTF-8 become surrogates, which the checks name with their line.
        stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape")
        try:
            events = read_events(stdin)
        except ValueError as error:
            raise _UsageError(str(error)) from None
    ledger = _ledger(args, root, durable=args.durable)
    try:
        summary = ledger.append(args.attempt, args.session, events)
    except InvalidEvent as error:  # bad input: nothing was written
        raise _UsageError(str(error)) from None
    finally:
        ledger.close()
    print(_json(attrs.asdict(summary)))
    return 0


def _last_seq(args: argparse.Namespace, root: Path) -> int:
    ledger = _ledger(args, root)
    _existing(ledger.path, required=False)  # a missing ledger's last seq is 0, as in the seed
    print(ledger.last_seq())
    return 0


def _reconcile(args: argparse.Namespace, root: Path) -> int:
    ledger = _ledger(args, root)
    _existing(ledger.path, required=False)  # a missing ledger is waited for
    summary = ledger.reconcile(args.min_seq, args.timeout_ms, args.poll_ms)
    print(_json(attrs.asdict(summary)))
    return 0 if summary.found else 1


def _verify(args: argparse.Namespace, root: Path) -> int:
    from ._paths import receipts_path, sanitize_segment
    from ._verify import verify_ledger, verify_root

    ids = _one_or_all(args)
    if ids is None:
        problems = verify_root(root)
    else:
        run, node = ids
        path = _existing(receipts_path(root, run, node))
        problems = verify_ledger(path, sanitize_segment(run), sanitize_segment(node))
    found = 0
    for problem in problems:
        found += 1
        print(problem)
    print(f"{found} problem{'s' if found != 1 else ''} found", file=sys.stderr)
    return 1 if found else 0


def _prune(args: argparse.Namespace, root: Path) -> int:
    import time

    from ._remove import parse_duration, prune_run, runs_older_than

    try:
        cutoff = time.time_ns() // 1_000_000 - parse_duration(args.older_than)
    except ValueError as error:
        raise _UsageError(f"--older-than: {error}") from None
    if args.lock_timeout is not None and not args.lock_timeout >= 0:
        raise _UsageError(f"--lock-timeout must be >= 0, not {args.lock_timeout}")

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
        raise _UsageError("no database: give --dsn or set $ATTEMPT_LEDGER_PG_DSN")
    try:
        from . import postgres
    except ImportError:
        raise _UsageError(
            "PostgreSQL support needs: pip install 'attempt_ledger[postgres]'"
        ) from None
    return postgres, dsn


def _one_or_all(args: argparse.Namespace) -> list[str] | None:
    if args.all == bool(args.ids) or (args.ids and len(args.ids) != 2):
        raise _UsageError(f"{args.command} takes RUN NODE, or --all")
    return None if args.all else list(args.ids)


def _pg_migrate(args: argparse.Namespace, root: Path) -> int:
    postgres, dsn = _postgres(args)
    print(_json({"schema_version": _database(postgres.migrate, dsn)}))
    return 0


def _database(call: Any, *args: Any) -> Any:
    import psycopg

    try:
        return call(*args)
    except psycopg.Error as error:
        raise _Failure(f"database: {str(error).strip()}") from None


def _to_postgres(args: argparse.Namespace, root: Path) -> int:
    from ._paths import iter_ledgers, receipts_path

    postgres, dsn = _postgres(args)
    ids = _one_or_all(args)
    paths = [receipts_path(root, *ids)] if ids else [path for _, _, path in iter_ledgers(root)]
    for path in paths:
        run_id, node_id, count = _database(postgres.copy_to_postgres, path, dsn)
        print(_json({"path": str(path), "run_id": run_id, "node_id": node_id, "records": count}))
    return 0


def _from_postgres(args: argparse.Namespace, root: Path) -> int:
    postgres, dsn = _postgres(args)
    ids = _one_or_all(args)
    for run_id, node_id in [tuple(ids)] if ids else _database(postgres.ledger_ids, dsn):
        path = _database(postgres.copy_from_postgres, dsn, run_id, node_id, root)
        print(_json({"run_id": run_id, "node_id": node_id, "path": str(path)}))
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
    "prune": _prune,
    "pg-migrate": _pg_migrate,
    "to-postgres": _to_postgres,
    "from-postgres": _from_postgres,
}
