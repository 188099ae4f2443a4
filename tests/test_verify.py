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


def test_verify_root_shares_raw_ids_across_a_runs_ledgers(root: Path) -> None:
    # "run/1" and "run:1" share the run directory "run-1": each ledger alone is clean, the
    # collision shows only when the run ids seen in one ledger are remembered for the next
    # ledgers of that run (and only of that run: "other" collides with nothing).
    from attempt_ledger._verify import verify_root

    for run_id, node_id in (("run/1", "a"), ("run:1", "b"), ("other", "c")):
        with AttemptLedger(root, run_id, node_id) as ledger:
            ledger.append(1, "s", [ReceiptEvent("e")])
    problems = [str(problem) for problem in verify_root(root)]
    second = AttemptLedger(root, "run:1", "b").path
    assert problems == [
        f"{second}:1: path-collision: 'run:1' shares the path with 'run/1' "
        f"({AttemptLedger(root, 'run/1', 'a').path}:1)"
    ]


def _torn(ledger: AttemptLedger, seq: int, payload: str) -> bytes:
    """A whole record of ``seq`` without its newline, its payload ``payload`` (JSON)."""
    line = _line(ledger, seq)
    return line[: line.index(b',"payload":')] + b',"payload":' + payload.encode() + b"}"


@pytest.mark.parametrize("end", ["", "  \t"])
def test_a_record_ending_in_a_scalar_that_lost_its_newline_counts(
    seeded: AttemptLedger, end: str
) -> None:
    # The last two bytes are `l}`: the record's own brace is the only one at the end.
    with seeded.path.open("ab") as f:
        f.write(_torn(seeded, 4, "null") + end.encode())
    assert _verify(seeded) == [f"{seeded.path}:4: torn-tail: the last line has no final newline"]


def test_a_huge_torn_tail_of_garbage_is_not_read_whole(seeded: AttemptLedger) -> None:
    import tracemalloc

    size = 8 << 20
    with seeded.path.open("ab") as f:
        f.write(b"x" * size + b"}")  # ends like an object, opens like none
    tracemalloc.start()
    try:
        found = _verify(seeded)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found == [f"{seeded.path}: torn-tail: {size + 1} bytes after the last newline"]
    assert peak < size // 2


def test_a_lock_path_that_cannot_be_opened_is_named(seeded: AttemptLedger) -> None:
    import errno
    import os

    from attempt_ledger import LedgerIOError

    with seeded.path.open("ab") as f:
        f.write(b'{"seq":')
    os.unlink(seeded.lock_path)
    os.symlink(seeded.lock_path.with_name("elsewhere"), seeded.lock_path)
    with pytest.raises(LedgerIOError) as info:
        _verify(seeded)
    assert (info.value.path, info.value.errno) == (seeded.lock_path, errno.ELOOP)
    assert str(info.value) == (
        f"{seeded.lock_path}: cannot open the lock file: {os.strerror(errno.ELOOP)}"
    )


def test_a_long_line_that_cannot_be_json_is_malformed(seeded: AttemptLedger) -> None:
    from attempt_ledger._reader import READ_CHUNK

    with seeded.path.open("ab") as f:
        f.write(b"\x01" * (READ_CHUNK + 1) + b"\n")  # dropped while read: it comes as None
    assert _verify(seeded) == [
        f"{seeded.path}:4: malformed: not JSON (raw control bytes, or no object brackets)"
    ]


