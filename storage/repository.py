"""The Store: one object that owns the database engine and the transaction rules.

Every turn is one transaction that first locks its conversation: ``SELECT ... FOR UPDATE`` on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite (which takes the database's write lock at the start
rather than at the first write, so two processes cannot interleave a read-modify-write).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine as SAEngine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from engine.errors import SessionNotFound
from engine.reply import Reply
from storage import migrate
from storage.models import ComplianceDecision, Conversation, StageEvent, Turn

DEFAULT_URL = "sqlite:///salesbot.db"


@dataclass(frozen=True)
class Snapshot:
    """What a turn needs to know about its session, read without holding a lock."""

    id: str
    arm: str
    stage: str
    stage_turns: int
    turn_count: int
    status: str
    outcome: str | None
    slots: dict[str, Any]
    history: tuple[tuple[str | None, str], ...]  # (customer text, bot reply), oldest first


def reply_from_turn(turn: Turn, outcome: str | None) -> Reply:
    """The Reply a stored turn stands for; ``outcome`` is set when that turn ended the call."""
    return Reply(
        session_id=turn.conversation_id,
        turn_index=turn.turn_index,
        text=turn.reply_text,
        script_id=turn.script_id,
        stage=turn.stage,
        source=turn.source,
        intent=turn.intent,
        confidence=turn.confidence,
        margin=turn.margin,
        variant=turn.variant,
        ended=outcome is not None,
        outcome=outcome,
        latencies_ms=dict(turn.latencies),
    )


def make_engine(url: str) -> SAEngine:
    """A SQLAlchemy engine with the per-backend settings salesbot relies on."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, future=True)
    in_memory = url in ("sqlite://", "sqlite:///:memory:")
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        poolclass=StaticPool if in_memory else None,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (documented recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Store:
    """Conversation storage over any SQLAlchemy URL; migrates the database to head on open."""

    def __init__(self, url: str = DEFAULT_URL):
        self.url = url
        self.engine = make_engine(url)
        with self.engine.begin() as connection:
            migrate.upgrade(connection)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._sessions.begin() as db:
            yield db

    @contextmanager
    def locked(self, conversation_id: str) -> Iterator[tuple[Session, Conversation]]:
        """A transaction holding the conversation's lock; commits on normal exit."""
        with self._sessions.begin() as db:
            query = select(Conversation).where(Conversation.id == conversation_id)
            if self.dialect == "postgresql":
                query = query.with_for_update()
            conversation = db.scalars(query).one_or_none()
            if conversation is None:
                raise SessionNotFound(conversation_id)
            yield db, conversation

    def get(self, conversation_id: str) -> Conversation:
        with self._sessions() as db:
            conversation = db.get(Conversation, conversation_id)
            if conversation is None:
                raise SessionNotFound(conversation_id)
            return conversation

    def snapshot(self, conversation_id: str, history: int = 8) -> Snapshot:
        with self._sessions() as db:
            c = db.get(Conversation, conversation_id)
            if c is None:
                raise SessionNotFound(conversation_id)
            recent = db.execute(
                select(Turn.user_text, Turn.reply_text)
                .where(Turn.conversation_id == conversation_id)
                .order_by(Turn.turn_index.desc())
                .limit(history)
            ).all()
            return Snapshot(
                id=c.id,
                arm=c.arm,
                stage=c.stage,
                stage_turns=c.stage_turns,
                turn_count=c.turn_count,
                status=c.status,
                outcome=c.outcome,
                slots=dict(c.slots),
                history=tuple((u, r) for u, r in reversed(recent)),
            )

    def reply_for_key(self, conversation_id: str, idempotency_key: str) -> Reply | None:
        """The reply already stored for this idempotency key, if the turn was written."""
        with self._sessions() as db:
            row = db.scalars(
                select(Turn).where(
                    Turn.conversation_id == conversation_id,
                    Turn.idempotency_key == idempotency_key,
                )
            ).one_or_none()
            if row is None:
                return None
            c = db.get(Conversation, conversation_id)
            assert c is not None
            ended = c.status != "active" and c.turn_count == row.turn_index
            return reply_from_turn(row, outcome=c.outcome if ended else None)

    def turns(self, conversation_id: str) -> list[Turn]:
        with self._sessions() as db:
            query = (
                select(Turn)
                .where(Turn.conversation_id == conversation_id)
                .order_by(Turn.turn_index)
            )
            return list(db.scalars(query))

    def stage_events(self, conversation_id: str) -> list[StageEvent]:
        with self._sessions() as db:
            query = (
                select(StageEvent)
                .where(StageEvent.conversation_id == conversation_id)
                .order_by(StageEvent.id)
            )
            return list(db.scalars(query))

    def compliance_decisions(self, conversation_id: str) -> list[ComplianceDecision]:
        with self._sessions() as db:
            query = (
                select(ComplianceDecision)
                .where(ComplianceDecision.conversation_id == conversation_id)
                .order_by(ComplianceDecision.id)
            )
            return list(db.scalars(query))
