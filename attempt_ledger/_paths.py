"""Where ledgers live: the root directory, and one file per (run, node) below it."""

from __future__ import annotations

import errno
import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from ._codec import rust_trim
from ._errors import LedgerIOError

#: Environment variable that names the receipts root used by :func:`receipts_root`.
ROOT_ENV = "ATTEMPT_LEDGER_DIR"

#: Name of the receipts directory inside a state directory, as in the seed.
RECEIPTS_DIRNAME = "automation_attempt_receipts"

LEDGER_SUFFIX = ".jsonl"
LOCK_SUFFIX = ".lock"

#: The longest file name, in bytes, that the library counts on: Linux's NAME_MAX, which ext4,
#: XFS, Btrfs, tmpfs and ZFS share.
NAME_MAX = 255

# Hex digits of SHA-256 that tell shortened lock names apart (64 bits).
_LOCK_HASH_CHARS = 16


def sanitize_segment(raw: str) -> str:
    """Turn an id into a safe path segment, exactly as the seed does.

    Rust-trim ``raw``; replace every character but ASCII letters, digits, ``-`` and ``_`` with
    ``-``; strip leading and trailing ``-``; an empty result becomes ``"unknown"``. Different ids
    can map to the same segment (``"a/b"`` and ``"a:b"``): the ids stored in each receipt keep them
    apart.
    """
    value = "".join(
        ch if (ch.isascii() and ch.isalnum()) or ch in "-_" else "-" for ch in rust_trim(raw)
    ).strip("-")
    return value or "unknown"


def receipts_path(root: str | os.PathLike[str], run_id: str, node_id: str) -> Path:
    """Return ``root / sanitize(run_id) / (sanitize(node_id) + ".jsonl")``."""
    return Path(root) / sanitize_segment(run_id) / f"{sanitize_segment(node_id)}{LEDGER_SUFFIX}"


def lock_path_for(ledger_path: Path) -> Path:
    """Return the sidecar lock file of a ledger: ``<node>.jsonl.lock`` beside it.

    When that name would pass :data:`NAME_MAX` bytes (ledger names of 251 to 255 bytes), it is
    ``<start of the ledger name>.<hash of the whole name>.lock`` instead: still unique per
    ledger, and never another ledger's ``*.jsonl.lock``.
    """
    name = ledger_path.name + LOCK_SUFFIX
    if len(os.fsencode(name)) <= NAME_MAX:
        return ledger_path.with_name(name)
    digest = hashlib.sha256(os.fsencode(ledger_path.name)).hexdigest()[:_LOCK_HASH_CHARS]
    suffix = f".{digest}{LOCK_SUFFIX}"
    start = ledger_path.name[: NAME_MAX - len(suffix)]  # characters: at least as many bytes
    while len(os.fsencode(start + suffix)) > NAME_MAX:
        start = start[:-1]  # whole characters, so a multi-byte one is never split
    return ledger_path.with_name(start + suffix)


def name_error(path: Path) -> LedgerIOError | None:
    """Return the error for a ledger path whose run directory or file name cannot exist.

    Both must fit :data:`NAME_MAX` bytes; checked up front, so nothing is created for a ledger
    that could never be.
    """
    for part in (path.parent, path):
        size = len(os.fsencode(part.name))
        if size > NAME_MAX:
            reason = f"cannot be created: its name is {size} bytes, the limit is {NAME_MAX}"
            return LedgerIOError(part, reason, errno.ENAMETOOLONG)
    return None


def _user_state_dir() -> Path:
    home = Path.home()
    if sys.platform == "win32":  # pragma: no cover - POSIX is what CI runs
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "attempt_ledger"
    if sys.platform == "darwin":  # pragma: no cover
        return home / "Library" / "Application Support" / "attempt_ledger"
    state_home = os.environ.get("XDG_STATE_HOME")
    base = (
        Path(state_home) if state_home and os.path.isabs(state_home) else home / ".local" / "state"
    )
    return base / "attempt_ledger"


def receipts_root() -> Path:
    """Return the default receipts root.

    ``$ATTEMPT_LEDGER_DIR`` when it is set and not empty; otherwise the per-user state directory
    plus ``automation_attempt_receipts``: ``$XDG_STATE_HOME/attempt_ledger/...`` (default
    ``~/.local/state``) on Linux, ``~/Library/Application Support/attempt_ledger/...`` on macOS,
    ``%LOCALAPPDATA%\\attempt_ledger\\...`` on Windows.
    """
    configured = os.environ.get(ROOT_ENV)
    if configured:
        return Path(configured)
    return receipts_root_for_state_dir(_user_state_dir())


def iter_ledgers(root: str | os.PathLike[str]) -> Iterator[tuple[str, str, Path]]:
    """Yield ``(run directory name, node name, path)`` for every ledger under ``root``, sorted.

    A missing root has no ledgers. The names are the sanitized segments; the raw ids are in the
    receipts. Only regular files count: a symlink, FIFO or socket named ``*.jsonl`` is no
    ledger (the ledger would refuse to open it); run directories may be symlinks.

    :raises OSError: if ``root`` exists but cannot be listed.
    """
    base = Path(root)
    try:
        with os.scandir(base) as entries:
            runs = sorted(entry.name for entry in entries if entry.is_dir())
    except FileNotFoundError:
        return
    for run in runs:
        try:
            with os.scandir(base / run) as entries:
                names = sorted(
                    e.name
                    for e in entries
                    if e.name.endswith(LEDGER_SUFFIX) and e.is_file(follow_symlinks=False)
                )
        except FileNotFoundError:
            continue  # removed since the runs were listed (remove_run, prune): no ledgers now
        for name in names:
            yield run, name[: -len(LEDGER_SUFFIX)], base / run / name


def receipts_root_for_state_dir(state_dir: str | os.PathLike[str]) -> Path:
    """Return ``state_dir / "automation_attempt_receipts"``."""
    return Path(state_dir) / RECEIPTS_DIRNAME


def receipt_path_for_state_dir(
    state_dir: str | os.PathLike[str], run_id: str, node_id: str
) -> Path:
    """Return the ledger path for (run, node) under a state directory."""
    return receipts_path(receipts_root_for_state_dir(state_dir), run_id, node_id)


def to_root(value: str | os.PathLike[str]) -> Path:
    """Check and convert a receipts root given by a caller.

    :raises TypeError: if it is not a ``str`` or an ``os.PathLike`` of ``str``.
    :raises ValueError: if it holds a NUL or cannot be encoded as a file name.
    """
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"root must be a str or an os.PathLike, not {type(value).__name__}")
    try:
        root = Path(value)
        os.fsencode(root)
    except TypeError:
        raise TypeError(f"root must be a str path, not {value!r}") from None
    except UnicodeEncodeError as error:
        raise ValueError(f"root {value!r} cannot be encoded as a file name: {error}") from None
    if "\x00" in str(root):
        raise ValueError(f"root {value!r} contains a NUL character")
    return root
