"""Hostile paths and hostile callers: FIFOs, sockets, devices and symlinks where a ledger or its
lock file should be, ledgers moved away under an open ledger object, ids too long for a lock
file name, wrong-typed options, and re-entry from a signal handler.

Anything that could block for ever on today's code runs in a thread or a child process joined
with a timeout, so a regression fails the test instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import errno
import math
import multiprocessing
import os
import pickle
import queue
import signal
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

import attempt_ledger._ledger as ledger_module
from attempt_ledger import (
    AttemptLedger,
    LedgerError,
    LedgerIOError,
    LockReentered,
    LockTimeout,
    ReceiptEvent,
    append_receipts,
    read_last_seq,
    read_receipt_records,
    reconcile_receipts,
)
from attempt_ledger._inspect import last_records
from attempt_ledger._verify import verify_ledger

EV = [ReceiptEvent("e", {"k": "v"})]
BOUND = 10.0  # seconds a call may take before it counts as blocked for ever


def bounded(fn: Callable[[], Any], fifo: Path | None = None) -> Any:
    """Return or raise what ``fn()`` does, in a thread; fail the test if it blocks.

    A call stuck opening ``fifo`` for reading is released (a writer opens it, then the FIFO is
    removed so the call's next open finds nothing) before the test fails.
    """
    outcome: list[tuple[str, Any]] = []

    def run() -> None:
        try:
            outcome.append(("ok", fn()))
        except BaseException as error:
            outcome.append(("raised", error))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BOUND)
    if thread.is_alive():
        if fifo is not None:
            with contextlib.suppress(OSError):
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                fifo.unlink()
                os.close(writer)
        thread.join(BOUND)
        pytest.fail(f"{fn} blocked for {BOUND} s")
    kind, value = outcome[0]
    if kind == "raised":
        raise value
    return value


def readers(ledger: AttemptLedger) -> dict[str, Callable[[], Any]]:
    """Every way the library opens a ledger for reading."""
    path = ledger.path
    return {
        "read_last_seq": lambda: read_last_seq(path),
        "read_receipt_records": lambda: read_receipt_records(path),
        "ledger.reconcile": lambda: ledger.reconcile(1, max_wait_ms=200, poll_interval_ms=5),
        "reconcile_receipts": lambda: reconcile_receipts(path, 1, 200, 5),
        "follow": lambda: list(ledger.follow(timeout=0.2, poll_interval=0.005)),
        "last_records": lambda: last_records(path, 5),
        "verify_ledger": lambda: list(verify_ledger(path, "run", "node")),
    }


READERS = list(readers(AttemptLedger("/nowhere", "run", "node")))


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[AttemptLedger]:
    ledger = AttemptLedger(tmp_path / "root", "run", "node")
    ledger.path.parent.mkdir(parents=True)
    yield ledger
    ledger.close()


def make_special(kind: str, path: Path) -> socket.socket | None:
    """Create a FIFO, a unix socket or a character device (like /dev/null) at ``path``."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        return server
    else:
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("cannot make a device node here (needs CAP_MKNOD)")
    return None


SPECIAL = ["fifo", "socket", "device"]


# -- 1. anything but a regular file ---------------------------------------------------------------


@pytest.mark.parametrize("kind", SPECIAL)
def test_append_refuses_a_ledger_path_that_is_not_a_regular_file(
    ledger: AttemptLedger, kind: str
) -> None:
    server = make_special(kind, ledger.path)
    try:
        for _ in range(2):  # not once only: the second append must not find it "known"
            with pytest.raises(LedgerIOError) as info:
                bounded(lambda: ledger.append(1, "s", EV), ledger.path)
            assert info.value.path == ledger.path
            assert "is not a regular file" in str(info.value)
        assert not stat.S_ISREG(ledger.path.lstat().st_mode)  # left as it was
        # The lock was released with the error.
        with FileLock(ledger.lock_path, timeout=0):
            pass
    finally:
        if server is not None:
            server.close()


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("kind", SPECIAL)
def test_readers_refuse_a_ledger_path_that_is_not_a_regular_file(
    ledger: AttemptLedger, kind: str, reader: str
) -> None:
    server = make_special(kind, ledger.path)
    try:
        with pytest.raises(LedgerIOError) as info:
            bounded(readers(ledger)[reader], ledger.path)
        assert info.value.path == ledger.path
        assert "is not a regular file" in str(info.value)
    finally:
        if server is not None:
            server.close()


@pytest.mark.parametrize("kind", SPECIAL)
def test_append_refuses_a_lock_path_that_is_not_a_regular_file(
    ledger: AttemptLedger, kind: str
) -> None:
    server = make_special(kind, ledger.lock_path)
    try:
        with pytest.raises(LedgerIOError) as info:
            bounded(lambda: ledger.append(1, "s", EV), ledger.lock_path)
        assert info.value.path == ledger.lock_path
        assert "is not a regular file" in str(info.value)
        assert not ledger.path.exists()
    finally:
        if server is not None:
            server.close()


def test_a_regular_ledger_is_read_and_appended_as_before(ledger: AttemptLedger) -> None:
    # O_NONBLOCK is only for the open: the descriptors read and write regular files as ever.
    assert ledger.append(1, "s", EV * 3).seq == 3
    assert all(reader() is not None for reader in readers(ledger).values())
    fd = ledger._handles.fd
    assert fd is not None
    assert os.get_blocking(fd)


# -- 2. symbolic links ----------------------------------------------------------------------------


@pytest.mark.parametrize("target_exists", [False, True])
def test_append_refuses_a_symlink_at_the_ledger_path(
    ledger: AttemptLedger, tmp_path: Path, target_exists: bool
) -> None:
    outside = tmp_path / "outside" / "target.jsonl"
    outside.parent.mkdir()
    if target_exists:
        outside.write_bytes(b'{"seq":7}\n')
    ledger.path.symlink_to(outside)
    with pytest.raises(LedgerIOError) as info:
        ledger.append(1, "s", EV)
    assert info.value.path == ledger.path
    assert info.value.errno == errno.ELOOP
    assert "is a symbolic link" in str(info.value)
    assert ledger.path.is_symlink()
    assert os.listdir(outside.parent) == (["target.jsonl"] if target_exists else [])
    if target_exists:
        assert outside.read_bytes() == b'{"seq":7}\n'


@pytest.mark.parametrize("reader", READERS)
def test_readers_refuse_a_symlink_at_the_ledger_path(
    ledger: AttemptLedger, tmp_path: Path, reader: str
) -> None:
    outside = tmp_path / "secret"
    outside.write_bytes(b'{"seq":7}\n')
    ledger.path.symlink_to(outside)
    with pytest.raises(LedgerIOError) as info:
        bounded(readers(ledger)[reader])
    assert info.value.path == ledger.path
    assert "is a symbolic link" in str(info.value)


def test_append_refuses_a_symlink_at_the_lock_path(ledger: AttemptLedger, tmp_path: Path) -> None:
    ledger.lock_path.symlink_to(tmp_path / "elsewhere.lock")
    with pytest.raises(LedgerIOError) as info:
        ledger.append(1, "s", EV)
    assert info.value.path == ledger.lock_path
    assert "is a symbolic link" in str(info.value)
    assert not (tmp_path / "elsewhere.lock").exists()
    assert not ledger.path.exists()


def test_symlinked_root_and_run_directory_are_followed(tmp_path: Path) -> None:
    # The documented choice: directories may be symlinks (a root on another disk, /var ->
    # /private/var); only the files the library creates itself must not be.
    real_root = tmp_path / "real-root"
    (real_root / "real-run").mkdir(parents=True)
    (tmp_path / "root").symlink_to(real_root)
    (real_root / "run").symlink_to(real_root / "real-run")
    ledger = AttemptLedger(tmp_path / "root", "run", "node")
    assert ledger.append(1, "s", EV).seq == 1
    assert read_last_seq(ledger.path) == 1
    assert (real_root / "real-run" / "node.jsonl").is_file()
    ledger.close()


# -- 3. a ledger moved away under an open ledger object -------------------------------------------


def test_append_follows_the_path_after_the_ledger_is_moved(ledger: AttemptLedger) -> None:
    assert ledger.append(1, "s", EV).seq == 1  # keeps the ledger open
    moved = ledger.path.with_name("node.jsonl.1")
    ledger.path.rename(moved)
    assert ledger.append(1, "s", EV).seq == 1  # a fresh ledger at the path
    assert ledger.append(1, "s", EV).seq == 2
    assert [r.seq for r in read_receipt_records(moved)] == [1]
    assert [r.seq for r in read_receipt_records(ledger.path)] == [1, 2]


def test_append_follows_the_path_after_the_ledger_is_replaced_by_a_hard_link(
    ledger: AttemptLedger, tmp_path: Path
) -> None:
    ledger.append(1, "s", EV)
    other = tmp_path / "other.jsonl"
    other.write_bytes(b'{"seq":41}\n')
    os.link(other, tmp_path / "keep")  # the moved-in file has two links, like the moved-out one
    os.replace(other, ledger.path)
    assert ledger.append(1, "s", EV).seq == 42


def test_append_follows_the_path_after_the_run_directory_is_moved(ledger: AttemptLedger) -> None:
    assert ledger.append(1, "s", EV).seq == 1
    moved = ledger.path.parent.with_name("run.old")
    ledger.path.parent.rename(moved)  # the lock file goes along, still linked
    assert ledger.append(1, "s", EV).seq == 1
    assert [r.seq for r in read_receipt_records(moved / "node.jsonl")] == [1]
    assert [r.seq for r in read_receipt_records(ledger.path)] == [1]


def test_a_writer_whose_run_directory_was_moved_takes_the_new_lock(ledger: AttemptLedger) -> None:
    timed = AttemptLedger(ledger.root, "run", "node", lock_timeout=0)
    timed.append(1, "s", EV)  # keeps the old lock file and ledger open
    ledger.path.parent.rename(ledger.path.parent.with_name("run.old"))
    assert ledger.append(1, "other", EV).seq == 1  # a new run directory, lock file and ledger
    with FileLock(ledger.lock_path), pytest.raises(LockTimeout):
        timed.append(1, "s", EV)  # must contend on the new lock file, not the moved one
    assert timed.append(1, "s", EV).seq == 2
    timed.close()


# -- 5. ids too long for the lock file's name -----------------------------------------------------


@pytest.mark.parametrize("name_bytes", [240, 249, 250, 251, 254, 255])
def test_every_ledger_name_that_can_exist_can_be_appended_to(
    tmp_path: Path, name_bytes: int
) -> None:
    node = "n" * (name_bytes - len(".jsonl"))
    ledger = AttemptLedger(tmp_path, "x" * 255, node)
    assert len(ledger.path.name) == name_bytes
    assert ledger.append(1, "s", EV).seq == 1
    assert ledger.append(1, "s", EV).seq == 2
    assert len(ledger.lock_path.name) <= 255
    assert ledger.lock_path.is_file()
    assert sorted(p.name for p in ledger.path.parent.iterdir()) == sorted(
        [ledger.path.name, ledger.lock_path.name]
    )
    ledger.close()


@pytest.mark.parametrize(("run", "node"), [("r", "n" * 250), ("r" * 256, "n"), ("r", "n" * 1000)])
def test_a_ledger_name_that_cannot_exist_is_refused_naming_the_path(
    tmp_path: Path, run: str, node: str
) -> None:
    with pytest.raises(LedgerIOError) as info:
        AttemptLedger(tmp_path, run, node).append(1, "s", EV)
    assert info.value.errno == errno.ENAMETOOLONG
    too_long = tmp_path / run if len(run) > 255 else tmp_path / run / f"{node}.jsonl"
    assert info.value.path == too_long
    assert "255" in str(info.value)
    assert list(tmp_path.iterdir()) == []


# -- 6. and the rest: every constructor parameter checked -----------------------------------------


@pytest.mark.parametrize("timeout", [math.inf, 1e300, float(2**63)])
def test_an_infinite_lock_timeout_waits_for_ever(tmp_path: Path, timeout: float) -> None:
    ledger = AttemptLedger(tmp_path, "run", "node", lock_timeout=timeout)
    assert ledger.append(1, "s", EV).seq == 1
    holder = FileLock(ledger.lock_path)
    holder.acquire()
    result: list[int] = []
    waiter = threading.Thread(target=lambda: result.append(ledger.append(1, "s", EV).seq))
    waiter.start()
    holder.release()
    waiter.join(timeout=BOUND)
    assert result == [2]
    ledger.close()


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"lock_timeout": math.nan}, ValueError, "lock_timeout"),
        ({"lock_timeout": -1}, ValueError, "lock_timeout"),
        ({"lock_timeout": -math.inf}, ValueError, "lock_timeout"),
        ({"lock_timeout": "1"}, TypeError, "lock_timeout"),
        ({"lock_timeout": True}, TypeError, "lock_timeout"),
        ({"lock_timeout": [1]}, TypeError, "lock_timeout"),
        ({"durable": 1}, TypeError, "durable"),
        ({"durable": "yes"}, TypeError, "durable"),
        ({"durable": None}, TypeError, "durable"),
    ],
)
def test_constructor_rejects_bad_options(
    tmp_path: Path, options: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        AttemptLedger(tmp_path, "run", "node", **options)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("root", "error"),
    [
        (123, TypeError),
        (None, TypeError),
        (b"/tmp/receipts", TypeError),
        ("/tmp/a\x00b", ValueError),
        ("/tmp/\ud800", ValueError),
    ],
)
def test_constructor_rejects_a_bad_root(root: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="root"):
        AttemptLedger(root, "run", "node")


