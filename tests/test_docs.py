"""The documentation cannot rot: every ```python block of docs/*.md runs (each page's blocks in
order, as one program), and the API reference names every public name."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

import attempt_ledger
import attempt_ledger.aio

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(p.name for p in DOCS.glob("*.md") if "```python" in p.read_text(encoding="utf-8"))


def test_pages_with_code_are_found() -> None:
    assert {"quickstart.md", "concepts.md", "asyncio.md", "tamper-evidence.md"} <= set(PAGES)


@pytest.mark.parametrize("page", PAGES)
def test_page_python_blocks_run(page: str) -> None:
    path = DOCS / page
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)
    if any("PostgresLedger" in block for block in blocks):
        if not os.environ.get("ATTEMPT_LEDGER_PG_DSN"):
            pytest.skip("needs a PostgreSQL server (scripts/with-postgres)")
        # a fresh namespace of runs in the shared database
        blocks = [b.replace('"run/42"', f'"{uuid.uuid4().hex}/run/42"') for b in blocks]
    namespace: dict[str, object] = {"__name__": f"docs_{page}"}
    for block in blocks:
        exec(compile(block, str(path), "exec"), namespace)


def test_api_reference_names_every_public_name() -> None:
    api = (DOCS / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"\.\. [\w:]+:: (?:attempt_ledger\.)?(\w+)", api))
    documented |= {"__version__"}  # shown as the release on every page
    missing = set(attempt_ledger.__all__) - documented
    assert not missing, f"docs/api.md does not document {sorted(missing)}"
    assert ".. automodule:: attempt_ledger.aio" in api
    assert ".. automodule:: attempt_ledger.postgres" in api
    assert attempt_ledger.aio.__all__ == ["AsyncAttemptLedger"]  # automodule covers it
