"""What every command of the command line shares: its errors, argument types and output."""

from __future__ import annotations

import argparse
import codecs
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from ._errors import LedgerIOError
from ._files import _not_regular
from ._records import U32_MAX, U64_MAX

USAGE, FAILURE = 2, 3


class UsageError(Exception):
    """Bad arguments or input: one line on stderr, exit 2."""


class Failure(Exception):
    """An error outside the ledger (the database): one line on stderr, exit 3."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (exit 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: {message} (see --help)\n")


def number(low: int, high: int) -> Callable[[str], int]:
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


def root_dir(text: str) -> Path:
    if not text:
        raise argparse.ArgumentTypeError("empty path")
    return Path(text)


U32, U64, COUNT = number(0, U32_MAX), number(0, U64_MAX), number(0, 2**63 - 1)


def ledger_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run id (raw; sanitized for the path)")
    parser.add_argument("node", metavar="NODE", help="node id (raw; sanitized for the path)")


def _unencodable(error: UnicodeError) -> tuple[str | bytes, int]:
    # A path that is not UTF-8 (os.fsdecode made its bytes surrogates) goes out as its bytes;
    # anything else the stream cannot encode (a lone "\ud800", any non-ASCII in the C locale)
    # as a backslash escape.
    try:
        return codecs.lookup_error("surrogateescape")(error)
    except UnicodeError:
        return codecs.lookup_error("backslashreplace")(error)


UNENCODABLE = "attempt_ledger.unencodable"
codecs.register_error(UNENCODABLE, _unencodable)
_SURROGATE = re.compile("[\ud800-\udfff]")


def json_text(obj: Any) -> str:
    # A lone surrogate (from a path that is not UTF-8) as its JSON escape: valid JSON, and
    # json.loads then os.fsencode give the path's bytes back.
    text = json.dumps(obj, ensure_ascii=False, default=str)
    return _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line: the database driver's span lines (a hint below)."""
    return _LINE_BREAKS.sub(" ", str(error).strip())


_LINE_BREAKS = re.compile(r"[ \t]*[\r\n]+\s*")


def existing(path: Path, *, required: bool = True) -> Path:
    """Check the ledger at ``path`` is a regular file (opening a FIFO would block; a symbolic
    link is never followed), or missing when not ``required``.

    :raises UsageError: if it is missing and ``required``.
    :raises LedgerIOError: if it is not a regular file, or cannot be looked up.
    """
    try:
        mode = os.lstat(path).st_mode  # a symlink is named as one, dangling or not
    except FileNotFoundError:
        if required:
            raise UsageError(f"{path}: no such ledger") from None
        return path
    except OSError as error:
        raise LedgerIOError.wrap(path, "open the ledger", error) from error
    if not stat.S_ISREG(mode):
        raise _not_regular(path, mode, None)
    return path


def one_or_all(args: argparse.Namespace) -> list[str] | None:
    if args.all == bool(args.ids) or (args.ids and len(args.ids) != 2):
        raise UsageError(f"{args.command} takes RUN NODE, or --all")
    return None if args.all else list(args.ids)
