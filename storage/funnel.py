"""Funnel counts of one experiment, in SQL that runs unchanged on SQLite and PostgreSQL.

Everything is counted per arm over the conversations of one experiment (optionally one
simulation run): units assigned, units that reached each stage (from ``stage_events``),
outcomes, hang-ups, compliance decisions per stage, and per fallback variant the calls that
carried on after hearing it. Only the raw per-turn latencies are fetched as values; their
percentiles are computed in Python because SQLite has no percentile aggregate.

A call "continues" after a fallback when the caller spoke again (a turn with the next index
exists) and that turn did not end the call in a hang-up outcome (e.g. "bye"). Each call counts
once per (stage, variant), from its first fallback there: variants are sticky per session.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    case,
    create_engine,
    distinct,
    event,
    false,
    func,
    literal,
    not_,
    or_,
    select,
)
from sqlalchemy.engine import Engine as SAEngine

from storage.models import ComplianceDecision, Conversation, StageEvent, Turn
from storage.repository import Store

C = Conversation.__table__.c
E = StageEvent.__table__.c
D = ComplianceDecision.__table__.c
conversations = Conversation.__table__
stage_events = StageEvent.__table__
decisions = ComplianceDecision.__table__
turns = Turn.__table__


@dataclass
class VariantCount:
    arm: str
    stage: str
    variant: str
    calls: int
    continued: int


@dataclass
class DesignSeen:
    definition: str | None
    conversations: int
    record: dict[str, Any]  # one stored assignment record with this definition


@dataclass
class FunnelCounts:
    """Raw counts; the report turns them into rates, intervals and tests."""

    experiment: str
    run_id: str | None
    arms: list[str] = field(default_factory=list)
    assigned: dict[str, int] = field(default_factory=dict)
    active: dict[str, int] = field(default_factory=dict)
    successes: dict[str, int] = field(default_factory=dict)
    hangups: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    reached: dict[str, dict[str, int]] = field(default_factory=dict)
    stage_order: list[str] = field(default_factory=list)  # stages by mean first-entry turn
    terminal_stages: set[str] = field(default_factory=set)  # every call reaching it ended there
    success_stages: set[str] = field(default_factory=set)
    compliance: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    compliance_calls: dict[str, dict[str, int]] = field(default_factory=dict)
    llm_errors: dict[str, int] = field(default_factory=dict)
    variants: list[VariantCount] = field(default_factory=list)
    latencies: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # arm -> {calls_sent, calls_attempted, sent, attempted}: process-order findings (turns.findings)
    findings: dict[str, dict[str, int]] = field(default_factory=dict)
    findings_by_script: dict[str, dict[str, int]] = field(default_factory=dict)  # arm -> id -> n
    flows: dict[str, int] = field(default_factory=dict)  # "name flow:v1:..." -> conversations


def scope(experiment: str, run_id: str | None) -> ColumnElement[bool]:
    condition = C.experiment == experiment
    if run_id is not None:
        condition = and_(condition, C.run_id == run_id)
    return condition


Source = SAEngine | Connection


@contextmanager
def reading(source: SAEngine | Store) -> Iterator[Connection]:
    """A connection whose queries all see one consistent snapshot and block no writer.

    PostgreSQL: a REPEATABLE READ transaction. SQLite: the Store's engine begins every
    transaction with BEGIN IMMEDIATE (the write lock, right for turns); a report must not stall
    live turns, so it reads through its own engine with a deferred BEGIN, which in WAL mode is a
    snapshot that writers do not wait for. In-memory databases exist only on the Store's engine.
    """
    bind = source.engine if isinstance(source, Store) else source
    url = bind.url
    if bind.dialect.name == "sqlite" and url.database not in (None, "", ":memory:"):
        reader = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(reader, "connect")
        def _deferred(dbapi_connection, _record) -> None:
            dbapi_connection.isolation_level = None  # SQLAlchemy, not pysqlite, begins

        @event.listens_for(reader, "begin")
        def _begin(conn) -> None:
            conn.exec_driver_sql("BEGIN")

        try:
            with reader.connect() as conn:
                yield conn
        finally:
            reader.dispose()
        return
    with bind.connect() as conn:
        if bind.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        yield conn


@contextmanager
def _use(source: Source) -> Iterator[Connection]:
    if isinstance(source, Connection):
        yield source
    else:
        with reading(source) as conn:
            yield conn


def experiments_in(source: Source, run_id: str | None = None) -> dict[str, int]:
    """Experiment names with their conversation counts (for error messages and listings)."""
    query = select(C.experiment, func.count()).where(C.experiment.is_not(None))
    if run_id is not None:
        query = query.where(C.run_id == run_id)
    with _use(source) as conn:
        rows = conn.execute(query.group_by(C.experiment).order_by(C.experiment)).all()
    return {name: count for name, count in rows}


def designs(source: Source, experiment: str, run_id: str | None = None) -> list[DesignSeen]:
    """The experiment designs stored with the assignments, most recently used first."""
    definition = C.assignment[("design", "definition")].as_string()
    query = (
        select(definition, func.count(), func.max(C.created_at))
        .where(scope(experiment, run_id))
        .group_by(definition)
        .order_by(func.max(C.created_at).desc())
    )
    seen: list[DesignSeen] = []
    with _use(source) as conn:
        for name, count, _ in conn.execute(query).all():
            match = definition.is_(None) if name is None else definition == name
            record = conn.execute(
                select(C.assignment)
                .where(scope(experiment, run_id), match)
                .order_by(C.created_at.desc())
                .limit(1)
            ).scalar_one()
            seen.append(DesignSeen(name, count, dict(record or {})))
    return seen


def collect(
    source: Source,
    experiment: str,
    *,
    run_id: str | None = None,
    success_outcomes: Sequence[str] = ("converted",),
    hangup_outcomes: Sequence[str] = ("hung_up",),
) -> FunnelCounts:
    """Every count the report needs, per arm."""
    out = FunnelCounts(experiment, run_id)
    where = scope(experiment, run_id)
    success = list(success_outcomes)
    hangup = list(hangup_outcomes)
    with _use(source) as conn:
        _assigned(conn, where, success, hangup, out)
        _reached(conn, where, success, out)
        _compliance(conn, where, out)
        _variants(conn, where, hangup, out)
        _latencies(conn, where, out)
        _findings(conn, where, out)
    return out


@dataclass(frozen=True)
class UnitOutcome:
    """One conversation's results, for tests that pair the arms customer by customer."""

    customer_id: str
    arm: str
    succeeded: bool  # outcome in the success outcomes (what ``successes`` counts)
    hung_up: bool  # what ``hangups`` counts
    stages: frozenset[str]  # stages reached (what ``reached`` counts)


