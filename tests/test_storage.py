"""Migrations and transaction rules, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.pool import NullPool

from storage import Store
from storage.migrate import alembic_config
from storage.models import Base, Conversation, Turn, utcnow
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


def test_a_sqlite_file_in_a_folder_not_made_yet_is_created(tmp_path):
    path = tmp_path / "runs" / "today" / "salesbot.db"
    store = Store(f"sqlite:///{path}")
    store.close()
    assert path.is_file()


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


@pytest.mark.parametrize("workers", ["one engine", "two engines"])
def test_a_turn_sent_twice_at_once_with_one_key_is_written_once(db_url, workers):
    engine = make_engine(db_url, SlowBackend(default="faster plan for eight pounds"))
    other = engine if workers == "one engine" else make_engine(db_url, SlowBackend(default="x"))
    session = engine.start("cust-k", {"customer_name": "Alex"}).session_id
    engine.turn(session, "yes")
    replies: list = []

    def talk(worker) -> None:
        replies.append(worker.turn(session, "", idempotency_key="same-request"))

    threads = [threading.Thread(target=talk, args=(w,)) for w in (engine, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(replies) == 2
    assert replies[0].turn_index == replies[1].turn_index == 2
    assert replies[0].text == replies[1].text
    assert [t.turn_index for t in engine.transcript(session)] == [0, 1, 2]
    assert engine.store.get(session).turn_count == 2


def _terminate_other_connections(url: str) -> int:
    """Kill every other backend connected to this database (as a database restart would)."""
    admin = create_engine(url, poolclass=NullPool)
    with admin.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    admin.dispose()
    return killed


def test_pooled_connections_killed_by_a_restart_are_replaced_without_an_error(pg_url):
    """No pool_pre_ping: the first statement on a dead pooled connection fails, invalidates
    the pool and is retried once on a fresh connection; the caller sees no error."""
    engine = make_engine(pg_url)
    session = engine.start("cust-r", {"customer_name": "Alex"}).session_id
    engine.turn(session, "yes", idempotency_key="r-1")
    assert _terminate_other_connections(pg_url) >= 1
    reply = engine.turn(session, "", idempotency_key="r-2")  # the read meets the dead one
    assert reply.turn_index == 2
    snapshot, _ = engine.store.read_turn(session, None)
    assert _terminate_other_connections(pg_url) >= 1
    changes = {"stage": snapshot.stage, "stage_turns": 0, "turn_count": 3}
    turn = {
        "conversation_id": session,
        "turn_index": 3,
        "reply_text": "written after the restart",
        "stage": snapshot.stage,
        "source": "script",
        "created_at": utcnow(),
    }
    assert engine.store.write_turn(session, 2, changes, turn)  # the write meets a dead one
    assert [t.turn_index for t in engine.transcript(session)] == [0, 1, 2, 3]
    assert engine.store.write_turn(session, 2, changes, turn) is False  # a stale snapshot
    engine.store.close()
