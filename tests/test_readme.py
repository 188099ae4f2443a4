"""The README's code examples run, in order, as one program."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 1  # the rest of the examples live in docs/ (tests/test_docs.py)
    dsn = os.environ.get("ATTEMPT_LEDGER_PG_DSN")
    namespace: dict[str, object] = {"dsn": dsn}
    ran = 0
    for block in blocks:
        if "PostgresLedger" in block and not dsn:
            continue  # the PostgreSQL example needs a server (scripts/with-postgres)
        if "PostgresLedger" in block:  # a fresh namespace of runs in the shared database
            block = block.replace('"run/42"', f'"{uuid.uuid4().hex}/run/42"')
        exec(compile(block, str(README), "exec"), namespace)
        ran += 1
    if ran < len(blocks):
        pytest.skip(f"ran {ran} of {len(blocks)} examples: no PostgreSQL server")