def unit_outcomes(
    source: Source,
    experiment: str,
    *,
    run_id: str | None = None,
    success_outcomes: Sequence[str] = ("converted",),
    hangup_outcomes: Sequence[str] = ("hung_up",),
) -> list[UnitOutcome]:
    """Per conversation what :func:`collect` counts per arm, with the same definitions, so a
    paired test over these agrees with the arm totals."""
    where = scope(experiment, run_id)
    success, hangup = list(success_outcomes), list(hangup_outcomes)
    is_hangup = or_(C.end_reason == "hangup", _in(C.outcome, hangup))
    query = select(
        C.id,
        C.customer_id,
        C.arm,
        case((_in(C.outcome, success), 1), else_=0),
        case((is_hangup, 1), else_=0),
    ).where(where)
    joined = stage_events.join(conversations, conversations.c.id == E.conversation_id)
    reached_query = select(E.conversation_id, E.stage).select_from(joined).where(where).distinct()
    with _use(source) as conn:
        rows = conn.execute(query).all()
        reached: dict[str, set[str]] = defaultdict(set)
        for conversation_id, stage in conn.execute(reached_query):
            reached[conversation_id].add(stage)
    return [
        UnitOutcome(customer, arm, bool(won), bool(lost), frozenset(reached.get(cid, ())))
        for cid, customer, arm, won, lost in rows
    ]


def _in(column, values: list[str]) -> ColumnElement[bool]:
    return column.in_(values) if values else false()


