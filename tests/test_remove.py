"""Removing ledgers and runs under their locks: remove_ledger, remove_run and their path forms."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import struct
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock
from hypothesis import given
from hypothesis import strategies as st

import attempt_ledger._remove as remove_module
from attempt_ledger import (
    AttemptLedger,
    LedgerIOError,
    LockTimeout,
    ReceiptEvent,
    Removal,
    receipts_path,
    remove_ledger,
    remove_ledger_file,
    remove_run,
    remove_run_dir,
)
from tests.strategies import ids

EV = [ReceiptEvent("e", {"k": 1})]


def _append(root: Path, run: str = "run/1", node: str = "a") -> AttemptLedger:
    ledger = AttemptLedger(root, run, node)
    ledger.append(1, "s", EV)
    return ledger


def _tree(path: Path) -> dict[str, bytes | None]:
    """Every entry under ``path``: file contents, ``None`` for directories and special files."""
    found: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            regular = full.is_file() and not full.is_symlink()
            found[str(full.relative_to(path))] = full.read_bytes() if regular else None
    return found


# -- removing: the plain cases -------------------------------------------------------------------


def test_remove_ledger_removes_the_ledger_and_its_lock_and_nothing_else(root: Path) -> None:
    ledger = _append(root, "run/1", "a")
    _append(root, "run/1", "b")
    _append(root, "run/2", "a")
    before = _tree(root)
    removal = remove_ledger(root, "run/1", "a")
    assert removal == Removal(ledger.path, (ledger.path, ledger.lock_path))
    assert removal.ledgers == (ledger.path,)
    gone = {"run-1/a.jsonl", "run-1/a.jsonl.lock"}
    assert _tree(root) == {k: v for k, v in before.items() if k not in gone}


def test_remove_run_removes_its_ledgers_and_directory_only(root: Path) -> None:
    a, b = _append(root, "run/1", "a"), _append(root, "run/1", "b")
    _append(root, "run/2", "a")
    before = _tree(root)
    removal = remove_run(root, "run/1")
    assert removal == Removal(
        a.path.parent, (a.path, a.lock_path, b.path, b.lock_path), dir_removed=True
    )
    assert removal.ledgers == (a.path, b.path)
    assert _tree(root) == {k: v for k, v in before.items() if not k.startswith("run-1")}


def test_removal_by_directory_name_as_iter_ledgers_gives_it(root: Path) -> None:
    ledger = _append(root, "run/1", "node:a")
    assert remove_ledger_file(ledger.path).files == (ledger.path, ledger.lock_path)
    _append(root, "run/1", "node:a")
    assert remove_run_dir(root / "run-1").dir_removed
    assert not root.joinpath("run-1").exists()


def test_missing_things_are_not_errors_and_nothing_is_created(root: Path) -> None:
    assert remove_ledger(root, "run", "node") == Removal(receipts_path(root, "run", "node"))
    assert remove_run(root, "run") == Removal(root / "run")
    assert not root.exists()
    _append(root, "run", "other")
    before = _tree(root)
    assert remove_ledger(root, "run", "node").files == ()
    assert remove_run(root, "nope") == Removal(root / "nope")
    assert _tree(root) == before


def test_a_lock_file_without_ledger_goes_too_and_a_ledger_without_lock(root: Path) -> None:
    ledger = _append(root)
    ledger.close()
    ledger.path.unlink()  # an orphan lock file, as a failed first append can leave
    assert remove_ledger(root, "run/1", "a").files == (ledger.lock_path,)
    _append(root).close()
    ledger.lock_path.unlink()
    assert remove_ledger(root, "run/1", "a").files == (ledger.path,)  # the lock it made: not news
    assert _tree(root) == {"run-1": None}


def test_a_run_holding_other_files_keeps_its_directory_and_says_so(root: Path) -> None:
    ledger = _append(root)
    (ledger.path.parent / "notes.txt").write_text("mine")
    removal = remove_run(root, "run/1")
    assert removal.files == (ledger.path, ledger.lock_path)
    assert not removal.dir_removed
    assert removal.kept == "not empty: notes.txt"
    assert _tree(root) == {"run-1": None, "run-1/notes.txt": b"mine"}


# -- writers that hold the removed files open ------------------------------------------------------


def test_a_writer_holding_the_removed_files_open_starts_a_fresh_ledger(root: Path) -> None:
    writer = _append(root)
    writer.append(1, "s", EV)  # both descriptors now open and cached
    other = _append(root, "run/1", "b")
    old = os.open(writer.path, os.O_RDONLY)
    try:
        content = os.pread(old, 1 << 20, 0)
        remove_ledger(root, "run/1", "a")
        assert os.fstat(old).st_nlink == 0
        assert writer.append(1, "s", EV).seq == 1  # a new ledger, not seq 3 in the removed file
        assert os.pread(old, 1 << 20, 0) == content
        assert writer.last_seq() == 1
        assert other.append(1, "s", EV).seq == 2  # the other ledger went on
        remove_run(root, "run/1")
        assert writer.append(1, "s", EV).seq == other.append(1, "s", EV).seq == 1
    finally:
        os.close(old)
        writer.close()
        other.close()


def test_removal_waits_for_the_lock_and_can_time_out(root: Path) -> None:
    ledger = _append(root)
    before = _tree(root)
    with FileLock(ledger.lock_path), pytest.raises(LockTimeout) as caught:
        remove_ledger(root, "run/1", "a", lock_timeout=0.01)
    assert caught.value.path == ledger.lock_path
    assert _tree(root) == before
    with FileLock(ledger.lock_path), pytest.raises(LockTimeout):
        remove_run(root, "run/1", lock_timeout=0)
    assert remove_run(root, "run/1", lock_timeout=0).dir_removed


# -- what is not a ledger is not followed ---------------------------------------------------------


def make_outside(tmp_path: Path) -> Path:
    """A directory beside the root, with files a planted link could point at."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "a.jsonl").write_bytes(b"precious\n")
    (path / "a.jsonl.lock").write_bytes(b"")
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    return make_outside(tmp_path)


