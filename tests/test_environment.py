"""Bad environments: each gives a clear error that names the path, and changes nothing."""

from __future__ import annotations

import errno
import multiprocessing
import os
import queue
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from attempt_ledger import AttemptLedger, LedgerIOError, ReceiptEvent, read_receipt_records

EV = [ReceiptEvent("e", {"k": "v"})]
NOBODY = 65534


def snapshot(top: Path) -> dict[str, bytes | None]:
    """Every path below ``top`` with its bytes (None for a directory)."""
    out: dict[str, bytes | None] = {}
    for path in sorted(top.rglob("*")):
        out[str(path)] = None if path.is_dir() else path.read_bytes()
    return out


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path is private to root)."""
    top = Path(tempfile.mkdtemp(prefix="attempt-ledger-env-"))
    top.chmod(0o755)
    yield top
    shutil.rmtree(top)


def _call(fn: Callable[..., Any], args: tuple[Any, ...], results: Any) -> None:
    if os.geteuid() == 0:
        os.setgid(NOBODY)
        os.setuid(NOBODY)  # permission bits mean nothing to root
    try:
        results.put(("ok", fn(*args)))
    except BaseException as error:  # the ledger's errors pickle, so they cross over whole
        results.put(("raised", error))


def as_unprivileged(fn: Callable[..., Any], *args: Any, timeout: float = 60) -> Any:
    """Run ``fn(*args)`` in a child process without root; return or raise what it did.

    A child that does not answer within ``timeout`` seconds is killed and the test fails.
    """
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_call, args=(fn, args, results))  # type: ignore[attr-defined]
    child.start()
    try:
        kind, value = results.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"{fn} did not return within {timeout} s")
    finally:
        child.join(timeout=timeout)
        if child.is_alive():
            child.kill()
            child.join(timeout=timeout)
    if kind == "raised":
        raise value
    return value


def give_to_nobody(top: Path) -> None:
    if os.geteuid() == 0:
        for path in [top, *top.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)


def _append(root: Path, node: str = "node") -> int:
    return AttemptLedger(root, "run", node).append(1, "s", EV).seq


def test_root_that_is_a_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.write_bytes(b"not a directory")
    with pytest.raises(LedgerIOError) as info:
        _append(root)
    assert info.value.path == root
    assert "is not a directory" in str(info.value)
    assert info.value.errno == errno.ENOTDIR
    assert snapshot(tmp_path) == {str(root): b"not a directory"}


def test_run_directory_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "run").write_bytes(b"x")
    with pytest.raises(LedgerIOError) as info:
        _append(tmp_path)
    assert info.value.path == tmp_path / "run"
    assert "is not a directory" in str(info.value)
    assert snapshot(tmp_path) == {str(tmp_path / "run"): b"x"}


def test_ledger_path_that_is_a_directory(tmp_path: Path) -> None:
    AttemptLedger(tmp_path, "run", "other").append(1, "s", EV)
    ledger = AttemptLedger(tmp_path, "run", "node")
    ledger.path.mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(LedgerIOError) as info:
        ledger.append(1, "s", EV)
    assert info.value.path == ledger.path
    assert info.value.errno == errno.EISDIR
    assert "open the ledger" in str(info.value)
    # Only the (empty) sidecar lock file may appear; no ledger bytes anywhere change.
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.endswith(".lock")} == {
        k: v for k, v in before.items() if not k.endswith(".lock")
    }
    assert [r.seq for r in read_receipt_records(tmp_path / "run" / "other.jsonl")] == [1]


def test_read_only_root(shared_dir: Path) -> None:
    root = shared_dir / "root"
    AttemptLedger(root, "run", "node").append(1, "s", EV)
    give_to_nobody(shared_dir)
    root.chmod(0o555)
    before = snapshot(shared_dir)
    with pytest.raises(LedgerIOError) as info:
        as_unprivileged(lambda: AttemptLedger(root, "new-run", "n").append(1, "s", EV))
    assert info.value.path == root / "new-run"
    assert info.value.errno == errno.EACCES
    assert "create the run directory" in str(info.value)
    assert snapshot(shared_dir) == before
    # A run that exists (and is writable) goes on: only new runs need the root.
    assert as_unprivileged(_append, root) == 2
    root.chmod(0o755)


def test_read_only_ledger(shared_dir: Path) -> None:
    root = shared_dir / "root"
    ledger = AttemptLedger(root, "run", "node")
    ledger.append(1, "s", EV)
    give_to_nobody(shared_dir)
    ledger.path.chmod(0o444)
    before = snapshot(shared_dir)
    with pytest.raises(LedgerIOError) as info:
        as_unprivileged(_append, root)
    assert info.value.path == ledger.path
    assert info.value.errno == errno.EACCES
    assert snapshot(shared_dir) == before
    # Readers still work, and the lock was released.
    assert as_unprivileged(lambda: [r.seq for r in ledger.records()]) == [1]
    ledger.path.chmod(0o644)
    assert as_unprivileged(_append, root) == 2


def test_lock_file_we_may_not_write_is_locked_read_only(shared_dir: Path) -> None:
    root = shared_dir / "root"
    ledger = AttemptLedger(root, "run", "node")
    ledger.append(1, "s", EV)
    give_to_nobody(shared_dir)
    if os.geteuid() == 0:
        os.chown(ledger.lock_path, 0, 0)  # another user's lock file, mode 0644
    ledger.lock_path.chmod(0o644)
    assert as_unprivileged(_append, root) == 2


def test_fifo_lock_file_we_may_not_write_is_refused_without_blocking(shared_dir: Path) -> None:
    # Locking read-only opens the lock file O_RDONLY: a FIFO there must not block that open.
    root = shared_dir / "root"
    ledger = AttemptLedger(root, "run", "node")
    ledger.append(1, "s", EV)
    ledger.close()
    ledger.lock_path.unlink()
    os.mkfifo(ledger.lock_path, 0o644)
    give_to_nobody(shared_dir)
    if os.geteuid() == 0:
        os.chown(ledger.lock_path, 0, 0)  # another user's, so it cannot be opened for writing
    before = snapshot_names(shared_dir)
    with pytest.raises(LedgerIOError) as info:
        as_unprivileged(_append, root, timeout=20)
    assert info.value.path == ledger.lock_path
    assert "is not a regular file" in str(info.value)
    assert snapshot_names(shared_dir) == before
    assert [r.seq for r in ledger.records()] == [1]


def snapshot_names(top: Path) -> list[str]:
    """Every path below ``top``, without reading any (a FIFO would block a read)."""
    return sorted(str(path) for path in top.rglob("*"))


def _fill_until_full(root: Path, results: list[int]) -> None:
    big = [ReceiptEvent("blob", "x" * 3000)]
    with AttemptLedger(root, "run", "node") as ledger:  # closed on the way out, error or not
        for _ in range(10_000):
            results.append(ledger.append(1, "s", big).seq)


@pytest.fixture
def tiny_fs() -> Iterator[Path]:
    mount_point = Path(tempfile.mkdtemp(prefix="attempt-ledger-tmpfs-"))
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
            capture_output=True,
            check=False,
        )
    except FileNotFoundError:
        done = None
    if done is None or done.returncode != 0:
        mount_point.rmdir()
        pytest.skip("cannot mount a small tmpfs here (needs root); injection covers ENOSPC")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)
        mount_point.rmdir()


def test_full_disk(tiny_fs: Path) -> None:
    root = tiny_fs / "root"
    other = AttemptLedger(root, "run", "other")
    ledger = AttemptLedger(root, "run", "node")
    try:  # a failed check must still close the descriptors, or the tmpfs cannot be unmounted
        other.append(1, "s", EV)
        acknowledged: list[int] = []
        with pytest.raises(LedgerIOError) as info:
            _fill_until_full(root, acknowledged)
        assert info.value.errno == errno.ENOSPC
        assert info.value.path == ledger.path
        assert "No space left on device" in str(info.value)
        # Everything acknowledged is there, nothing else; the other ledger is untouched.
        assert [r.seq for r in ledger.records()] == acknowledged
        assert ledger.path.read_bytes().endswith(b"\n")
        assert [r.seq for r in other.records()] == [1]
        # Space comes back, appends go on from where they were.
        other.close()
        other.path.unlink()
        assert ledger.append(1, "s", EV).seq == len(acknowledged) + 1
    finally:
        other.close()
        ledger.close()
