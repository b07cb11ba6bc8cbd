"""Tables. The conversation row is the session's snapshot; turns, stage events and compliance
decisions are append-only logs written in the same transaction as the snapshot update, so a turn
never needs replay and funnels are plain SQL over ``stage_events``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON}


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    flow_name: Mapped[str] = mapped_column(String(100))
    flow_version: Mapped[str] = mapped_column(String(100))
    customer_id: Mapped[str] = mapped_column(String(200), index=True)
    arm: Mapped[str] = mapped_column(String(40))
    experiment: Mapped[str | None] = mapped_column(String(100), index=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("simulation_runs.id"), index=True)
    assignment: Mapped[dict[str, Any]] = mapped_column(default=dict)
    slots: Mapped[dict[str, Any]] = mapped_column(default=dict)
    stage: Mapped[str] = mapped_column(String(100))
    stage_turns: Mapped[int] = mapped_column(Integer, default=0)  # unmatched turns in this stage
    turn_count: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="active")
    outcome: Mapped[str | None] = mapped_column(String(80))
    end_reason: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # engine.milestones.Progress


class SimulationRun(Base):
    """One offline simulation: its parameters, so a run can be resumed and reported."""

    __tablename__ = "simulation_runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    flow_name: Mapped[str] = mapped_column(String(100))
    flow_version: Mapped[str] = mapped_column(String(100))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="running")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Turn(Base):
    __tablename__ = "turns"
    __table_args__ = (
        UniqueConstraint("conversation_id", "turn_index"),
        UniqueConstraint(
            "conversation_id", "idempotency_key", name="uq_turns_conversation_idempotency_key"
        ),
        Index("ix_turns_idempotency_scope_key", "idempotency_scope", "idempotency_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), index=True)
    turn_index: Mapped[int] = mapped_column(Integer)  # 0 is the bot's opening line
    user_text: Mapped[str | None] = mapped_column(Text)
    reply_text: Mapped[str] = mapped_column(Text)
    script_id: Mapped[str | None] = mapped_column(String(120))
    stage_before: Mapped[str | None] = mapped_column(String(100))
    stage: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(16))  # script | llm | fallback | universal
    intent: Mapped[str | None] = mapped_column(String(80))
    confidence: Mapped[float | None] = mapped_column(Float)
    margin: Mapped[float | None] = mapped_column(Float)
    variant: Mapped[str | None] = mapped_column(String(120))
    latencies: Mapped[dict[str, Any]] = mapped_column(default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))  # of the keyed request
    # whose key it is (the HTTP service: the API key's name): a key is one request per scope,
    # so the same key on another session of that scope is a reused key, not a new turn
    idempotency_scope: Mapped[str | None] = mapped_column(String(200))
    # process-order findings of the ruler (engine/milestones.py); SQL NULL when there are none
    findings: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StageEvent(Base):
    __tablename__ = "stage_events"
    __table_args__ = (Index("ix_stage_events_stage_conversation", "stage", "conversation_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), index=True)
    turn_index: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ComplianceDecision(Base):
    __tablename__ = "compliance_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), index=True)
    turn_index: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(100))
    raw_text: Mapped[str | None] = mapped_column(Text)
    decision: Mapped[str] = mapped_column(String(16))  # approved | fallback | universal
    script_id: Mapped[str | None] = mapped_column(String(120))
    variant: Mapped[str | None] = mapped_column(String(120))
    score: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    top_k: Mapped[dict[str, Any]] = mapped_column(default=dict)
    embedder: Mapped[str] = mapped_column(String(80))
    library_hash: Mapped[str] = mapped_column(String(100))
    adapter_hash: Mapped[str | None] = mapped_column(String(100))  # LoRA adapter, if tuned
    rule_hits: Mapped[list[Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    latencies: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
