"""What a ledger keeps open and the directories an append makes (_handles.py), one function at a
time: the errors they name, and the flags they open with."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from attempt_ledger import LedgerIOError
from attempt_ledger._handles import Handles, fsync_dir, make_run_dir, roll_back


def _failing_mkdir(
    monkeypatch: pytest.MonkeyPatch, target: Path, error: OSError
) -> Callable[..., None]:
    real_mkdir = os.mkdir

    def mkdir(path: str | os.PathLike[str], *args: object) -> None:
        if os.fspath(path) == str(target):
            raise error
        real_mkdir(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "mkdir", mkdir)
    return mkdir


# -- make_run_dir ----------------------------------------------------------------------------------


def test_a_run_directory_that_cannot_be_made_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "receipts" / "run"
    run_dir.parent.mkdir()
    error = OSError(errno.ENOSPC, "No space left on device")
    _failing_mkdir(monkeypatch, run_dir, error)
    handles = Handles()
    with pytest.raises(LedgerIOError) as info:
        make_run_dir(run_dir, handles)
    assert info.value.path == run_dir
    assert info.value.reason == "cannot create the run directory: No space left on device"
    assert info.value.errno == errno.ENOSPC
    assert info.value.__cause__ is error
    assert handles.new_dirs == []


def test_a_missing_parent_that_cannot_be_made_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run directory, the root and the root's parent are missing; the outermost fails.
    outer = tmp_path / "a"
    run_dir = outer / "receipts" / "run"
    _failing_mkdir(monkeypatch, outer, PermissionError(errno.EACCES, "Permission denied"))
    handles = Handles()
    with pytest.raises(LedgerIOError) as info:
        make_run_dir(run_dir, handles)
    assert info.value.path == outer
    assert info.value.reason == f"cannot create {run_dir}'s parent: Permission denied"
    assert info.value.errno == errno.EACCES
    assert not outer.exists()
    assert handles.new_dirs == []


def test_a_run_directory_refused_as_not_a_directory_among_directories_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # mkdir says ENOTDIR, yet every path above it is a directory (one was swapped back since):
    # no file to blame, so the error names the directory that could not be made and the cause.
    run_dir = tmp_path / "run"
    refused = NotADirectoryError(errno.ENOTDIR, "Not a directory")
    _failing_mkdir(monkeypatch, run_dir, refused)
    with pytest.raises(LedgerIOError) as info:
        make_run_dir(run_dir, Handles())
    assert info.value.path == run_dir
    assert info.value.reason == "cannot create the run directory: Not a directory"
    assert info.value.errno == errno.ENOTDIR
    deeper = tmp_path / "a" / "run"
    _failing_mkdir(monkeypatch, deeper.parent, refused)
    with pytest.raises(LedgerIOError) as info:
        make_run_dir(deeper, Handles())
    assert info.value.path == deeper.parent
    assert info.value.reason == f"cannot create {deeper}'s parent: Not a directory"


# -- fsync_dir -------------------------------------------------------------------------------------


def test_fsync_dir_refuses_a_file_that_is_not_a_directory(tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        fsync_dir(regular)


def test_fsync_dir_without_o_directory_still_syncs_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A platform without O_DIRECTORY opens the directory read-only all the same.
    monkeypatch.delattr(os, "O_DIRECTORY")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    fsync_dir(tmp_path)
    assert synced == [str(tmp_path)]


# -- roll_back ------------------------------------------------------------------------------------


def test_roll_back_truncates_and_names_the_failed_append(tmp_path: Path) -> None:
    path = tmp_path / "n.jsonl"
    path.write_bytes(b"kept\npartial")
    error = OSError(errno.ENOSPC, "No space left on device")
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(LedgerIOError) as info:
            roll_back(path, fd, 5, error)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"kept\n"
    assert info.value.path == path
    assert info.value.reason == "cannot append to the ledger: No space left on device"
    assert info.value.errno == errno.ENOSPC
    assert info.value.__cause__ is error


def test_roll_back_whose_truncate_fails_names_both_causes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "n.jsonl"
    path.write_bytes(b"kept\npartial")
    error = OSError(errno.ENOSPC, "No space left on device")

    def ftruncate(fd: int, size: int) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "ftruncate", ftruncate)
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(LedgerIOError) as info:
            roll_back(path, fd, 5, error)
    finally:
        os.close(fd)
    assert info.value.path == path
    assert info.value.reason == (
        "append failed (No space left on device) and so did truncating it away: "
        "Read-only file system"
    )
    assert info.value.errno == errno.ENOSPC  # the append's cause, not the truncate's
    assert info.value.__cause__ is error


# -- Handles.open ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exists", "error"),
    [
        (True, PermissionError(errno.EACCES, "Permission denied")),
        (False, OSError(errno.ENOSPC, "No space left on device")),  # while creating it
    ],
)
def test_a_ledger_that_cannot_be_opened_names_the_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exists: bool, error: OSError
) -> None:
    path = tmp_path / "n.jsonl"
    if exists:
        path.write_bytes(b"")
    real_open = os.open

    def fake_open(file: str, flags: int, *args: int) -> int:
        if file == str(path) and (exists or flags & os.O_CREAT):
            raise error
        return real_open(file, flags, *args)

    monkeypatch.setattr(os, "open", fake_open)
    handles = Handles()
    with pytest.raises(LedgerIOError) as info:
        handles.open(path, durable=False)
    assert info.value.path == path
    assert info.value.reason == f"cannot open the ledger: {error.strerror}"
    assert info.value.errno == error.errno
    assert handles.fd is None


def test_a_new_ledger_whose_directory_cannot_be_synced_names_the_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "n.jsonl"

    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    handles = Handles()
    with pytest.raises(LedgerIOError) as info:
        handles.open(path, durable=True)
    assert info.value.path == path
    assert info.value.reason == "cannot open the ledger: Input/output error"
    assert info.value.errno == errno.EIO
    assert (handles.fd, handles.sync) == (None, None)  # closed: the next open syncs again
    assert handles.new_dirs == [path]
