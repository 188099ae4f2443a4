"""``attempt-ledger prune``: which runs it chooses, and the command line around it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

import attempt_ledger._remove as remove_module
from attempt_ledger import ReceiptRecord, encode_record, remove_run_dir
from attempt_ledger._paths import lock_path_for
from attempt_ledger._remove import parse_duration, prune_run, runs_older_than
from tests.test_cli import COMMAND, one_line_error
from tests.test_remove import _append, _tree, make_outside


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    return make_outside(tmp_path)


# -- prune -----------------------------------------------------------------------------------------

DAY_MS = 86_400_000


def _old_record(run: str, node: str, days: float, seq: int = 1) -> bytes:
    ts_ms = int(time.time() * 1000 - days * DAY_MS)
    return encode_record(ReceiptRecord(1, run, node, 1, "s", seq, ts_ms, "old", None))


def _ledger_file(root: Path, run: str, node: str, data: bytes, mtime_days: float = 0) -> Path:
    path = root / run / f"{node}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_days:
        when = time.time() - mtime_days * 86_400
        os.utime(path, (when, when))
    return path


def prune(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*COMMAND, "--root", str(root), "prune", *args],
        capture_output=True,
        timeout=120,
        check=False,
    )


def _lines(done: subprocess.CompletedProcess[bytes]) -> list[str]:
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    return [os.fsdecode(line) for line in done.stdout.splitlines()]


def test_prune_removes_the_runs_whose_newest_record_is_older(root: Path) -> None:
    a = _ledger_file(root, "old", "a", _old_record("old", "a", 40) + _old_record("old", "a", 35, 2))
    b = _ledger_file(root, "old", "b", _old_record("old", "b", 31))
    _ledger_file(root, "mixed", "a", _old_record("mixed", "a", 40))
    _append(root, "mixed", "b").close()
    _append(root, "new", "a").close()
    before = _tree(root)
    assert _lines(prune(root, "--older-than", "36d")) == []  # old's newest: 31 days
    assert _lines(prune(root, "--older-than", "30d", "--dry-run")) == [
        f"would remove {a}",
        f"would remove {b}",
        f"would remove {root / 'old'}",
    ]
    assert _tree(root) == before
    assert _lines(prune(root, "--older-than", "30d")) == [
        f"removed {a}",
        f"removed {b}",
        f"removed {root / 'old'}",
    ]
    assert _tree(root) == {k: v for k, v in before.items() if not k.startswith("old")}
    assert _lines(prune(root, "--older-than", "30d")) == []


def test_durations() -> None:
    assert [parse_duration(text) for text in ("45s", "90m", "12h", "30d", "0s")] == [
        45_000,
        90 * 60_000,
        12 * 3_600_000,
        30 * DAY_MS,
        0,
    ]
    assert parse_duration("9" * 15 + "d") == int("9" * 15) * DAY_MS


@pytest.mark.parametrize(
    "duration",
    ["5", "5x", "-5d", "1.5h", "", "d", "5 d", " 5d", "5D", "\u0665d", "1" + "0" * 15 + "d"],
)
def test_bad_durations(duration: str) -> None:
    with pytest.raises(ValueError, match=r"bad duration .*expected up to 15 digits and a unit"):
        parse_duration(duration)


def test_prune_duration_units(root: Path) -> None:
    _ledger_file(root, "run", "a", _old_record("run", "a", 2 / 24))  # two hours old
    assert _lines(prune(root, "--older-than", "121m")) == []
    assert _lines(prune(root, "--older-than", "119m")) == [
        f"removed {root / 'run' / 'a.jsonl'}",
        f"removed {root / 'run'}",
    ]


def test_prune_a_ledger_without_a_valid_record_counts_by_its_mtime(root: Path) -> None:
    garbage = b'not json\n{"seq": 1}\n{"version":1,"run'  # a seq but no record; a torn tail
    _ledger_file(root, "empty-old", "a", b"", mtime_days=40)
    _ledger_file(root, "garbage-old", "a", garbage, mtime_days=40)
    _ledger_file(root, "garbage-new", "a", garbage)
    _ledger_file(root, "record-old-garbage-new", "a", _old_record("r", "a", 40))
    _ledger_file(root, "record-old-garbage-new", "b", garbage)
    _ledger_file(root, "record-new-mtime-old", "a", _old_record("r", "a", 1), mtime_days=40)
    done = _lines(prune(root, "--older-than", "30d"))
    assert [line for line in done if not line.endswith(".jsonl")] == [
        f"removed {root / 'empty-old'}",
        f"removed {root / 'garbage-old'}",
    ]
    assert sorted(os.listdir(root)) == [
        "garbage-new",
        "record-new-mtime-old",
        "record-old-garbage-new",
    ]


@pytest.mark.parametrize("duration", ["5", "-5d", "\u0665d"])
def test_prune_bad_durations_are_one_line_usage_errors(root: Path, duration: str) -> None:
    _ledger_file(root, "old", "a", _old_record("old", "a", 40))
    before = _tree(root)
    done = prune(root, f"--older-than={duration}")  # "=": argparse takes "-5d" for an option
    one_line_error(_text(done), 2, "--older-than: bad duration", repr(duration))
    assert done.stdout == b""
    assert _tree(root) == before


def test_prune_bad_lock_timeout(root: Path) -> None:
    for value in ("-1", "nan"):
        one_line_error(_text(prune(root, "--older-than", "1d", "--lock-timeout", value)), 2)


def _text(done: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(
        done.args, done.returncode, os.fsdecode(done.stdout), os.fsdecode(done.stderr)
    )


def test_prune_system_errors_are_one_line_naming_the_path(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "file"
    root.write_text("x")
    one_line_error(_text(prune(root, "--older-than", "1d")), 3, str(root), "Not a directory")
    root = tmp_path / "receipts"
    first = _ledger_file(root, "a-first", "a", _old_record("r", "a", 40))
    _ledger_file(root, "b-linked", "a", _old_record("r", "a", 40))
    link = root / "b-linked" / "z.jsonl"
    link.symlink_to(outside / "a.jsonl")
    _ledger_file(root, "c-last", "a", _old_record("r", "a", 40))
    outside_before = _tree(outside)
    done = _text(prune(root, "--older-than", "30d"))
    one_line_error(done, 3, str(link), "is a symbolic link, not a ledger file; not removed")
    assert done.stdout == ""  # checked before anything was removed
    link.unlink()
    os.mkfifo(link)  # not listed by iter_ledgers, but found by the removal's own check
    done = _text(prune(root, "--older-than", "30d"))
    one_line_error(done, 3, str(link), "is a FIFO, not a ledger file; not removed")
    assert done.stdout == ""  # every chosen run is checked before any is removed
    assert first.exists()
    assert sorted(os.listdir(root)) == ["a-first", "b-linked", "c-last"]
    assert sorted(os.listdir(root / "b-linked")) == ["a.jsonl", "z.jsonl"]
    assert _tree(outside) == outside_before


def test_prune_does_not_follow_a_run_directory_that_is_a_symlink(root: Path, outside: Path) -> None:
    (outside / "a.jsonl").write_bytes(_old_record("r", "a", 40))
    root.mkdir()
    (root / "linked").symlink_to(outside)
    before = _tree(outside)
    assert _lines(prune(root, "--older-than", "30d")) == []
    assert _tree(outside) == before
    assert (root / "linked").is_symlink()


def test_prune_waits_for_locks_and_can_time_out(root: Path) -> None:
    path = _ledger_file(root, "old", "a", _old_record("old", "a", 40))
    with FileLock(lock_path_for(path)):
        done = _text(prune(root, "--older-than", "30d", "--lock-timeout", "0.01"))
    one_line_error(done, 3, str(lock_path_for(path)), "lock not acquired within 0.01 s")
    assert path.exists()


def test_prune_odd_directory_names(root: Path) -> None:
    root.mkdir()
    names = [b"old-\xff", b"old\nline", "old-\u00e9".encode()]
    for name in names:
        os.mkdir(os.fsencode(root) + b"/" + name)
        Path(os.fsdecode(os.fsencode(root) + b"/" + name + b"/a.jsonl")).write_bytes(
            _old_record("r", "a", 40)
        )
    done = prune(root, "--older-than", "30d")
    assert done.returncode == 0, done.stderr
    expected = []
    for name in sorted(names):
        run_dir = os.fsencode(root) + b"/" + name.replace(b"\n", b"\\n")
        expected += [b"removed " + run_dir + b"/a.jsonl", b"removed " + run_dir]
    assert done.stdout.splitlines() == expected
    assert os.listdir(root) == []


def test_prune_keeps_a_ledger_written_after_the_runs_were_chosen(root: Path) -> None:
    # A writer that comes back to an old run between prune's choice and the removal: the age
    # is checked again under each ledger's lock.
    a = _ledger_file(root, "old", "a", _old_record("old", "a", 40))
    _ledger_file(root, "old", "b", _old_record("old", "b", 40))
    cutoff = int(time.time() * 1000) - 30 * DAY_MS
    [(run_dir, ledgers)] = runs_older_than(root, cutoff)
    assert ledgers == [a, root / "old" / "b.jsonl"]
    _append(root, "old", "b").close()
    removal = prune_run(run_dir, cutoff)
    assert removal.ledgers == (a,)
    assert not removal.dir_removed
    assert removal.kept == "b.jsonl kept: written after the cutoff"
    assert sorted(os.listdir(run_dir)) == ["b.jsonl", "b.jsonl.lock"]


def test_prune_lists_again_when_a_run_goes_while_listing(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two prunes at once: a run directory can vanish between the listing of the root and its
    # own listing; iter_ledgers skips it (it ended with FileNotFoundError, and prune listed
    # again).
    for run in ("a", "b", "c"):
        _ledger_file(root, run, "n", _old_record(run, "n", 40))
    real = remove_module.iter_ledgers
    calls: list[int] = []

    def racing(base: Path) -> Any:
        calls.append(1)
        for i, entry in enumerate(real(base)):
            if len(calls) == 1 and i == 0:
                assert remove_run_dir(root / "b").dir_removed  # the other prune
            yield entry

    monkeypatch.setattr(remove_module, "iter_ledgers", racing)
    cutoff = int(time.time() * 1000) - 30 * DAY_MS
    assert [run_dir.name for run_dir, _ in runs_older_than(root, cutoff)] == ["a", "c"]
    assert len(calls) == 1
