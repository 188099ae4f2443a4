from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import attempt_ledger

# "ci" keeps the default suite within its time budget; "thorough" is for hunting bugs locally:
# HYPOTHESIS_PROFILE=thorough pytest
settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "thorough",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "receipts"


@pytest.fixture(autouse=True)
def _fresh_cache() -> object:
    # The module-level functions keep ledgers open; tests must not see each other's.
    yield
    attempt_ledger.clear_cache()


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """A migrated database from ``$ATTEMPT_LEDGER_PG_DSN`` (see scripts/with-postgres)."""
    dsn = os.environ.get("ATTEMPT_LEDGER_PG_DSN")
    if not dsn:
        pytest.skip("no PostgreSQL: run under scripts/with-postgres (as .ci/run does)")
    from attempt_ledger.postgres import SCHEMA_VERSION, migrate

    assert migrate(dsn) == migrate(dsn) == SCHEMA_VERSION  # idempotent
    return dsn