@pytest.mark.parametrize("which", ["ledger", "lock"])
@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_a_planted_file_is_refused_and_nothing_changes(
    root: Path, outside: Path, which: str, kind: str
) -> None:
    ledger = _append(root)
    ledger.close()
    target = ledger.path if which == "ledger" else ledger.lock_path
    target.unlink()
    if kind == "symlink":
        target.symlink_to(outside / target.name)
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    before, outside_before = _tree(root), _tree(outside)
    for remove in (
        lambda: remove_ledger(root, "run/1", "a"),
        lambda: remove_run(root, "run/1"),
        lambda: remove_run_dir(root / "run-1"),
    ):
        with pytest.raises(LedgerIOError) as caught:
            remove()
        assert caught.value.path == target
        assert "not a ledger file; not removed" in str(caught.value)
        assert _tree(root) == before
        assert _tree(outside) == outside_before


def test_a_run_directory_that_is_a_symlink_is_not_followed(root: Path, outside: Path) -> None:
    _append(root, "run/2", "a")
    (root / "run-1").symlink_to(outside)
    before, outside_before = _tree(root), _tree(outside)
    for remove in (
        lambda: remove_ledger(root, "run/1", "a"),
        lambda: remove_run(root, "run/1"),
        lambda: remove_run_dir(root / "run-1"),
        lambda: remove_ledger_file(root / "run-1" / "a.jsonl"),
    ):
        with pytest.raises(LedgerIOError, match="is a symbolic link, not a run directory"):
            remove()
        assert _tree(root) == before
        assert _tree(outside) == outside_before


def test_a_second_hard_link_is_refused(root: Path, tmp_path: Path) -> None:
    # Once unlinked at its path, the file would still have a link: a writer holding it open
    # would not notice the removal (st_nlink is 1, not 0) and would go on appending to it.
    ledger = _append(root)
    aside = tmp_path / "aside"
    aside.mkdir()
    for path in (ledger.path, ledger.lock_path):
        os.link(path, aside / path.name)
        before = _tree(root)
        with pytest.raises(LedgerIOError, match="has 2 hard links") as caught:
            remove_run(root, "run/1")
        assert caught.value.path == path
        assert _tree(root) == before
        (aside / path.name).unlink()
    assert remove_run(root, "run/1").dir_removed


def test_a_failing_unlink_names_the_path_and_leaves_the_rest(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = _append(root)
    real_unlink = os.unlink
    failing: list[Path] = []

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path) in failing:
            raise OSError(errno.EIO, "Input/output error")
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(remove_module.os, "unlink", unlink)
    failing[:] = [ledger.path]
    before = _tree(root)
    with pytest.raises(LedgerIOError, match="cannot remove the ledger: Input/output error") as e:
        remove_run(root, "run/1")
    assert e.value.path == ledger.path
    assert e.value.errno == errno.EIO
    assert _tree(root) == before
    failing[:] = [ledger.lock_path]
    with pytest.raises(LedgerIOError, match="cannot remove the lock file") as e:
        remove_ledger(root, "run/1", "a")
    assert e.value.path == ledger.lock_path
    assert _tree(root) == {"run-1": None, "run-1/a.jsonl.lock": b""}
    assert ledger.append(1, "s", EV).seq == 1  # the lock file left behind is still a lock


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda r: remove_ledger(r, 1, "n"), TypeError),  # type: ignore[arg-type]
        (lambda r: remove_ledger(r, "r", None), TypeError),  # type: ignore[arg-type]
        (lambda r: remove_run(r, b"r"), TypeError),  # type: ignore[arg-type]
        (lambda r: remove_run(r, "r", lock_timeout=-1), ValueError),
        (lambda r: remove_ledger(r, "r", "n", lock_timeout=float("nan")), ValueError),
        (lambda r: remove_run_dir(r / "a\x00b"), ValueError),
        (lambda r: remove_ledger_file(r / "r" / "a\x00b.jsonl"), ValueError),
    ],
)
def test_wrong_arguments(root: Path, call: Any, error: type[Exception]) -> None:
    _append(root, "r", "n")
    before = _tree(root)
    with pytest.raises(error):
        call(root)
    assert _tree(root) == before


