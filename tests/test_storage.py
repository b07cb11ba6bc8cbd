"""Migrations and transaction rules, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text

from storage import Store
from storage.migrate import alembic_config
from storage.models import Base, Conversation, Turn
from tests.fakes import FakeBackend
from tests.test_engine import make_engine


def test_migrations_build_the_schema_the_models_describe(db_url):
    store = Store(db_url)
    tables = set(inspect(store.engine).get_table_names())
    assert {"conversations", "turns", "stage_events", "compliance_decisions"} <= tables
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
    Store(db_url)  # opening again is a no-op upgrade


def test_every_migration_downgrades_and_upgrades_again(db_url):
    store = Store(db_url)
    config = alembic_config(store.url)
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert "turns" not in inspect(store.engine).get_table_names()
    store.engine.dispose()
    assert "turns" in inspect(Store(db_url).engine).get_table_names()


def test_sqlite_runs_in_wal_mode(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'wal.db'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


class SlowBackend(FakeBackend):
    """Holds each generation long enough for two workers' turns to overlap."""

    def generate(self, messages, params, seed=None, session_key=None):
        import time

        time.sleep(0.3)
        return super().generate(messages, params, seed, session_key)


@pytest.mark.parametrize("workers", ["one engine", "two engines"])
def test_concurrent_turns_of_one_session_are_serialised(db_url, workers):
    engine = make_engine(db_url, SlowBackend(default="faster plan for eight pounds"))
    other = engine if workers == "one engine" else make_engine(db_url, SlowBackend(default="x"))
    session = engine.start("cust-c", {"customer_name": "Alex"}).session_id
    engine.turn(session, "yes")  # into the llm stage, where turns keep the session open
    errors: list[BaseException] = []

    def talk(worker) -> None:
        try:
            worker.turn(session, "")  # out of scope: stays in the llm stage
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=talk, args=(w,)) for w in (engine, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with engine.store.transaction() as db:
        indexes = list(
            db.scalars(
                select(Turn.turn_index)
                .where(Turn.conversation_id == session)
                .order_by(Turn.turn_index)
            )
        )
        count = db.scalar(select(Conversation.turn_count).where(Conversation.id == session))
        turns = db.scalar(
            select(func.count()).select_from(Turn).where(Turn.conversation_id == session)
        )
    assert indexes == [0, 1, 2, 3] and count == 3 and turns == 4
