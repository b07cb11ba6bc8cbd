"""Migrations and transaction rules, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select, text

from storage import Store
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
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001"
    Store(db_url)  # opening again is a no-op upgrade


def test_sqlite_runs_in_wal_mode(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'wal.db'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_concurrent_turns_of_one_session_are_serialised(db_url):
    engine = make_engine(db_url, FakeBackend(default="faster plan for eight pounds"))
    session = engine.start("cust-c", {"customer_name": "Alex"}).session_id
    engine.turn(session, "yes")  # into the llm stage, where turns keep the session open
    errors: list[BaseException] = []

    def talk() -> None:
        try:
            engine.turn(session, "")  # out of scope: stays in the llm stage
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=talk) for _ in range(2)]
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
