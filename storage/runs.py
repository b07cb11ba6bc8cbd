"""Simulation runs in the database: the ``simulation_runs`` row and the run's conversations.

The simulator (:mod:`engine.simulation.runner`) and the code that reads a run back
(:mod:`engine.simulation.results`) go through these functions instead of opening sessions on the
Store themselves, so every query against these tables lives in ``storage/``. The conversations
themselves are written by the engine, like live calls; this module only reads them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from storage.models import Conversation, SimulationRun, StageEvent, utcnow
from storage.repository import Store


@dataclass(frozen=True)
class RunConversation:
    """One stored conversation of a run, with the stages it reached."""

    id: str
    customer_id: str
    arm: str  # the engine mode column; the arm's label is in the assignment record
    assignment: dict[str, Any] | None
    outcome: str | None
    turn_count: int
    stages: frozenset[str]


def open_run(
    store: Store, run_id: str, *, flow_name: str, flow_version: str, params: dict[str, Any]
) -> list[str]:
    """Create the run's row, or mark the stored run with these ``params`` running again.

    Returns the names of the params that differ from a stored run with this id (and changes
    nothing then): an id names one set of parameters, so resuming it with others is refused.
    """
    with store.transaction() as db:
        row = db.get(SimulationRun, run_id)
        if row is None:
            db.add(
                SimulationRun(
                    id=run_id,
                    flow_name=flow_name,
                    flow_version=flow_version,
                    params=params,
                    status="running",
                )
            )
            return []
        if row.params != params:
            return sorted(k for k in params if row.params.get(k) != params[k])
        row.status, row.finished_at = "running", None
        return []


def close_run(store: Store, run_id: str, status: str) -> None:
    """Record how the run stopped (``finished`` sets the finishing time)."""
    with store.transaction() as db:
        row = db.get(SimulationRun, run_id)
        if row is not None:
            row.status = status
            row.finished_at = utcnow() if status == "finished" else None


def conversation_status(store: Store, run_id: str) -> dict[str, str]:
    """Session id -> status of every conversation stored for the run (to resume it)."""
    with store.transaction() as db:
        rows = db.execute(
            select(Conversation.id, Conversation.status).where(Conversation.run_id == run_id)
        ).all()
    return {sid: status for sid, status in rows}


def run_conversations(store: Store, run_id: str) -> list[RunConversation]:
    """Every conversation of the run and the stages it reached, in two queries."""
    with store.transaction() as db:
        rows = db.execute(
            select(
                Conversation.id,
                Conversation.customer_id,
                Conversation.arm,
                Conversation.assignment,
                Conversation.outcome,
                Conversation.turn_count,
            ).where(Conversation.run_id == run_id)
        ).all()
        reached: dict[str, set[str]] = defaultdict(set)
        for conversation_id, stage in db.execute(
            select(StageEvent.conversation_id, StageEvent.stage)
            .join(Conversation, Conversation.id == StageEvent.conversation_id)
            .where(Conversation.run_id == run_id)
        ):
            reached[conversation_id].add(stage)
    # the selected columns are RunConversation's fields in order; the stages come last
    return [RunConversation(*row, stages=frozenset(reached.get(row.id, ()))) for row in rows]
