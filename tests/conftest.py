"""Shared fixtures: real databases (SQLite file and the local PostgreSQL), real flows."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from tests.pg_scratch import create_database, drop_database

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "flows"
BROADBAND = FLOWS / "broadband_en"
INSURANCE = FLOWS / "insurance_zh"
PG_ADMIN_URL = os.environ.get(
    "SALESBOT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Keep the classifier cache out of the user's home; model conversions are shared."""
    monkeypatch.setenv(
        "SALESBOT_CACHE",
        os.environ.get("SALESBOT_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "cache"),
    )


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, dropped afterwards."""
    name = f"salesbot_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    yield create_database(admin, PG_ADMIN_URL, name)
    drop_database(admin, name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every storage and engine test runs on both back ends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'salesbot.db'}"
    return request.getfixturevalue("pg_url")
