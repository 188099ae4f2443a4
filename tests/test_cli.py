"""The console script, run for real in a subprocess."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from attempt_ledger import AttemptLedger, ReceiptEvent, receipts_path

SCRIPT = shutil.which("attempt-ledger", path=str(Path(sys.executable).parent))
COMMAND = [SCRIPT] if SCRIPT else [sys.executable, "-m", "attempt_ledger"]


def run(
    root: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, "--root", str(root), *args] if root else [*COMMAND, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def one_line_error(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert done.returncode == code, done
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture
def seeded(root: Path) -> AttemptLedger:
    ledger = AttemptLedger(root, "run/1", "node:a")
    ledger.append(1, "s1", [ReceiptEvent("start", {"a": 1}), ReceiptEvent("done")])
    ledger.append(2, "s2", [ReceiptEvent("retry", {"why": "timeout"})])
    return ledger


def test_module_form_and_script_agree(root: Path, seeded: AttemptLedger) -> None:
    by_module = subprocess.run(
        [
            sys.executable,
            "-m",
            "attempt_ledger",
            "--root",
            str(root),
            "last-seq",
            "run/1",
            "node:a",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert by_module.stdout == run(root, "last-seq", "run/1", "node:a").stdout == "3\n"


def test_root_from_the_environment(root: Path, seeded: AttemptLedger) -> None:
    env = {**os.environ, "ATTEMPT_LEDGER_DIR": str(root)}
    done = subprocess.run(
        [*COMMAND, "last-seq", "run/1", "node:a"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert done.stdout == "3\n"


APPEND_R_N = ["append", "r", "n", "--attempt", "3", "--session", "s"]


def test_append_from_stdin_and_from_options(root: Path) -> None:
    done = run(
        root,
        *APPEND_R_N,
        stdin='{"event_type": "a", "payload": {"k": [1]}}\n\n{"event_type": "b"}\n',
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary == {"path": str(receipts_path(root, "r", "n")), "seq": 2, "record_count": 2}
    done = run(
        root,
        *APPEND_R_N,
        *["--event-type", "c", "--payload", '{"x": 1}'],
    )
    assert json.loads(done.stdout)["seq"] == 3
    records = AttemptLedger(root, "r", "n").records()
    assert [(r.event_type, r.payload) for r in records] == [
        ("a", {"k": [1]}),
        ("b", None),
        ("c", {"x": 1}),
    ]


@pytest.mark.parametrize(
    ("stdin", "args", "code", "needle"),
    [
        ("not json\n", [], 2, "<stdin> line 1: not JSON"),
        ('{"event_type": "a"}\n[1]\n', [], 2, "<stdin> line 2"),
        ('{"event_type": "a", "extra": 1}\n', [], 2, "unknown keys"),
        ("", ["--event-type", "e", "--payload", "{"], 2, "--payload is not JSON"),
        ("", ["--payload", "1"], 2, "--payload goes with --event-type"),
        # Rejected by the ledger itself (InvalidEvent): named with the ledger's path.
        ("", ["--event-type", "e", "--payload", "NaN"], 3, "payload is not JSON"),
        ('{"event_type": "e"}\n', ["--attempt", "-1"], 3, "attempt -1 is outside"),
    ],
)
def test_bad_appends_are_one_line_errors(
    root: Path, stdin: str, args: list[str], code: int, needle: str
) -> None:
    attempt = [] if "--attempt" in args else ["--attempt", "1"]
    done = run(root, "append", "r", "n", "--session", "s", *attempt, *args, stdin=stdin)
    one_line_error(done, code, needle)
    assert not receipts_path(root, "r", "n").exists()


def test_environment_errors_name_the_path(tmp_path: Path) -> None:
    root = tmp_path / "file"
    root.write_text("x")
    done = run(root, "append", "r", "n", "--attempt", "1", "--session", "s", "--event-type", "e")
    one_line_error(done, 3, str(root), "not a directory")


def test_ls(root: Path, seeded: AttemptLedger) -> None:
    AttemptLedger(root, "b", "z").append(1, "s", [ReceiptEvent("e")])
    listed = [json.loads(line) for line in run(root, "ls", "--json").stdout.splitlines()]
    assert [(x["run"], x["node"], x["records"], x["last_seq"]) for x in listed] == [
        ("b", "z", 1, 1),
        ("run-1", "node-a", 3, 3),
    ]
    assert listed[1]["run_id"] == "run/1"
    text = run(root, "ls").stdout
    assert text.splitlines()[1].startswith("run-1/node-a  records=3  last_seq=3")


def test_show_table_filters_and_raw_json(root: Path, seeded: AttemptLedger) -> None:
    table = run(root, "show", "run/1", "node:a").stdout.splitlines()
    assert table[0].split() == ["SEQ", "TIME", "(UTC)", "ATTEMPT", "SESSION", "EVENT", "PAYLOAD"]
    assert [row.split()[0] for row in table[1:]] == ["1", "2", "3"]
    assert (
        len({row.index("start") if "start" in row else row.index("EVENT") for row in table[:2]})
        == 1
    )
    only = run(root, "show", "run/1", "node:a", "--attempt", "1", "--event-type", "done").stdout
    assert [row.split()[0] for row in only.splitlines()[1:]] == ["2"]
    assert run(root, "show", "run/1", "node:a", "--session", "s2").stdout.count("retry") == 1
    since = run(root, "show", "run/1", "node:a", "--since-seq", "2", "--json").stdout
    raw_lines = seeded.path.read_text().splitlines()
    assert since.splitlines() == raw_lines[2:]  # the lines, unchanged


def test_tail_last_n(root: Path, seeded: AttemptLedger) -> None:
    seeded.append(1, "s", [ReceiptEvent(f"e{i}") for i in range(20)])
    done = run(root, "tail", "run/1", "node:a", "-n", "3", "--json")
    assert [json.loads(line)["seq"] for line in done.stdout.splitlines()] == [21, 22, 23]
    rows = run(root, "tail", "run/1", "node:a").stdout.splitlines()
    assert len(rows) == 11


def test_tail_follow_until_interrupted(root: Path, seeded: AttemptLedger) -> None:
    process = subprocess.Popen(
        [*COMMAND, "--root", str(root), "tail", "run/1", "node:a", "-n", "1", "-f", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)

            def next_line() -> str:
                assert selector.select(timeout=60), "tail -f printed nothing"
                return process.stdout.readline()  # type: ignore[union-attr]

            assert json.loads(next_line())["seq"] == 3
            seeded.append(1, "s", [ReceiptEvent("late")])
            assert json.loads(next_line())["event_type"] == "late"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
    assert process.returncode == 0
    assert "Traceback" not in stderr


def test_rows_stream_in_pages_under_one_header() -> None:
    import io

    from attempt_ledger._inspect import ROW_HEADER, print_rows

    rows = [[str(i), "t", "1", "s", "e", "null"] for i in range(1200)]
    out = io.StringIO()
    assert print_rows(rows, out) == 1200
    lines = out.getvalue().splitlines()
    assert len(lines) == 1201
    assert lines[0].split()[0] == ROW_HEADER[0]
    assert sum(line.startswith("SEQ") for line in lines) == 1
    followed = io.StringIO()  # what tail -f prints for each new record
    print_rows(rows[:1], followed, header=False)
    assert followed.getvalue().split() == rows[0]
    empty = io.StringIO()
    assert print_rows([], empty) == 0
    assert empty.getvalue().split() == [
        "SEQ",
        "TIME",
        "(UTC)",
        "ATTEMPT",
        "SESSION",
        "EVENT",
        "PAYLOAD",
    ]


def test_last_seq_and_reconcile(root: Path, seeded: AttemptLedger) -> None:
    assert run(root, "last-seq", "run/1", "node:a").stdout == "3\n"
    assert run(root, "last-seq", "no", "such").stdout == "0\n"
    found = run(root, "reconcile", "run/1", "node:a", "--min-seq", "3", "--timeout-ms", "1000")
    assert found.returncode == 0
    assert json.loads(found.stdout)["found"] is True
    missed = run(
        root,
        "reconcile",
        "run/1",
        "node:a",
        "--min-seq",
        "4",
        "--timeout-ms",
        "30",
        "--poll-ms",
        "5",
    )
    assert missed.returncode == 1
    assert json.loads(missed.stdout) | {"elapsed_ms": 0, "attempts": 0} == {
        "found": False,
        "last_seq": 3,
        "elapsed_ms": 0,
        "attempts": 0,
    }


def test_verify_clean(root: Path, seeded: AttemptLedger) -> None:
    done = run(root, "verify", "run/1", "node:a")
    assert (done.returncode, done.stdout) == (0, "")
    assert run(root, "verify", "--all").returncode == 0


def test_verify_finds_every_kind_of_problem(root: Path, seeded: AttemptLedger) -> None:
    def line(seq: int, run_id: str = "run/1", node_id: str = "node:a") -> bytes:
        record = {
            "version": 1,
            "run_id": run_id,
            "node_id": node_id,
            "attempt": 1,
            "session_id": "s",
            "seq": seq,
            "ts_ms": 0,
            "event_type": "e",
            "payload": None,
        }
        return json.dumps(record).encode() + b"\n"

    with seeded.path.open("ab") as f:
        f.write(b"not json\n")  # line 4
        f.write(b"\xff\xfe\n")  # 5
        f.write(line(5))  # 6: gap (4 missing)
        f.write(line(5))  # 7: duplicate
        f.write(line(2))  # 8: out of order
        f.write(b'{"seq": 6}\n')  # 9: valid seq, no record
        f.write(line(7, run_id="other"))  # 10: belongs elsewhere
        f.write(line(8, run_id="run:1"))  # 11: another id, same path
        f.write(b"\n")  # 12: blank
        f.write(b'{"seq": 9')  # torn tail
    done = run(root, "verify", "--all")
    assert done.returncode == 1
    prefix = str(seeded.path)
    rows = done.stdout.splitlines()
    assert all(row.startswith(prefix) for row in rows)
    # "path:line: kind: detail", or "path: kind: detail" for the file as a whole.
    kinds = [tuple(row[len(prefix) :].split(": ")[:2]) for row in rows]
    assert kinds == [
        (":4", "malformed"),
        (":5", "invalid-utf8"),
        (":6", "seq-gap"),
        (":7", "duplicate-seq"),
        (":8", "out-of-order"),
        (":9", "not-a-record"),
        (":10", "wrong-ledger"),
        (":11", "path-collision"),
        (":12", "blank"),
        ("", "torn-tail"),
    ]
    assert "10 problems found" in done.stderr


def test_verify_usage(root: Path) -> None:
    one_line_error(run(root, "verify"), 2, "verify takes RUN NODE, or --all")
    one_line_error(run(root, "verify", "a", "b"), 2, "no such ledger")


def test_demo_runs_and_checks_itself(root: Path) -> None:
    done = run(root, "demo", "--workers", "2", "--appends", "50")
    assert done.returncode == 0, done.stderr
    assert "exact: every seq once, in order" in done.stdout
    assert "records      100 new (seq 1..100)" in done.stdout
    assert AttemptLedger(root, "demo-run", "demo-node").last_seq() == 100
