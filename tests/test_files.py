"""What ``_files`` says about a path that is not a regular file."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from attempt_ledger import LedgerIOError
from attempt_ledger._files import _not_regular, open_regular


@pytest.mark.parametrize(
    ("mode", "code", "reason", "errno_"),
    [
        (stat.S_IFLNK, None, "is a symbolic link, which is never followed", errno.ELOOP),
        (stat.S_IFDIR, None, "is not a regular file but a directory", errno.EISDIR),
        (stat.S_IFDIR, errno.ELOOP, "is not a regular file but a directory", errno.EISDIR),
        (stat.S_IFIFO, None, "is not a regular file but a FIFO", None),
        (stat.S_IFSOCK, errno.ENXIO, "is not a regular file but a socket", errno.ENXIO),
        (stat.S_IFCHR, None, "is not a regular file but a character device", None),
        (stat.S_IFBLK, None, "is not a regular file but a block device", None),
        (0, errno.EOPNOTSUPP, "is not a regular file but something else", errno.EOPNOTSUPP),
    ],
)
def test_each_kind_of_file_is_named_with_its_errno(
    mode: int, code: int | None, reason: str, errno_: int | None
) -> None:
    error = _not_regular(Path("/x"), mode, code)
    assert (error.path, error.reason, error.errno) == (Path("/x"), reason, errno_)


def test_opening_a_directory_says_so(tmp_path: Path) -> None:
    with pytest.raises(LedgerIOError) as info:
        open_regular(tmp_path, os.O_RDONLY, "open the ledger")
    assert (info.value.errno, info.value.reason) == (
        errno.EISDIR,
        "is not a regular file but a directory",
    )
