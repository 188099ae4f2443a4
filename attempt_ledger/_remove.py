"""Removing ledgers and runs under their locks, and choosing the runs ``prune`` removes.

``rm`` races the writers: one holding a ledger open goes on appending into the deleted file,
and deleting a lock file someone holds lets a second writer make a new one and interleave. Here
a ledger is removed under its sidecar lock: the ledger is unlinked, then the lock file, while
the lock is still held. A writer that was waiting for the lock, or comes later, finds the lock
file it holds unlinked (``st_nlink`` 0), opens the path afresh, and, its ledger descriptor
being unlinked too, starts a new ledger at the path instead of writing into the removed one.

That detection counts links, so a ledger or lock file with a second hard link is refused: after
the unlink a writer holding it open would still see one link and go on appending to it.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import attrs

from ._errors import LedgerIOError
from ._inspect import last_records
from ._locking import SidecarLock, check_timeout
from ._paths import LEDGER_SUFFIX, LOCK_SUFFIX, iter_ledgers, lock_path_for, sanitize_segment

# Called under a ledger's lock before it is removed: a reason to keep it, or None.
_Keep = Callable[[Path], "str | None"]


@attrs.frozen
class Removal:
    """What :func:`remove_ledger` or :func:`remove_run` (or their path forms) did.

    Nothing there to remove is not an error: ``files`` is then empty.

    :ivar path: the ledger file, or the run directory.
    :ivar files: the files unlinked, in order: each ledger, then its lock file.
    :ivar dir_removed: whether the run directory was removed (always ``False`` for a ledger).
    :ivar kept: why the run directory is still there, or ``None``: "not empty: ..." when a
        writer started a ledger in it meanwhile or it holds files that are not ledgers.
    """

    path: Path
    files: tuple[Path, ...] = ()
    dir_removed: bool = False
    kept: str | None = None

    @property
    def ledgers(self) -> tuple[Path, ...]:
        """The ledger files removed (``files`` without the lock files)."""
        return tuple(path for path in self.files if path.name.endswith(LEDGER_SUFFIX))


class _Gone(Exception):
    """The run directory vanished while its lock file was being opened: nothing to remove."""


def _gone() -> None:
    raise _Gone


def remove_ledger(
    root: str | os.PathLike[str], run_id: str, node_id: str, *, lock_timeout: float | None = None
) -> Removal:
    """Remove the ledger of (run, node) and its lock file, under its lock.

    Writers appending to it at the same time are safe: an append that took the lock before the
    removal is in the removed file, one that takes it after starts a new ledger at the path.
    A missing ledger is not an error (``files`` is empty).

    :param root: the receipts root.
    :param run_id: the run's raw id.
    :param node_id: the node's raw id.
    :param lock_timeout: seconds to wait for the lock; ``None`` waits as long as it takes.
    :raises TypeError: if an id is not a ``str``.
    :raises ValueError: if ``lock_timeout`` is negative.
    :raises LockTimeout: if ``lock_timeout`` expires first.
    :raises LedgerIOError: naming the path, if the ledger or its lock file is not a regular file
        or has another hard link, or a system call fails; what was not yet removed is intact.
    """
    path = _run_dir(root, run_id) / _ledger_name(node_id)
    return remove_ledger_file(path, lock_timeout=lock_timeout)


def remove_run(
    root: str | os.PathLike[str], run_id: str, *, lock_timeout: float | None = None
) -> Removal:
    """Remove every ledger of a run as :func:`remove_ledger` does, then its directory if empty.

    A writer that starts a ledger in the run meanwhile is not broken: the directory is then
    not empty, so it stays, and ``kept`` says so. A missing run is not an error.

    :raises TypeError: if ``run_id`` is not a ``str``.
    :raises ValueError: if ``lock_timeout`` is negative.
    :raises LockTimeout: if ``lock_timeout`` expires first.
    :raises LedgerIOError: naming the path, as :func:`remove_run_dir` does.
    """
    return remove_run_dir(_run_dir(root, run_id), lock_timeout=lock_timeout)


def remove_ledger_file(
    path: str | os.PathLike[str], *, lock_timeout: float | None = None
) -> Removal:
    """:func:`remove_ledger` for a ledger named by its path (as :func:`iter_ledgers` gives it).

    :raises ValueError: if the name does not end in ``.jsonl`` (so nothing else is taken for a
        ledger), or ``lock_timeout`` is negative.
    :raises LockTimeout: if ``lock_timeout`` expires first.
    :raises LedgerIOError: as :func:`remove_ledger`.
    """
    path = Path(path)
    if not path.name.endswith(LEDGER_SUFFIX):
        raise ValueError(f"{path}: not a ledger's path (its name does not end in {LEDGER_SUFFIX})")
    check_timeout(None, None, lock_timeout)
    return _remove_ledger(path, lock_timeout, None)


def remove_run_dir(path: str | os.PathLike[str], *, lock_timeout: float | None = None) -> Removal:
    """:func:`remove_run` for a run named by its directory (``root / name``).

    Its ledgers are its ``*.jsonl`` files; a ``*.jsonl.lock`` without a ledger goes too. Other
    entries are left alone, and keep the directory. Every ledger and lock file is checked before
    anything is removed.

    :raises ValueError: if ``lock_timeout`` is negative.
    :raises LockTimeout: if ``lock_timeout`` expires first.
    :raises LedgerIOError: naming the path, if ``path`` is not a directory (a symbolic link is
        not followed), a ledger or lock file in it is not a regular file or has another hard
        link, or a system call fails.
    """
    check_timeout(None, None, lock_timeout)
    return _remove_run(Path(path), lock_timeout, None)


def _run_dir(root: str | os.PathLike[str], run_id: str) -> Path:
    if not isinstance(run_id, str):
        raise TypeError(f"run_id must be str, not {type(run_id).__name__}")
    return Path(root) / sanitize_segment(run_id)


def _ledger_name(node_id: str) -> str:
    if not isinstance(node_id, str):
        raise TypeError(f"node_id must be str, not {type(node_id).__name__}")
    return sanitize_segment(node_id) + LEDGER_SUFFIX


def _remove_ledger(path: Path, lock_timeout: float | None, keep: _Keep | None) -> Removal:
    if not _is_run_dir(path.parent):
        return Removal(path)
    lock_path = lock_path_for(path)
    had_ledger = _check_file(path) is not None
    had_lock_file = _check_file(lock_path) is not None
    if not (had_ledger or had_lock_file):
        return Removal(path)
    lock = SidecarLock(lock_path, make_parent=_gone)
    try:
        lock.acquire(lock_timeout)
    except _Gone:
        return Removal(path)
    try:
        removed: list[Path] = []
        if _check_file(path) is not None:  # again: it may have changed before we held the lock
            reason = keep(path) if keep is not None else None
            if reason is not None:
                return Removal(path, kept=reason)
            if _unlink(path, "remove the ledger"):
                removed.append(path)
        # The lock file we hold, while we hold it: whoever takes it next sees it unlinked.
        if _unlink(lock_path, "remove the lock file") and had_lock_file:
            removed.append(lock_path)
        return Removal(path, tuple(removed))
    finally:
        lock.close()  # closing the descriptor releases the OS lock
        lock.release()


def _remove_run(run_dir: Path, lock_timeout: float | None, keep: _Keep | None) -> Removal:
    if not _is_run_dir(run_dir):
        return Removal(run_dir)
    ledgers = _checked_ledgers(run_dir)
    if ledgers is None:
        return Removal(run_dir)
    files: list[Path] = []
    reasons: list[str] = []
    for name in ledgers:
        removal = _remove_ledger(run_dir / name, lock_timeout, keep)
        files.extend(removal.files)
        if removal.kept is not None:
            reasons.append(f"{name} kept: {removal.kept}")
    try:
        os.rmdir(run_dir)
    except FileNotFoundError:  # someone else removed it first
        return Removal(run_dir, tuple(files))
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise LedgerIOError.wrap(run_dir, "remove the run directory", error) from error
        return Removal(run_dir, tuple(files), kept="; ".join(reasons) or _not_empty(run_dir))
    return Removal(run_dir, tuple(files), dir_removed=True)


def _checked_ledgers(run_dir: Path) -> list[str] | None:
    """The names of the ledgers (and lone lock files' ledgers) in ``run_dir``, each ledger and
    lock file checked to be a regular file with one link; ``None`` if the directory is gone.

    :raises LedgerIOError: naming the first path that is not fit for removal.
    """
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise LedgerIOError.wrap(run_dir, "list the run directory", error) from error
    lock_suffix = LEDGER_SUFFIX + LOCK_SUFFIX
    ledgers = sorted(
        {name[: -len(LOCK_SUFFIX)] for name in names if name.endswith(lock_suffix)}
        | {name for name in names if name.endswith(LEDGER_SUFFIX)}
    )
    for name in ledgers:  # all checked before anything is removed
        _check_file(run_dir / name)
        _check_file(lock_path_for(run_dir / name))
    return ledgers


def _not_empty(run_dir: Path) -> str:
    try:
        left = sorted(os.listdir(run_dir))
    except OSError:
        left = []
    shown = ", ".join(left[:3]) + (", ..." if len(left) > 3 else "")
    return f"not empty: {shown}" if shown else "not empty"


def _lstat(path: Path) -> os.stat_result:
    """``os.lstat``; a missing path (or a file where a directory should be) is FileNotFoundError.

    :raises LedgerIOError: if the call fails otherwise.
    """
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError) as error:
        raise FileNotFoundError(error.errno, error.strerror, str(path)) from None
    except OSError as error:
        raise LedgerIOError.wrap(path, "stat", error) from error
    except ValueError as error:  # an embedded NUL: no such file can exist
        raise ValueError(f"{path!r}: {error}") from None


def _is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a directory; ``False`` if there is nothing there.

    :raises LedgerIOError: if it is something else: a symbolic link is not followed.
    """
    try:
        mode = _lstat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(mode):
        raise LedgerIOError(path, f"is {_kind(mode)}, not a run directory; not removed")
    return True


def _check_file(path: Path) -> os.stat_result | None:
    """The ``lstat`` of a ledger or lock file that may be removed; ``None`` if there is none.

    :raises LedgerIOError: if it is not a regular file, or has another hard link.
    """
    try:
        st = _lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise LedgerIOError(path, f"is {_kind(st.st_mode)}, not a ledger file; not removed")
    if st.st_nlink > 1:
        raise LedgerIOError(
            path,
            f"has {st.st_nlink} hard links; a writer holding it open would go on appending to "
            "the other one after it was removed, so it is not removed",
        )
    return st


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def _unlink(path: Path, action: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as error:
        raise LedgerIOError.wrap(path, action, error) from error
    return True


# -- prune --------------------------------------------------------------------------------------

_DURATION = re.compile(r"([0-9]{1,15})([smhd])")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration(text: str) -> int:
    """``30d``, ``12h``, ``90m`` or ``45s`` in milliseconds.

    :raises ValueError: naming the text, if it is not a whole number followed by a unit.
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(
            f"bad duration {text!r}: expected up to 15 digits and a unit, s, m, h or d (e.g. 30d)"
        )
    return int(match[1]) * _UNIT_MS[match[2]]


def newest_ms(path: Path) -> int:
    """When a ledger was last written: the ``ts_ms`` of its last well-typed record, read back
    from its end; its modification time, in ms, if it holds no such record (empty, garbage).

    :raises LedgerIOError: if it is not a regular file (nothing is followed) or cannot be read.
    """
    if _check_file(path) is None:
        return 0
    last = last_records(path, 1)
    if last:
        return last[0][0].ts_ms
    try:
        return os.stat(path).st_mtime_ns // 1_000_000
    except FileNotFoundError:
        return 0
    except OSError as error:
        raise LedgerIOError.wrap(path, "stat the ledger", error) from error


def runs_older_than(root: Path, cutoff_ms: int) -> list[tuple[Path, list[Path]]]:
    """The runs under ``root`` whose ledgers all were last written before ``cutoff_ms``
    (see :func:`newest_ms`), each with its ledgers. A run directory that is a symbolic link is
    not a run: it is skipped, not followed.

    :raises LedgerIOError: naming the path, if the root cannot be listed or a ledger is not a
        regular file or cannot be read.
    """
    runs = []
    for run, group in itertools.groupby(_list_ledgers(root), key=lambda entry: entry[0]):
        run_dir = root / run
        if os.path.islink(run_dir):
            continue
        ledgers = [path for _, _, path in group]
        if max(newest_ms(path) for path in ledgers) < cutoff_ms:
            runs.append((run_dir, ledgers))
    for run_dir, _ in runs:  # every run checked before any is removed
        _checked_ledgers(run_dir)
    return runs


def _list_ledgers(root: Path) -> list[tuple[str, str, Path]]:
    # A run directory that goes while it is listed (another prune) is skipped by iter_ledgers.
    try:
        return list(iter_ledgers(root))
    except OSError as error:
        raise LedgerIOError.wrap(error.filename or root, "list the ledgers", error) from error


def prune_run(run_dir: Path, cutoff_ms: int, *, lock_timeout: float | None = None) -> Removal:
    """Remove a run as :func:`remove_run_dir` does, but keep any ledger that, checked again
    under its lock, was written at or after ``cutoff_ms`` (a writer came back to the run).

    :raises LedgerIOError: as :func:`remove_run_dir`.
    """

    def keep(path: Path) -> str | None:
        return "written after the cutoff" if newest_ms(path) >= cutoff_ms else None

    return _remove_run(run_dir, lock_timeout, keep)
