"""Optional parts fail helpfully: attempt_ledger.postgres without psycopg names the extra."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _import_without(blocked: str) -> subprocess.CompletedProcess[str]:
    # A fresh interpreter where `import <blocked>` fails as it does when it is not installed.
    program = textwrap.dedent(
        f"""
        import sys
        sys.modules[{blocked!r}] = None
        try:
            import attempt_ledger.postgres
        except ModuleNotFoundError as error:
            print(type(error).__name__, error.name, str(error), sep="|")
        """
    )
    return subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )


def test_postgres_without_psycopg_names_the_extra() -> None:
    out = _import_without("psycopg").stdout.strip()
    kind, name, message = out.split("|")
    assert kind == "ModuleNotFoundError"
    assert name == "psycopg"  # still what `except ModuleNotFoundError` checks see
    assert "pip install 'attempt_ledger[postgres]'" in message


def test_the_file_ledger_needs_no_psycopg() -> None:
    program = "import sys; sys.modules['psycopg'] = None; import attempt_ledger, attempt_ledger.aio"
    subprocess.run([sys.executable, "-c", program], timeout=60, check=True)
