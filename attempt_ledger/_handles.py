"""What a file ledger keeps open between appends, and the directories an append makes."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import NoReturn

from ._errors import LedgerIOError
from ._files import CLOEXEC, open_regular
from ._groupsync import GroupSync
from ._reader import tail_state

_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | CLOEXEC


def fsync_dir(path: Path) -> None:
    """fsync the directory ``path``, so that the entries made in it are durable.

    :raises OSError: if opening or syncing fails.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Handles:
    """What a ledger keeps open between appends. Guarded by the lock's thread mutex."""

    __slots__ = ("dev", "fd", "head", "ino", "known", "new_dirs", "sync")

    def __init__(self) -> None:
        self.fd: int | None = None
        # st_dev and st_ino of the file fd is open on: the path must still name it.
        self.dev = self.ino = -1
        # (attempt, session_id, encoded head) of the last append: workers repeat them. Read and
        # replaced as one tuple, so threads racing outside the lock never mix two entries.
        self.head: tuple[int, str, bytes] | None = None
        # (inode, size, last seq, last record_hash) after our last append: while the file still
        # has that inode and size, nobody has appended since, and the tail need not be read again.
        self.known: tuple[int, int, int, str | None] | None = None
        # Directories (and the ledger file) made for the ledger and not yet fsynced into their
        # parents, outermost first: durable mode fsyncs those parents.
        self.new_dirs: list[Path] = []
        # Durable mode: the fsyncs of fd, made after the lock is released (_groupsync.py).
        self.sync: GroupSync | None = None

    def open(self, path: Path, *, durable: bool) -> tuple[int, os.stat_result]:
        """Open the ledger at ``path`` (creating it if missing) into these handles; never
        through a symlink, never anything but a regular file. In durable mode the entries made
        for it are fsynced.

        :returns: the descriptor and its ``fstat``.
        :raises LedgerIOError: naming ``path``, if it cannot be opened or its entries synced.
        """
        handles = self
        try:
            fd, stat = open_regular(os.fspath(path), _OPEN_FLAGS, "open the ledger")
        except FileNotFoundError:
            _note(handles, path)  # before it is made, as in make_run_dir
            try:
                fd, stat = open_regular(
                    os.fspath(path), _OPEN_FLAGS | os.O_CREAT, "open the ledger"
                )
            except BaseException:
                _unnote_unmade(handles, path)
                raise
        try:
            sync = GroupSync(fd) if durable else None
        except BaseException:  # a signal's handler raising: not published without its fsyncs
            os.close(fd)
            raise
        # One assignment, no call: an interrupt cannot publish the descriptor without its sync.
        handles.fd, handles.dev, handles.ino, handles.sync = fd, stat.st_dev, stat.st_ino, sync
        if durable:
            try:
                for made in reversed(handles.new_dirs):  # a new entry is in its parent
                    fsync_dir(made.parent)
            except BaseException as error:  # a signal's handler raising too
                handles.close()  # the next append opens, and fsyncs them, again
                if not isinstance(error, OSError):
                    raise
                raise LedgerIOError.wrap(path, "open the ledger", error) from error
        handles.new_dirs = []
        return fd, stat

    def close(self) -> None:
        self.known = None
        if self.sync is not None:
            # Before fd, so that appends waiting for an fsync of it get theirs; and before it
            # is dropped, so that one interrupted (a signal's handler raising) is closed by the
            # next close(), not left to fsync a closed descriptor, or another file's.
            self.sync.close()
            self.sync = None
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def __del__(self) -> None:
        # A ledger dropped without close() must not leak its descriptor.
        if self.fd is not None:
            os.close(self.fd)


def make_run_dir(run_dir: Path, handles: Handles) -> None:
    """Make the run directory and any missing parent (the root, its parents), outermost first,
    noting each in ``handles.new_dirs`` for durable mode.

    :raises LedgerIOError: naming a file that stands where a directory should be, or the
        directory that could not be made.
    """
    # A plain function, not a method: the lock holds it, and a ledger -> lock -> ledger cycle
    # would keep a dropped ledger's descriptors open until the cycle collector ran.
    missing = [run_dir]
    try:
        while missing:
            # Noted before it is made: a signal's handler raising just after the mkdir must not
            # leave a new entry no fsync will cover (the next append finds the directory).
            _note(handles, missing[-1])
            try:
                os.mkdir(missing[-1])
            except FileNotFoundError:
                handles.new_dirs.remove(missing[-1])  # not made
                if missing[-1].parent == missing[-1]:
                    raise
                missing.append(missing[-1].parent)
                continue
            except FileExistsError:
                if not missing[-1].is_dir():
                    handles.new_dirs.remove(missing[-1])  # not a directory, nor ours
                    raise
                # Made by another process just now: its entry may not be durable yet either.
            except BaseException:
                _unnote_unmade(handles, missing[-1])
                raise
            missing.pop()
    except (FileExistsError, NotADirectoryError, FileNotFoundError) as error:
        # Name the file that stands where a directory should be, not just the symptom.
        for path in (run_dir, *run_dir.parents):
            if path.exists() or path.is_symlink():
                if path.is_dir():
                    break
                reason = f"is not a directory, so the run directory {run_dir} cannot be made"
                raise LedgerIOError(path, reason, errno.ENOTDIR) from error
        raise _cannot_make(run_dir, missing, error) from error
    except OSError as error:
        raise _cannot_make(run_dir, missing, error) from error


def _note(handles: Handles, made: Path) -> None:
    # A path about to be made, whose entry durable mode fsyncs into its parent: once, however
    # often making it fails.
    if made not in handles.new_dirs:
        handles.new_dirs.append(made)


def _unnote_unmade(handles: Handles, made: Path) -> None:
    # Making it failed: forget it unless it was made all the same (a signal's handler raising
    # just after, say).
    if not os.path.lexists(made):
        handles.new_dirs.remove(made)


def _cannot_make(run_dir: Path, missing: list[Path], error: OSError) -> LedgerIOError:
    failed = missing[-1] if missing else run_dir
    action = "create the run directory" if failed == run_dir else f"create {run_dir}'s parent"
    return LedgerIOError.wrap(failed, action, error)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, however short the writes.

    :raises OSError: if a write fails.
    """
    written = os.write(fd, data)
    if written < len(data):  # a short write: rare, so the view is only made then
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


def read_tail(path: Path, fd: int, size: int) -> tuple[int, bytes, str | None]:
    """Read the tail of the ledger open at ``fd``, ``size`` bytes long.

    :returns: its last seq, the seal to write first (``b"\\n"`` if the last line is torn), and
        the record_hash to chain from.
    :raises LedgerIOError: naming ``path``, if the read fails.
    """
    try:
        tail = tail_state(fd, size)
    except OSError as error:
        raise LedgerIOError.wrap(path, "read the ledger's tail", error) from error
    return tail.last_seq, b"\n" if tail.torn else b"", tail.last_hash


def roll_back(path: Path, fd: int, size: int, error: OSError) -> NoReturn:
    """Truncate the ledger at ``fd`` back to ``size`` after ``error`` failed an append, and raise.

    :raises LedgerIOError: always: for ``error``, or for both it and a failed truncate.
    """
    try:
        os.ftruncate(fd, size)
    except OSError as truncate_error:
        reason = f"append failed ({error.strerror}) and so did truncating it away"
        raise LedgerIOError(path, f"{reason}: {truncate_error.strerror}", error.errno) from error
    raise LedgerIOError.wrap(path, "append to the ledger", error) from error