def _assigned(conn, where, success: list[str], hangup: list[str], out: FunnelCounts) -> None:
    is_hangup = or_(C.end_reason == "hangup", _in(C.outcome, hangup))
    query = (
        select(
            C.arm,
            func.count(),
            func.sum(case((C.status == "active", 1), else_=0)),
            func.sum(case((_in(C.outcome, success), 1), else_=0)),
            func.sum(case((is_hangup, 1), else_=0)),
        )
        .where(where)
        .group_by(C.arm)
        .order_by(C.arm)
    )
    for arm, n, active, wins, hangups in conn.execute(query):
        out.arms.append(arm)
        out.assigned[arm] = int(n)
        out.active[arm] = int(active or 0)
        out.successes[arm] = int(wins or 0)
        out.hangups[arm] = int(hangups or 0)
    outcome = func.coalesce(C.outcome, literal("(in progress)"))
    query = select(C.arm, outcome, func.count()).where(where).group_by(C.arm, outcome)
    for arm, name, n in conn.execute(query):
        out.outcomes.setdefault(arm, {})[name] = int(n)
    label = C.flow_name + literal(" ") + C.flow_version
    for name, n in conn.execute(select(label, func.count()).where(where).group_by(label)):
        out.flows[name] = int(n)


def _reached(conn, where, success: list[str], out: FunnelCounts) -> None:
    joined = stage_events.join(conversations, conversations.c.id == E.conversation_id)
    query = (
        select(C.arm, E.stage, func.count(distinct(E.conversation_id)))
        .select_from(joined)
        .where(where)
        .group_by(C.arm, E.stage)
    )
    totals: dict[str, int] = defaultdict(int)
    for arm, stage, n in conn.execute(query):
        out.reached.setdefault(arm, {})[stage] = int(n)
        totals[stage] += int(n)
    first = (
        select(E.conversation_id, E.stage, func.min(E.turn_index).label("first"))
        .select_from(joined)
        .where(where)
        .group_by(E.conversation_id, E.stage)
        .subquery()
    )
    query = select(first.c.stage, func.avg(first.c.first)).group_by(first.c.stage)
    order = {stage: float(mean) for stage, mean in conn.execute(query)}
    out.stage_order = sorted(order, key=lambda s: (order[s], -totals[s], s))
    ended_here = (
        select(C.stage, func.count(), func.sum(case((_in(C.outcome, success), 1), else_=0)))
        .where(where, C.status == "ended")
        .group_by(C.stage)
    )
    for stage, n, wins in conn.execute(ended_here):
        if totals.get(stage) == int(n):
            out.terminal_stages.add(stage)
            if int(wins or 0) == int(n):
                out.success_stages.add(stage)


def _compliance(conn, where, out: FunnelCounts) -> None:
    joined = decisions.join(conversations, conversations.c.id == D.conversation_id)
    query = (
        select(
            C.arm,
            D.stage,
            D.decision,
            func.count(),
            func.sum(case((D.error.is_not(None), 1), else_=0)),
        )
        .select_from(joined)
        .where(where)
        .group_by(C.arm, D.stage, D.decision)
    )
    for arm, stage, decision, n, errors in conn.execute(query):
        out.compliance.setdefault(arm, {}).setdefault(stage, {})[decision] = int(n)
        out.llm_errors[arm] = out.llm_errors.get(arm, 0) + int(errors or 0)
    query = (
        select(C.arm, D.stage, func.count(distinct(D.conversation_id)))
        .select_from(joined)
        .where(where)
        .group_by(C.arm, D.stage)
    )
    for arm, stage, n in conn.execute(query):
        out.compliance_calls.setdefault(arm, {})[stage] = int(n)