def test_module_functions_reject_a_bad_root_too() -> None:
    with pytest.raises(ValueError, match="root"):
        append_receipts("/tmp/a\x00b", "run", "node", 1, "s", EV)


# -- 8. re-entry from a signal handler ------------------------------------------------------------


def _reenter_from_signal(root: Path, results: Any) -> None:
    """In a child: a SIGUSR1 handler appends to (and closes) the ledger the main thread is
    appending to; report what the handler saw and what the main append returned."""
    ledger = AttemptLedger(root, "run", "node")
    seen: list[str] = []

    def handler(signum: int, frame: object) -> None:
        for name, call in (
            ("append", lambda: ledger.append(1, "handler", EV)),
            ("close", ledger.close),
        ):
            try:
                call()
                seen.append(f"{name}: ok")
            except LedgerError as error:
                kinds = (isinstance(error, RuntimeError), "already" in str(error))
                seen.append(f"{name}: {type(error).__name__} {kinds}")

    signal.signal(signal.SIGUSR1, handler)
    real_write_all = ledger_module.write_all

    def write_then_signal(fd: int, data: bytes) -> None:
        os.kill(os.getpid(), signal.SIGUSR1)  # the handler runs here, under the lock
        real_write_all(fd, data)

    ledger_module.write_all = write_then_signal
    try:
        seq = ledger.append(1, "main", EV).seq
    finally:
        ledger_module.write_all = real_write_all
    seen.append(f"main: {seq}")
    seen.append(f"after: {ledger.append(1, 'main', EV).seq}")
    results.put(seen)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_append_from_a_signal_handler_mid_append_raises_instead_of_deadlocking(
    tmp_path: Path, method: str
) -> None:
    ctx = multiprocessing.get_context(method)
    results = ctx.Queue()
    child = ctx.Process(target=_reenter_from_signal, args=(tmp_path, results))  # type: ignore[attr-defined]
    child.start()
    try:
        seen = results.get(timeout=BOUND)
    except queue.Empty:
        seen = ["deadlocked"]
    finally:
        child.join(timeout=BOUND)
        if child.is_alive():
            child.kill()
            child.join(timeout=BOUND)
    assert seen == [
        "append: LockReentered (True, True)",
        "close: LockReentered (True, True)",
        "main: 1",
        "after: 2",
    ]
    assert [r.session_id for r in read_receipt_records(tmp_path / "run" / "node.jsonl")] == [
        "main",
        "main",
    ]


def test_lock_reentered_is_a_ledger_error_that_pickles() -> None:
    error = LockReentered(Path("/x/run/node.jsonl.lock"))
    assert isinstance(error, LedgerError)
    assert isinstance(error, RuntimeError)
    clone = pickle.loads(pickle.dumps(error))
    assert (type(clone), clone.path, str(clone)) == (LockReentered, error.path, str(error))
    assert str(error).startswith("/x/run/node.jsonl.lock: this thread already holds the lock")
