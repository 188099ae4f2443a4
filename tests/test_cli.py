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


def call(
    capsys: pytest.CaptureFixture[str], root: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run the command line in this process (fast, for the many error cases)."""
    from attempt_ledger._cli import main

    try:
        code = main(["--root", str(root), *args])
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


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
        ("", ["--event-type", "e", "--payload", "NaN"], 2, "payload is not JSON"),
        ("", ["--event-type", "e", "--payload", "1e400"], 2, "payload is not JSON"),
        ("", ["--event-type", "e", "--payload", '"\\ud800"'], 2, "cannot be encoded as UTF-8"),
        ("", ["--event-type", "e", "--payload", "[" * 600 + "]" * 600], 2, "nests more than"),
        ('{"event_type": "e"}\n', ["--attempt", "-1"], 2, "-1 is outside 0..4294967295"),
        ('{"event_type": "e"}\n', ["--attempt", "4294967296"], 2, "4294967296 is outside"),
        ('{"event_type": "e"}\n{"event_type": "e", "payload": NaN}\n', [], 2, "line 2"),
        ('{"event_type": "e", "payload": [1e400]}\n', [], 2, "<stdin> line 1: payload"),
        ('{"event_type": "\\udc80"}\n', [], 2, "<stdin> line 1: event cannot be encoded"),
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
    header = ["SEQ", "TIME", "(UTC)", "ATTEMPT", "SESSION", "EVENT", "CHAIN", "PAYLOAD"]
    assert table[0].split() == header
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


def _interruptible() -> None:
    # A child started from a shell's background job inherits SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: the tests that interrupt `tail -f` must not depend
    # on how the suite was started (mutmut run in the background hung on them).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_tail_follow_until_interrupted(root: Path, seeded: AttemptLedger) -> None:
    process = subprocess.Popen(
        [*COMMAND, "--root", str(root), "tail", "run/1", "node:a", "-n", "1", "-f", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_interruptible,
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

    rows = [[str(i), "t", "1", "s", "e", "-", "null"] for i in range(1200)]
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
        "CHAIN",
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


LOCALES = ["C", "C.UTF-8"]


def run_bytes(
    root: Path | None, *args: str | bytes, locale: str = "C.UTF-8", stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """Run with raw argv bytes and raw output, in the given locale."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHONUTF"))}
    env["LC_ALL"] = locale
    prefix = [] if root is None else ["--root", os.fsencode(root)]
    return subprocess.run(
        [*COMMAND, *prefix, *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        env=env,
        check=False,
    )


def one_line_error_bytes(
    done: subprocess.CompletedProcess[bytes], code: int, *needles: bytes
) -> None:
    assert done.returncode == code, done
    assert b"Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _record(seq: int, ts_ms: int | str, payload: str, **fields: object) -> bytes:
    base: dict[str, object] = {
        "version": 1,
        "run_id": "run/1",
        "node_id": "node:a",
        "attempt": 1,
        "session_id": "s",
        "seq": seq,
        "ts_ms": 0,
        "event_type": "e",
        "payload": None,
    }
    base.update(fields)
    text = json.dumps(base).replace('"ts_ms": 0', f'"ts_ms": {ts_ms}')
    return text.replace('"payload": null', f'"payload": {payload}').encode()


# Records the reader accepts and the writer never writes.
ODD_RECORDS = [
    _record(4, 2**64 - 1, "1"),  # after the year 9999
    _record(5, 0, "1e400"),  # infinity
    _record(6, 0, '"\\ud800\\u001b[31m"', session_id="\ud800\x1b"),  # lone surrogate, ESC
    _record(7, 0, "[" * 126 + "]" * 126),  # as deep as the reader reads
    _record(8, 0, "null", version=2, prev_hash="ab", record_hash="cd"),  # schema v2's keys
]


@pytest.mark.parametrize("locale", LOCALES)
def test_show_and_tail_print_every_record_the_reader_accepts(
    root: Path, seeded: AttemptLedger, locale: str
) -> None:
    with seeded.path.open("ab") as f:
        f.writelines(line + b"\n" for line in ODD_RECORDS)
    for command in (["show"], ["tail", "-n", "20"]):
        table = run_bytes(root, *command, "run/1", "node:a", locale=locale)
        assert (table.returncode, table.stderr) == (0, b""), table
        rows = table.stdout.decode("utf-8").splitlines()
        assert [row.split()[0] for row in rows[1:]] == [str(seq) for seq in range(1, 9)]
        assert "ts_ms 18446744073709551615" in rows[4]
        assert "\\ud800\\x1b" in rows[6]  # escaped: nothing reaches the terminal raw
        raw = run_bytes(root, *command, "run/1", "node:a", "--json", locale=locale)
        assert raw.returncode == 0, raw
        assert raw.stdout.splitlines()[3:] == ODD_RECORDS  # the lines, unchanged


def test_tail_follow_json_prints_the_stored_lines(root: Path, seeded: AttemptLedger) -> None:
    # Unbuffered bytes: readline takes one line and leaves the rest to select() on the pipe.
    process = subprocess.Popen(
        [*COMMAND, "--root", str(root), "tail", "run/1", "node:a", "-n", "1", "-f", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
        preexec_fn=_interruptible,
    )
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)

            def next_line() -> bytes:
                assert selector.select(timeout=60), "tail -f printed nothing"
                return process.stdout.readline()  # type: ignore[union-attr]

            assert json.loads(next_line())["seq"] == 3
            # Schema v2's extra keys, keys out of order, a version the writer does not write.
            foreign = [
                _record(4, 7, '{"b":1,"a":2}', prev_hash="00", record_hash="11"),
                _record(5, 7, "null", version=2),
                b'{"seq":6,"payload":null,"version":1,"run_id":"run/1","node_id":"node:a",'
                b'"attempt":1,"session_id":"s","ts_ms":1,"event_type":"x"}',
            ]
            with seeded.path.open("ab") as f:
                f.writelines(line + b"\n" for line in foreign)
            assert [next_line() for _ in foreign] == [line + b"\n" for line in foreign]
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
    assert process.returncode == 0
    assert b"Traceback" not in stderr


@pytest.mark.parametrize(
    "command",
    [["show"], ["show", "--json"], ["tail"], ["tail", "--json"], ["tail", "-f"], ["verify"]],
)
def test_a_missing_ledger_is_named_by_every_reading_command(
    root: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    AttemptLedger(root, "run/1", "other").append(1, "s", [ReceiptEvent("e")])  # the root exists
    done = call(capsys, root, command[0], "run/1", "node:a", *command[1:])
    path = str(receipts_path(root, "run/1", "node:a"))
    one_line_error(done, 2, f"{path}: no such ledger")
    assert done.stdout == ""


def test_last_seq_of_a_missing_ledger_is_0_as_its_help_says(root: Path) -> None:
    assert run(root, "last-seq", "no", "such").stdout == "0\n"
    assert "(0 if there is none, or no ledger)" in run(root, "last-seq", "--help").stdout


@pytest.mark.parametrize(
    "command",
    [
        ["ls"],
        ["ls", "--json"],
        ["verify", "--all"],
        ["show", "r", "n"],
        ["tail", "r", "n"],
        ["verify", "r", "n"],
        ["last-seq", "r", "n"],
    ],
)
def test_a_root_that_is_a_file_is_named(
    tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "file"
    root.write_text("x")
    one_line_error(call(capsys, root, *command), 3, str(root), "Not a directory")


@pytest.mark.parametrize(
    "command", [["show"], ["tail"], ["tail", "-f"], ["verify"], ["last-seq"], ["ls"]]
)
def test_a_fifo_at_a_ledger_path_is_refused_not_waited_on(
    root: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = receipts_path(root, "r", "n")
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    if command == ["ls"]:
        done = call(capsys, root, "ls")
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")  # not a ledger
        return
    one_line_error(
        call(capsys, root, command[0], "r", "n", *command[1:]), 3, str(path), "regular file"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["show", "r", "n", "--attempt", "-1"],
        ["show", "r", "n", "--attempt", "4294967296"],
        ["show", "r", "n", "--attempt", ""],
        ["show", "r", "n", "--attempt", " 1"],
        ["show", "r", "n", "--attempt", "1_0"],
        ["show", "r", "n", "--attempt", "\u0663"],
        ["show", "r", "n", "--attempt", "9" * 5000],
        ["show", "r", "n", "--since-seq", "-1"],
        ["show", "r", "n", "--since-seq", "18446744073709551616"],
        ["show", "r", "n", "--since-seq", "1.5"],
        ["show", "r", "n", "--bogus"],
        ["show", "r"],
        ["tail", "r", "n", "-n", "-1"],
        ["tail", "r", "n", "-n", "1e3"],
        ["tail", "r", "n", "-n", "99999999999999999999"],
        ["append", "r", "n", "--attempt", "1"],
        ["append", "r", "n", "--attempt", "x", "--session", "s"],
        ["reconcile", "r", "n", "--min-seq", "-1", "--timeout-ms", "1"],
        ["reconcile", "r", "n", "--min-seq", "1", "--timeout-ms", "-5"],
        ["reconcile", "r", "n", "--min-seq", "1", "--timeout-ms", "1" + "0" * 30],
        ["reconcile", "r", "n", "--min-seq", "1", "--timeout-ms", "1", "--poll-ms", "-1"],
        ["reconcile", "r", "n", "--min-seq", "1", "--timeout-ms", "1s"],
        ["demo", "--workers", "0"],
        ["demo", "--workers", "100000"],
        ["demo", "--appends", "-1"],
        ["demo", "--appends", "1000000000000"],
        ["ls", "extra"],
        ["verify"],
        ["verify", "a"],
        ["verify", "a", "b", "c"],
        ["verify", "--all", "a", "b"],
        ["no-such-command"],
        [],
    ],
)
def test_bad_arguments_are_one_line_usage_errors(
    root: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    done = call(capsys, root, *args)
    one_line_error(done, 2, "attempt-ledger")
    assert done.stdout == ""
    assert not root.exists()


def test_an_empty_root_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [*COMMAND, "--root", "", "ls"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    one_line_error(done, 2, "--root", "empty path")


@pytest.mark.parametrize(
    "args",
    [
        ["--session", b"s\xff"],
        ["--session", "s", "--event-type", b"\xfe"],
    ],
)
def test_ids_that_are_not_utf8_are_bad_input(root: Path, args: list[str | bytes]) -> None:
    with_type = [] if "--event-type" in args else ["--event-type", "e"]
    done = run_bytes(root, "append", b"r\xff", "n", "--attempt", "1", *args, *with_type)
    one_line_error_bytes(done, 2, b"UTF-8")
    assert not root.exists() or not any(root.rglob("*.jsonl"))


def test_stdin_that_is_not_utf8_is_bad_input(root: Path) -> None:
    stdin = b'{"event_type": "a"}\n{"event_type": "\xff"}\n'
    done = run_bytes(root, *APPEND_R_N, stdin=stdin)
    one_line_error_bytes(done, 2, b"<stdin> line 2")
    assert not receipts_path(root, "r", "n").exists()


@pytest.mark.parametrize("locale", LOCALES)
def test_paths_that_are_not_utf8_print_in_any_locale(tmp_path: Path, locale: str) -> None:
    root = tmp_path / os.fsdecode(b"receipts-\xff\xfe")
    raw_root = os.fsencode(root)
    ledger = AttemptLedger(root, "run/1", "node:a")
    ledger.append(1, "s", [ReceiptEvent("e")])
    with ledger.path.open("ab") as f:
        f.write(b'{"seq":')  # a torn tail, for verify to name the path
    listed = run_bytes(root, "ls", locale=locale)
    assert (listed.returncode, listed.stderr) == (0, b""), listed
    assert listed.stdout.startswith(b"run-1/node-a  records=1")
    as_json = run_bytes(root, "ls", "--json", locale=locale)
    assert as_json.returncode == 0, as_json
    assert os.fsencode(json.loads(as_json.stdout)["path"]) == os.fsencode(ledger.path)
    verified = run_bytes(root, "verify", "--all", locale=locale)
    assert verified.returncode == 1, verified
    assert verified.stdout.startswith(os.fsencode(ledger.path) + b": torn-tail")
    missing = run_bytes(root, "show", "run/1", "nothing", locale=locale)
    one_line_error_bytes(missing, 2, raw_root, b"no such ledger")
    appended = run_bytes(root, *APPEND_R_N, "--event-type", "e", locale=locale)
    assert appended.returncode == 0, appended
    assert os.fsencode(json.loads(appended.stdout)["path"]).startswith(raw_root)
    refused = run_bytes(root, *APPEND_R_N, "--event-type", "e", "--payload", "NaN", locale=locale)
    one_line_error_bytes(refused, 2, raw_root, b"payload is not JSON")


def test_append_with_stdin_closed(root: Path) -> None:
    done = subprocess.run(
        ["sh", "-c", 'exec "$@" <&-', "sh", *COMMAND, "--root", str(root), *APPEND_R_N],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    one_line_error(done, 2, "stdin is closed")


def test_input_nested_past_the_stack_is_bad_input(root: Path) -> None:
    # json.loads raised RecursionError, which came out as a traceback (exit 1).
    deep = "[" * 100_000 + "]" * 100_000
    done = run(root, *APPEND_R_N, stdin='{"event_type": "a", "payload": ' + deep + "}\n")
    one_line_error(done, 2, "<stdin> line 1", "nested too deep")
    done = run(root, *APPEND_R_N, "--event-type", "a", "--payload", "[" * 50_000)
    one_line_error(done, 2, "--payload", "nested too deep")
    assert not receipts_path(root, "r", "n").exists()


@pytest.mark.parametrize("command", ["show", "tail", "verify", "manifest", "last-seq"])
def test_a_dangling_symlink_at_the_ledger_is_named_as_a_symlink(root: Path, command: str) -> None:
    # The check followed the link: a dangling one read as "no such ledger" (exit 2), while an
    # append refuses the same path as a symbolic link; last-seq printed 0.
    path = receipts_path(root, "r", "n")
    path.parent.mkdir(parents=True)
    path.symlink_to(root / "elsewhere.jsonl")
    done = run(root, command, "r", "n")
    one_line_error(done, 3, str(path), "symbolic link")
    assert not (root / "elsewhere.jsonl").exists()


@pytest.mark.parametrize("command", [["pg-migrate"], ["from-postgres", "r", "n"]])
def test_a_database_error_is_one_line(root: Path, command: list[str]) -> None:
    # psycopg's connection errors carry a hint on a second line, printed as it was.
    pytest.importorskip("psycopg")
    done = run(root, *command, "--dsn", "host=/nonexistent dbname=x")
    one_line_error(done, 3, "attempt-ledger: ", "Is the server running")
    assert not root.exists() or not any(root.rglob("*.jsonl"))


@pytest.mark.parametrize("durable", [False, True])
def test_append_durable_fsyncs_the_ledger(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.append(1, "s", [ReceiptEvent("e")])  # the ledger exists: only the append may fsync
    ledger.close()
    synced: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        stat = os.fstat(fd)
        synced.append((stat.st_dev, stat.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    flag = ["--durable"] if durable else []
    done = call(capsys, root, *APPEND_R_N, "--event-type", "e", *flag)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["seq"] == 2
    stat = ledger.path.stat()
    assert synced == ([(stat.st_dev, stat.st_ino)] if durable else [])
