"""System calls that fail at each step of an append leave the ledger, the lock and the
descriptor table as they were."""

from __future__ import annotations

import errno
import fcntl
import multiprocessing
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest

from attempt_ledger import AttemptLedger, LedgerIOError, ReceiptEvent

EV = [ReceiptEvent("e", {"k": "v"})]


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


@contextmanager
def failing(
    monkeypatch: pytest.MonkeyPatch,
    module: Any,
    name: str,
    when: Callable[..., bool],
    code: int,
    partial: bool = False,
) -> Iterator[list[int]]:
    """Make ``module.name`` raise ``OSError(code)`` for calls where ``when(*args)`` holds.

    With ``partial``, the first matching ``write`` writes half its bytes and returns; the
    next one fails (a short write, then a full disk).
    """
    real = getattr(module, name)
    hits = [0]

    def fake(*args: Any, **kwargs: Any) -> Any:
        if when(*args):
            hits[0] += 1
            if partial and hits[0] % 2 == 1:
                return real(args[0], bytes(args[1][: max(1, len(args[1]) // 2)]))
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, fake)
    try:
        yield hits
    finally:
        monkeypatch.setattr(module, name, real)


def _append_without_waiting(root: Path, results: Any) -> None:
    try:
        seq = AttemptLedger(root, "run", "node", lock_timeout=0).append(1, "other", EV).seq
        results.put(seq)
    except Exception as error:  # reported to the parent, which fails the test
        results.put(repr(error))


def another_process_appends(root: Path) -> object:
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    process = ctx.Process(target=_append_without_waiting, args=(root, results))  # type: ignore[attr-defined]
    process.start()
    try:
        return results.get(timeout=30)
    finally:
        process.join(timeout=30)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _on_ledger(fd: int, *_: object) -> bool:
    return _fd_path(fd).endswith("node.jsonl")


@attrs.frozen
class Step:
    """One system call of an append made to fail, and the state the append starts from."""

    name: str
    module: Any
    function: str
    when: Callable[..., bool]
    code: int
    fresh: bool = False  # a new ledger object, so nothing is open or cached yet
    torn: bool = False  # the ledger ends in a torn line, so the append writes a seal
    durable: bool = False
    partial: bool = False  # the first write is short, the next one fails


STEPS = [
    Step(
        "open the ledger",
        os,
        "open",
        lambda p, *a: str(p).endswith("node.jsonl"),
        errno.EACCES,
        fresh=True,
    ),
    Step(
        "open the lock file",
        os,
        "open",
        lambda p, *a: str(p).endswith(".lock"),
        errno.EMFILE,
        fresh=True,
    ),
    Step("take the lock", fcntl, "flock", lambda _, op: op & fcntl.LOCK_EX, errno.ENOLCK),
    Step("stat the ledger", os, "lstat", lambda p, *a: str(p).endswith("node.jsonl"), errno.EIO),
    Step("read the tail", os, "pread", _on_ledger, errno.EIO, fresh=True),
    Step("seal write", os, "write", _on_ledger, errno.ENOSPC, torn=True),
    Step("short write, ENOSPC", os, "write", _on_ledger, errno.ENOSPC, torn=True, partial=True),
    Step("short write, EIO", os, "write", _on_ledger, errno.EIO, partial=True),
    Step("fsync", os, "fsync", _on_ledger, errno.EIO, durable=True),
]


@pytest.mark.parametrize("step", STEPS, ids=[step.name for step in STEPS])
def test_failing_step_leaves_everything_as_it_was(
    monkeypatch: pytest.MonkeyPatch, root: Path, step: Step
) -> None:
    fresh, torn, durable, code = step.fresh, step.torn, step.durable, step.code
    seeded = AttemptLedger(root, "run", "node")
    seeded.append(1, "s", EV * 2)
    seeded.close()
    if torn:
        with seeded.path.open("ab") as f:
            f.write(b'{"seq":')
    before = seeded.path.read_bytes()
    ledger = AttemptLedger(root, "run", "node", durable=durable)
    if not fresh:
        ledger.append(1, "s", [])  # opens nothing; make the descriptors open:
        ledger._lock.acquire()
        ledger._lock.release()
        ledger._ledger_fd()
    fds = open_fds()
    with failing(monkeypatch, step.module, step.function, step.when, code, step.partial) as hits:
        for _ in range(1000):
            target = AttemptLedger(root, "run", "node", durable=durable) if fresh else ledger
            with pytest.raises(LedgerIOError) as info:
                target.append(1, "s", EV * 3)
            if fresh:
                target.close()
    assert hits[0] >= 1000
    error = info.value
    assert error.errno == code
    assert isinstance(error.__cause__, OSError)
    assert error.__cause__.errno == code
    assert error.path in (ledger.path, ledger.lock_path)
    assert str(error.path) in str(error)
    assert seeded.path.read_bytes() == before, f"{step.name} changed the ledger"
    assert open_fds() <= fds, f"{step.name} leaked descriptors"  # a failed lock fd is closed
    # The lock is free: another process appends without waiting, then this object goes on.
    assert another_process_appends(root) == 3
    assert ledger.append(1, "s", EV).seq == 4
    ledger.close()


def test_failed_unlock_still_releases_and_reports_success(
    monkeypatch: pytest.MonkeyPatch, root: Path
) -> None:
    ledger = AttemptLedger(root, "run", "node")
    with failing(monkeypatch, fcntl, "flock", lambda _, op: op == fcntl.LOCK_UN, errno.EIO):
        assert ledger.append(1, "s", EV).seq == 1  # the records are written: no error
    assert another_process_appends(root) == 2
    assert ledger.append(1, "s", EV).seq == 3


def test_failed_rollback_is_reported_with_both_causes(
    monkeypatch: pytest.MonkeyPatch, root: Path
) -> None:
    ledger = AttemptLedger(root, "run", "node")
    ledger.append(1, "s", EV)
    with (
        failing(monkeypatch, os, "write", _on_ledger, errno.EIO, partial=True),
        failing(monkeypatch, os, "ftruncate", lambda *a: True, errno.EROFS),
        pytest.raises(LedgerIOError) as info,
    ):
        ledger.append(1, "s", EV * 2)
    assert "truncating it away" in str(info.value)
    # What the failed append left is what a crash at that point leaves: its whole lines (here
    # seq 2) count, its torn last line is sealed off by the next append.
    assert ledger.append(1, "s", EV).seq == 3
    assert [r.seq for r in ledger.records()] == [1, 2, 3]