def test_odd_ids(root: Path) -> None:
    # All of these sanitise to unknown/unknown.jsonl; a lone surrogate cannot be written, but
    # it can name a ledger to remove.
    for run, node in [("", ""), ("\x00", "\udcff"), ("é/..", "../..")]:
        ledger = _append(root, "", "")
        assert remove_ledger(root, run, node).ledgers == (ledger.path,)
    assert remove_ledger(root, "r", "x" * 5000).files == ()  # no run r: nothing to look at
    _append(root, "r", "n")
    before = _tree(root)
    with pytest.raises(LedgerIOError, match="File name too long") as caught:
        remove_ledger(root, "r", "x" * 5000)
    assert caught.value.path == receipts_path(root, "r", "x" * 5000)
    assert _tree(root) == before


@given(st.lists(st.tuples(ids, ids), min_size=1, max_size=4), st.integers(0, 3))
def test_removing_one_ledger_leaves_every_other_path(
    tmp_path_factory: pytest.TempPathFactory, pairs: list[tuple[str, str]], pick: int
) -> None:
    root = tmp_path_factory.mktemp("receipts")
    for run, node in pairs:
        _append(root, run, node).close()
    run, node = pairs[pick % len(pairs)]
    path = receipts_path(root, run, node)
    keep = {p.relative_to(root) for r, n in pairs if (p := receipts_path(root, r, n)) != path}
    assert remove_ledger(root, run, node).ledgers == (path,)
    assert {p.relative_to(root) for p in root.glob("*/*.jsonl")} == keep
    assert remove_run(root, run).ledgers == tuple(
        sorted(root / p for p in keep if p.parent.name == path.parent.name)
    )
    assert not path.parent.exists()


# -- live writers in other processes --------------------------------------------------------------

ACK = struct.Struct("<IIQq")  # worker, its append number, seq acknowledged, generation at start


def _writer(
    root: str, node: str, worker: int, acks: Connection, generation: Any, stop: Any
) -> None:
    """Append in a loop; after each append returns, acknowledge it with the removal generation
    read before the append began."""
    ledger = AttemptLedger(root, "run/1", node)
    i = 0
    while not stop.is_set():
        i += 1
        started = generation.value
        summary = ledger.append(1, f"w{worker}", [ReceiptEvent("tick", {"w": worker, "i": i})])
        acks.send_bytes(ACK.pack(worker, i, summary.seq, started))
    acks.close()


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    data = b""
    while len(data) < size:
        chunk = os.pread(fd, size - len(data), len(data))
        assert chunk
        data += chunk
    return data


def _records(data: bytes) -> list[dict[str, Any]]:
    lines = data.split(b"\n")
    assert lines[-1] == b"", "a torn line"
    records = [json.loads(line) for line in lines[:-1]]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))  # no dup, no gap
    return records


