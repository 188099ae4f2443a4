"""``verify`` against a ledger that another process is appending to, and its torn tails."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from attempt_ledger import AttemptLedger, LockTimeout, ReceiptEvent
from attempt_ledger import _verify as verify_module
from attempt_ledger._verify import verify_ledger

START_METHODS = ["fork", "spawn"]
JOIN = 60.0


def _line(ledger: AttemptLedger, seq: int) -> bytes:
    from attempt_ledger._codec import encode_record
    from attempt_ledger._records import ReceiptRecord

    record = ReceiptRecord(1, "run", "node", 1, "w", seq, 0, "late", {"pad": "x" * 200})
    return encode_record(record)


def hold_torn_line(
    lock_path: Path, path: Path, line: bytes, written: Any, finish: Any, done: Any
) -> None:
    """Append ``line`` as an appender does, under the ledger's lock, but stop half-way until
    ``finish`` is set (a writer dies there if ``finish`` is never set)."""
    import os

    with FileLock(lock_path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        half = len(line) // 2
        os.write(fd, line[:half])
        written.set()
        if finish.wait(timeout=JOIN):
            os.write(fd, line[half:])
        os.close(fd)
    done.set()


@pytest.fixture
def seeded(root: Path) -> AttemptLedger:
    ledger = AttemptLedger(root, "run", "node")
    ledger.append(1, "w", [ReceiptEvent("a"), ReceiptEvent("b"), ReceiptEvent("c")])
    ledger.close()
    return ledger


class _Writer:
    def __init__(self, method: str, ledger: AttemptLedger) -> None:
        ctx = multiprocessing.get_context(method)
        self.written, self.finish, self.done = ctx.Event(), ctx.Event(), ctx.Event()
        self.process = ctx.Process(
            target=hold_torn_line,
            args=(
                ledger.lock_path,
                ledger.path,
                _line(ledger, 4),
                self.written,
                self.finish,
                self.done,
            ),
        )

    def __enter__(self) -> _Writer:
        self.process.start()
        assert self.written.wait(timeout=JOIN), "the writer did not start"
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.is_alive():  # a killed waiter would leave the event's lock taken
            self.finish.set()
        self.process.join(timeout=JOIN)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=JOIN)


def _verify(ledger: AttemptLedger, **options: Any) -> list[str]:
    return [str(p) for p in verify_ledger(ledger.path, "run", "node", **options)]


@pytest.mark.parametrize("method", START_METHODS)
def test_an_append_in_flight_is_not_a_torn_tail(
    method: str, seeded: AttemptLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiting = threading.Event()
    try_lock = getattr(verify_module, "_try_lock", None)

    def spy(fd: int) -> bool:
        assert try_lock is not None
        taken: bool = try_lock(fd)
        if not taken:
            waiting.set()
        return taken

    monkeypatch.setattr(verify_module, "_try_lock", spy, raising=False)
    verdict: list[list[str]] = []
    with _Writer(method, seeded) as writer:
        thread = threading.Thread(target=lambda: verdict.append(_verify(seeded)))
        thread.start()
        # The writer finishes once verify waits for its lock (at once if verify never waits).
        while thread.is_alive() and not waiting.wait(timeout=0.05):
            pass
        writer.finish.set()
        thread.join(timeout=JOIN)
    assert verdict == [[]]
    assert waiting.is_set()  # verify did see the half-written line, and waited it out
    assert seeded.last_seq() == 4


@pytest.mark.parametrize("method", START_METHODS)
def test_an_append_completing_after_the_scan_is_not_a_torn_tail(
    method: str, seeded: AttemptLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _Writer(method, seeded) as writer:
        real_iter_lines = verify_module.iter_lines
        scans = 0

        def iter_lines(*args: Any, **kwargs: Any) -> Iterator[tuple[bytes | None, int]]:
            # When verify's first scan has read to the end (the half line included), the
            # append completes, before verify looks at the file's size.
            nonlocal scans
            scans += 1
            yield from real_iter_lines(*args, **kwargs)
            if scans == 1:
                writer.finish.set()
                assert writer.done.wait(timeout=JOIN)

        monkeypatch.setattr(verify_module, "iter_lines", iter_lines)
        assert _verify(seeded) == []
    assert seeded.last_seq() == 4


@pytest.mark.parametrize("method", START_METHODS)
def test_a_writer_that_dies_mid_line_leaves_a_torn_tail(method: str, seeded: AttemptLedger) -> None:
    writer = _Writer(method, seeded)
    with writer:
        writer.process.kill()  # dies holding the lock; the kernel releases it
        writer.process.join(timeout=JOIN)
    half = len(_line(seeded, 4)) // 2
    assert _verify(seeded) == [f"{seeded.path}: torn-tail: {half} bytes after the last newline"]


def test_a_lock_held_for_ever_times_out(seeded: AttemptLedger) -> None:
    with _Writer("fork", seeded), pytest.raises(LockTimeout) as caught:
        _verify(seeded, lock_timeout=0.01)
    assert caught.value.path == seeded.lock_path


def test_a_record_that_lost_only_its_newline_counts(seeded: AttemptLedger) -> None:
    with seeded.path.open("ab") as f:
        f.write(_line(seeded, 4)[:-1])
    path = str(seeded.path)
    assert _verify(seeded) == [f"{path}:4: torn-tail: the last line has no final newline"]
    with seeded.path.open("ab") as f:
        f.write(b"\n" + _line(seeded, 6)[:-1])
    assert _verify(seeded) == [
        f"{path}:5: seq-gap: seq 6: missing 5",
        f"{path}:5: torn-tail: the last line has no final newline",
    ]


def test_verify_takes_no_lock_file_into_being(root: Path) -> None:
    ledger = AttemptLedger(root, "run", "node")
    ledger.path.parent.mkdir(parents=True)
    ledger.path.write_bytes(_line(ledger, 1) + b'{"seq":')
    assert _verify(ledger) == [f"{ledger.path}: torn-tail: 7 bytes after the last newline"]
    assert not ledger.lock_path.exists()


def test_a_fifo_at_the_lock_path_is_not_waited_on(root: Path) -> None:
    import os

    ledger = AttemptLedger(root, "run", "node")
    ledger.path.parent.mkdir(parents=True)
    ledger.path.write_bytes(_line(ledger, 1) + b'{"seq":')
    os.mkfifo(ledger.lock_path)
    assert _verify(ledger) == [f"{ledger.path}: torn-tail: 7 bytes after the last newline"]


def test_verify_all_skips_a_ledger_removed_while_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `verify --all` lists the ledgers, then reads each: one removed in between (prune running
    # meanwhile) raised "no such file" (exit 3) instead of being skipped.
    AttemptLedger(tmp_path, "a", "m").append(1, "s", [ReceiptEvent("e")])
    listed = [*verify_module.list_ledgers(tmp_path), ("a", "n", tmp_path / "a" / "n.jsonl")]
    monkeypatch.setattr(verify_module, "list_ledgers", lambda root: iter(listed))
    assert list(verify_module.verify_root(tmp_path)) == []
