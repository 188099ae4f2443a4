"""Where ledgers live: the root directory, and one file per (run, node) below it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

from ._codec import rust_trim

#: Environment variable that names the receipts root used by :func:`receipts_root`.
ROOT_ENV = "ATTEMPT_LEDGER_DIR"

#: Name of the receipts directory inside a state directory, as in the seed.
RECEIPTS_DIRNAME = "automation_attempt_receipts"

LEDGER_SUFFIX = ".jsonl"
LOCK_SUFFIX = ".lock"


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
    """Return the sidecar lock file of a ledger: ``<node>.jsonl.lock`` beside it."""
    return ledger_path.with_name(ledger_path.name + LOCK_SUFFIX)


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
    receipts.

    :raises OSError: if ``root`` exists but cannot be listed.
    """
    base = Path(root)
    try:
        with os.scandir(base) as entries:
            runs = sorted(entry.name for entry in entries if entry.is_dir())
    except FileNotFoundError:
        return
    for run in runs:
        with os.scandir(base / run) as entries:
            names = sorted(
                e.name for e in entries if e.name.endswith(LEDGER_SUFFIX) and e.is_file()
            )
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
