"""Every script in examples/ runs, on small sizes, as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DSN = os.environ.get("ATTEMPT_LEDGER_PG_DSN")

CASES = {
    "multiprocessing_pool-fork": [
        "multiprocessing_pool.py",
        "--nodes",
        "3",
        "--workers",
        "2",
        "--start-method",
        "fork",
    ],
    "multiprocessing_pool-spawn": [
        "multiprocessing_pool.py",
        "--nodes",
        "3",
        "--workers",
        "2",
        "--start-method",
        "spawn",
    ],
    "asyncio_pool": ["asyncio_pool.py", "--tasks", "10", "--workers", "3"],
    "threads": ["threads.py", "--threads", "3", "--appends", "20"],
    "verify_chain": ["verify_chain.py", "--records", "3"],
    "prune_old_runs": ["prune_old_runs.py"],
    "postgres_fleet-fork": [
        "postgres_fleet.py",
        "--nodes",
        "2",
        "--attempts",
        "2",
        "--start-method",
        "fork",
    ],
    "postgres_fleet-spawn": [
        "postgres_fleet.py",
        "--nodes",
        "2",
        "--attempts",
        "2",
        "--start-method",
        "spawn",
    ],
}


def test_every_example_is_run() -> None:
    assert {case[0] for case in CASES.values()} == {p.name for p in EXAMPLES.glob("*.py")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_example_runs(case: str, tmp_path: Path) -> None:
    script, *args = CASES[case]
    if script.startswith("postgres") and not DSN:
        pytest.skip("no PostgreSQL server (run under scripts/with-postgres)")
    if not script.startswith("postgres"):
        args += ["--root", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "an example says what it did"
