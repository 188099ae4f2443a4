"""Opening the library's own files: never through a symbolic link, never anything but a regular
file, and never blocking in ``open()``.

A ledger or lock path may hold something planted there: a symlink would redirect appends to a
file outside the root, a FIFO would swallow them (and block a reader's ``open()`` for ever), a
device would discard them. So the last component is opened with ``O_NOFOLLOW`` (directories on
the way may be symlinks: see rule 6 in docs/semantics.md) and ``O_NONBLOCK``, and the descriptor
is kept only if ``fstat`` says it is a regular file; ``O_NONBLOCK`` is then cleared again.
"""

from __future__ import annotations

import errno
import os
import stat

from ._errors import LedgerIOError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_SAFE = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _not_regular(path: str | os.PathLike[str], mode: int, code: int | None) -> LedgerIOError:
    if stat.S_ISLNK(mode):
        return LedgerIOError(path, "is a symbolic link, which is never followed", errno.ELOOP)
    kind = next((name for test, name in _KINDS if test(mode)), "something else")
    code = errno.EISDIR if stat.S_ISDIR(mode) else code
    return LedgerIOError(path, f"is not a regular file but {kind}", code)


def open_regular(
    path: str | os.PathLike[str],
    flags: int,
    action: str,
    *,
    passthrough: tuple[type[OSError], ...] = (FileNotFoundError,),
) -> tuple[int, os.stat_result]:
    """Open the regular file at ``path`` with ``flags`` (mode 0o666 if it is created).

    :param action: what is being done, for the error message ("open the ledger").
    :param passthrough: errors of ``open()`` raised as they are, for the caller to handle
        (create the file, make its directory, open it read-only).
    :returns: the descriptor and its ``fstat``.
    :raises LedgerIOError: if ``path`` is a symbolic link (errno ``ELOOP``), is not a regular
        file, or cannot be opened; nothing is left open.
    """
    try:
        fd = os.open(path, flags | _SAFE, 0o666)
    except passthrough:
        raise
    except OSError as error:
        # ELOOP is how O_NOFOLLOW refuses a symlink; ENXIO is what opening a socket gives.
        if error.errno in (errno.ELOOP, errno.ENXIO, errno.EOPNOTSUPP):
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                mode = stat.S_IFREG
            if not stat.S_ISREG(mode):
                raise _not_regular(path, mode, error.errno) from error
        raise LedgerIOError.wrap(path, action, error) from error
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise _not_regular(path, status.st_mode, None)
        if fcntl is not None:
            # F_SETFL sets only the status flags: of those we opened with, keep O_APPEND.
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & os.O_APPEND)
    except OSError as error:
        os.close(fd)
        if isinstance(error, LedgerIOError):
            raise
        raise LedgerIOError.wrap(path, action, error) from error
    return fd, status
