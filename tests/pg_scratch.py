"""Scratch PostgreSQL databases for tests and benchmarks.

One place creates and drops them, so every caller terminates the database's connections before
``DROP DATABASE`` (a pooled connection left open would make the drop fail) and derives the URL
the same way. Imports neither pytest nor the engine: benchmarks use it too.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Engine


def database_url(admin_url: str, name: str) -> str:
    """``admin_url`` with its database part replaced by ``name``."""
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def create_database(admin: Engine, admin_url: str, name: str) -> str:
    """Create database ``name`` through ``admin`` (AUTOCOMMIT) and return its URL."""
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return database_url(admin_url, name)


def drop_database(admin: Engine, name: str) -> None:
    """Drop database ``name`` after ending every connection to it, then dispose of ``admin``."""
    with admin.connect() as conn:
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
            {"n": name},
        )
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()