def test_verify_waits_for_the_lock_within_its_timeout(
    seeded: AttemptLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An append holds the lock when verify first tries it, and lets go right after: a timeout
    # under a second is still waited out, not given up at once.
    with seeded.path.open("ab") as f:
        f.write(b'{"seq":')
    holder = FileLock(seeded.lock_path)
    holder.acquire()
    real_try_lock = verify_module._try_lock
    tries: list[bool] = []

    def try_lock(fd: int) -> bool:
        taken = real_try_lock(fd)
        tries.append(taken)
        if not taken:
            holder.release()
        return taken

    monkeypatch.setattr(verify_module, "_try_lock", try_lock)
    try:
        assert _verify(seeded, lock_timeout=0.9) == [
            f"{seeded.path}: torn-tail: 7 bytes after the last newline"
        ]
    finally:
        holder.release()
    assert tries == [False, True]


def test_every_kind_of_bad_line_is_named_exactly(seeded: AttemptLedger) -> None:
    bad = [b"", b" \t\r", b"\x0c", b"XX", b"\xff{}", b'{"seq":-1}']
    with seeded.path.open("ab") as f:
        f.write(b"".join(line + b"\n" for line in bad))
    path = seeded.path
    not_seq = "malformed: not a JSON object with an integer seq in 0..2**64-1"
    assert _verify(seeded) == [
        f"{path}:4: blank: blank line",
        f"{path}:5: blank: blank line",
        f"{path}:6: {not_seq}",  # a form feed is whitespace to Python, not to JSON
        f"{path}:7: {not_seq}",
        f"{path}:8: invalid-utf8: invalid UTF-8 at byte 0",
        f"{path}:9: {not_seq}",
    ]


def test_every_kind_of_problem_in_one_ledger(seeded: AttemptLedger) -> None:
    import json

    def line(seq: int, run_id: str = "run", node_id: str = "node") -> bytes:
        record = {
            "version": 1, "run_id": run_id, "node_id": node_id, "attempt": 1,
            "session_id": "s", "seq": seq, "ts_ms": 0, "event_type": "e", "payload": None,
        }  # fmt: skip
        return json.dumps(record).encode() + b"\n"

    with seeded.path.open("ab") as f:
        f.write(b"not json\n")  # line 4
        f.write(line(5))  # 5: gap (4 missing)
        f.write(line(5))  # 6: duplicate
        f.write(line(2))  # 7: out of order
        f.write(b'{"seq": 6}\n')  # 8: a valid seq, no record
        f.write(line(7, run_id="other"))  # 9: belongs elsewhere
        f.write(line(8, node_id="other"))  # 10: belongs elsewhere
        f.write(line(9, run_id="run:"))  # 11: another run id, the same path
        f.write(line(10, run_id="run:"))  # 12: the same one again: reported once
        f.write(line(11, node_id="node/"))  # 13: another node id, the same path
        f.write(line(14))  # 14: a gap of several
    path = seeded.path
    assert _verify(seeded) == [
        f"{path}:4: malformed: not a JSON object with an integer seq in 0..2**64-1",
        f"{path}:5: seq-gap: seq 5: missing 4",
        f"{path}:6: duplicate-seq: seq 5 again",
        f"{path}:7: out-of-order: seq 2 after 5",
        f"{path}:8: not-a-record: seq 6 has no well-typed receipt",
        f"{path}:9: wrong-ledger: run_id 'other'",
        f"{path}:10: wrong-ledger: node_id 'other'",
        f"{path}:11: path-collision: 'run:' shares the path with 'run' ({path}:1)",
        f"{path}:13: path-collision: 'node/' shares the path with 'node' ({path}:1)",
        f"{path}:14: seq-gap: seq 14: missing 12..13",
    ]


def _ledger_of(root: Path, data: bytes) -> AttemptLedger:
    ledger = AttemptLedger(root, "run", "node")
    ledger.path.parent.mkdir(parents=True, exist_ok=True)
    ledger.path.write_bytes(data)
    return ledger


def test_seq_rules_from_the_first_line_on(root: Path) -> None:
    probe = AttemptLedger(root, "run", "node")
    lines = {seq: _line(probe, seq) for seq in range(4)}
    ledger = _ledger_of(root, lines[0] + lines[1])
    assert _verify(ledger) == []  # seq 0 first is no problem
    ledger = _ledger_of(root, lines[2] + lines[3])
    assert _verify(ledger) == [f"{ledger.path}:1: seq-gap: seq 2: missing 1"]
    ledger = _ledger_of(root, lines[1] + lines[3] + lines[2] + lines[3])
    assert _verify(ledger) == [
        f"{ledger.path}:2: seq-gap: seq 3: missing 2",
        f"{ledger.path}:3: out-of-order: seq 2 after 3",
        f"{ledger.path}:4: out-of-order: seq 3 after 2",  # the highest again, not just before
    ]


def test_empty_missing_and_newline_less_ledgers(root: Path) -> None:
    import errno

    from attempt_ledger import LedgerIOError

    ledger = _ledger_of(root, b"")
    assert _verify(ledger) == []
    ledger.path.write_bytes(_line(ledger, 1)[:-1])  # one record, without its newline
    assert _verify(ledger) == [f"{ledger.path}:1: torn-tail: the last line has no final newline"]
    ledger.path.unlink()
    with pytest.raises(LedgerIOError) as info:
        _verify(ledger)
    assert (info.value.path, info.value.errno) == (ledger.path, errno.ENOENT)
    assert str(info.value) == f"{ledger.path}: cannot open the ledger: no such file"


@pytest.mark.parametrize("torn_at_the_lock", [False, True])
def test_lines_completed_before_the_lock_are_checked_and_later_ones_are_not(
    seeded: AttemptLedger, monkeypatch: pytest.MonkeyPatch, torn_at_the_lock: bool
) -> None:
    # Appends go on while verify reads: the lines whole when it holds the lock are checked,
    # with their numbers; what comes after is not the ledger verify judged.
    fourth, fifth = _line(seeded, 5), _line(seeded, 6)  # seq 5 on line 4: a gap
    half = len(fourth) // 2
    with seeded.path.open("ab") as f:
        f.write(fourth[:half])
    real_settled_tail = verify_module._settled_tail

    def settled_tail(fd: int, lock_path: Path, timeout: float) -> tuple[int, bool]:
        with seeded.path.open("ab") as f:
            f.write(fourth[half:] + (fifth[:half] if torn_at_the_lock else b""))
        settled = real_settled_tail(fd, lock_path, timeout)
        with seeded.path.open("ab") as f:
            f.write(fifth[half:] + _line(seeded, 7) if torn_at_the_lock else fifth)
        return settled

    monkeypatch.setattr(verify_module, "_settled_tail", settled_tail)
    expected = [f"{seeded.path}:4: seq-gap: seq 5: missing 4"]
    if torn_at_the_lock:
        expected.append(f"{seeded.path}: torn-tail: {half} bytes after the last newline")
    assert _verify(seeded) == expected


def test_a_torn_tail_shaped_like_an_object_but_not_json_is_only_a_torn_tail(
    seeded: AttemptLedger,
) -> None:
    with seeded.path.open("ab") as f:
        f.write(b'{"seq": x}')
    assert _verify(seeded) == [f"{seeded.path}: torn-tail: 10 bytes after the last newline"]


def test_a_read_error_names_the_ledger_and_the_cause(
    seeded: AttemptLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from attempt_ledger import LedgerIOError

    def pread(fd: int, size: int, offset: int) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "pread", pread)
    with pytest.raises(LedgerIOError) as info:
        _verify(seeded)
    assert (info.value.path, info.value.errno) == (seeded.path, errno.EIO)
    assert str(info.value) == f"{seeded.path}: cannot read the ledger: {os.strerror(errno.EIO)}"