def _variants(conn, where, hangup: list[str], out: FunnelCounts) -> None:
    first = (
        select(
            D.conversation_id,
            D.stage,
            D.variant,
            func.min(D.turn_index).label("turn_index"),
        )
        .where(D.decision == "fallback", D.variant.is_not(None))
        .group_by(D.conversation_id, D.stage, D.variant)
        .subquery()
    )
    following = turns.alias("following")
    hung_up_by_reply = and_(
        C.turn_count == following.c.turn_index,
        func.coalesce(C.end_reason, "") != "hangup",
        _in(func.coalesce(C.outcome, ""), hangup),
    )
    continued = case((and_(following.c.id.is_not(None), not_(hung_up_by_reply)), 1), else_=0)
    joined = first.join(conversations, conversations.c.id == first.c.conversation_id).outerjoin(
        following,
        and_(
            following.c.conversation_id == first.c.conversation_id,
            following.c.turn_index == first.c.turn_index + 1,
        ),
    )
    query = (
        select(C.arm, first.c.stage, first.c.variant, func.count(), func.sum(continued))
        .select_from(joined)
        .where(where)
        .group_by(C.arm, first.c.stage, first.c.variant)
        .order_by(C.arm, first.c.stage, first.c.variant)
    )
    for arm, stage, variant, calls, kept in conn.execute(query):
        out.variants.append(VariantCount(arm, stage, variant, int(calls), int(kept or 0)))


def _latencies(conn, where, out: FunnelCounts) -> None:
    t = turns.c
    total = t.latencies["total_ms"].as_float()
    query = (
        select(C.arm, t.source, total)
        .select_from(turns.join(conversations, conversations.c.id == t.conversation_id))
        .where(where, t.turn_index > 0, total.is_not(None))
    )
    for arm, source, value in conn.execute(query):
        out.latencies.setdefault(arm, {}).setdefault(source, []).append(float(value))


def _findings(conn, where, out: FunnelCounts) -> None:
    """Process-order findings per arm: sent (the customer heard a script before its
    precondition held) and attempted (an LLM draft the filter kept back), and the calls with
    any. Only turns that have findings are fetched (the column is NULL otherwise)."""
    t = turns.c
    query = (
        select(C.arm, t.conversation_id, t.findings)
        .select_from(turns.join(conversations, conversations.c.id == t.conversation_id))
        .where(where, t.findings.is_not(None))
    )
    calls: dict[tuple[str, str], set[str]] = defaultdict(set)
    for arm in out.arms:
        out.findings.setdefault(
            arm, dict.fromkeys(("calls_sent", "calls_attempted", "sent", "attempted"), 0)
        )
    for arm, conversation_id, findings in conn.execute(query):
        counts = out.findings.setdefault(
            arm, dict.fromkeys(("calls_sent", "calls_attempted", "sent", "attempted"), 0)
        )
        for finding in findings or ():
            kind = "sent" if finding.get("sent") else "attempted"
            counts[kind] += 1
            calls[(arm, kind)].add(conversation_id)
            by_script = out.findings_by_script.setdefault(arm, {})
            key = f"{finding.get('script_id')} before {'+'.join(finding.get('missing') or [])}"
            by_script[key] = by_script.get(key, 0) + 1
    for (arm, kind), ids in calls.items():
        out.findings[arm][f"calls_{kind}"] = len(ids)


@dataclass(frozen=True)
class AssignmentRow:
    """The fields of one stored assignment needed to re-derive it (extracted in SQL: parsing
    every full record in Python would dominate the report's time)."""

    session_id: str
    customer_id: str
    arm: str
    seed: str | None
    bucket: int | None
    hash_version: int | None
    unit: str | None
    forced: bool
    definition: str | None


def assignment_rows(
    source: Source, experiment: str, run_id: str | None = None
) -> list[AssignmentRow]:
    """Every conversation's assignment, for the health checks."""
    record = C.assignment
    query = select(
        C.id,
        C.customer_id,
        C.arm,
        record["seed"].as_string(),
        record["bucket"].as_integer(),
        record["hash_version"].as_integer(),
        record["unit"].as_string(),
        record["forced"].as_boolean(),
        record[("design", "definition")].as_string(),
    ).where(scope(experiment, run_id))
    with _use(source) as conn:
        return [
            AssignmentRow(i, c, a, seed, bucket, version, unit, bool(forced), definition)
            for i, c, a, seed, bucket, version, unit, forced, definition in conn.execute(query)
        ]