def _live_removals(tmp_path: Path, method: str, scope: str, rounds: int) -> None:
    """Three writers (two on node a, one on b) append in a loop while this process removes
    node a's ledger (or the whole run) ``rounds`` times; each removal waits until every writer
    has acknowledged an append begun after the previous one."""
    ctx = multiprocessing.get_context(method)
    root = tmp_path / "receipts"
    nodes = ["a", "a", "b"]
    removed_nodes = ["a"] if scope == "ledger" else ["a", "b"]
    generation = ctx.RawValue("q", 0)
    stop = ctx.Event()
    readers: list[Connection] = []
    processes = []
    acks: list[tuple[int, int, int, int]] = []
    latest = [-1] * len(nodes)  # per writer: the newest generation acknowledged
    files: list[tuple[int, str, bytes]] = []  # (removed at generation, node, content)
    open_removed: list[tuple[int, str, int, bytes]] = []

    def receive(conn: Connection) -> None:
        try:
            ack = ACK.unpack(conn.recv_bytes())
        except EOFError:
            readers.remove(conn)
            return
        acks.append(ack)
        latest[ack[0]] = max(latest[ack[0]], ack[3])

    def drain_until(gen: int) -> None:
        deadline = time.monotonic() + 60
        while min(latest) < gen:
            ready = wait(readers, timeout=max(0, deadline - time.monotonic()))
            assert ready, f"writers stalled: {[p.exitcode for p in processes]}"
            for conn in ready:
                receive(conn)  # type: ignore[arg-type]
            assert len(readers) == len(nodes), f"a writer died: {[p.exitcode for p in processes]}"
        for gen_removed, node, fd, content in open_removed:
            # Every writer has appended since: none of it may have gone into a removed file.
            assert _read_all(fd) == content, f"appended to node {node}'s ledger after removal"
            os.close(fd)
            files.append((gen_removed, node, content))
        open_removed.clear()

    try:
        for worker, node in enumerate(nodes):
            reader, sender = ctx.Pipe(duplex=False)
            process = ctx.Process(
                target=_writer,
                args=(str(root), node, worker, sender, generation, stop),
                daemon=True,
            )
            process.start()
            sender.close()
            readers.append(reader)
            processes.append(process)
        dirs_removed = 0
        for gen in range(1, rounds + 1):
            drain_until(gen - 1)
            paths = [receipts_path(root, "run/1", node) for node in removed_nodes]
            fds = [os.open(path, os.O_RDONLY) for path in paths]  # writers just appended
            if scope == "ledger":
                removal = remove_ledger(root, "run/1", "a")
            else:
                removal = remove_run(root, "run/1")
            generation.value = gen
            assert removal.ledgers == tuple(paths)
            if scope == "run":
                dirs_removed += removal.dir_removed
                assert removal.dir_removed or (removal.kept or "").startswith("not empty")
            for node, fd in zip(removed_nodes, fds, strict=True):
                assert os.fstat(fd).st_nlink == 0  # it was this file that went
                open_removed.append((gen, node, fd, _read_all(fd)))
        drain_until(rounds)
        stop.set()
        deadline = time.monotonic() + 60
        while readers:
            ready = wait(readers, timeout=max(0, deadline - time.monotonic()))
            assert ready, "writers did not stop"
            for conn in ready:
                receive(conn)  # type: ignore[arg-type]
        for process in processes:
            process.join(timeout=60)
            assert process.exitcode == 0
    finally:
        stop.set()
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=10)
        for conn in readers:
            conn.close()
        for *_, fd, _ in open_removed:
            os.close(fd)

    final = rounds + 1
    for node in sorted(set(nodes)):
        files.append((final, node, receipts_path(root, "run/1", node).read_bytes()))
    where: dict[tuple[int, int], tuple[int, str, int]] = {}
    for gen_removed, node, content in files:
        for record in _records(content):
            key = (record["payload"]["w"], record["payload"]["i"])
            assert key not in where, f"append {key} is in two files"
            where[key] = (gen_removed, node, record["seq"])
    assert len(where) == len(acks)  # nothing appended that was not acknowledged
    for worker, i, seq, started in acks:
        # An append begun after removal N is in a file created after it: removed later, or the
        # one left at the end.
        gen_removed, node, file_seq = where[worker, i]
        assert (node, file_seq) == (nodes[worker], seq)
        assert gen_removed > started, (worker, i, started, gen_removed)
    assert len(files) == rounds * len(removed_nodes) + 2
    if scope == "ledger":
        assert receipts_path(root, "run/1", "b").exists()


@pytest.mark.parametrize("scope", ["ledger", "run"])
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_live_writers_never_append_into_a_removed_ledger(
    tmp_path: Path, method: str, scope: str
) -> None:
    _live_removals(tmp_path, method, scope, rounds=20)


@pytest.mark.stress
@pytest.mark.parametrize("scope", ["ledger", "run"])
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_live_writers_never_append_into_a_removed_ledger_long(
    tmp_path: Path, method: str, scope: str
) -> None:
    _live_removals(tmp_path, method, scope, rounds=int(os.environ.get("REMOVE_ROUNDS", "500")))


def test_only_a_ledger_path_is_taken_for_a_ledger(root: Path) -> None:
    ledger = _append(root)
    precious = ledger.path.parent / "precious.txt"
    precious.write_text("x")
    before = _tree(root)
    for path in (precious, ledger.lock_path, ledger.path.parent):
        with pytest.raises(ValueError, match=r"not a ledger's path \(its name does not end in"):
            remove_ledger_file(path)
    assert _tree(root) == before
