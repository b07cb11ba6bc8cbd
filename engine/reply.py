"""What a turn returns to the caller (CLI, HTTP, simulator alike)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Reply:
    session_id: str
    turn_index: int
    text: str
    script_id: str | None
    stage: str  # stage after the turn
    source: str  # script | llm | fallback | universal
    intent: str | None  # None for the opening line
    confidence: float | None
    margin: float | None
    variant: str | None = None  # fallback wording sent, if any
    ended: bool = False
    outcome: str | None = None
    latencies_ms: dict[str, float] = field(default_factory=dict)
    replayed: bool = False  # returned from storage for a retried request (nothing was written)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reply_from_row(row: Mapping[str, Any], outcome: str | None, replayed: bool = False) -> Reply:
    """The Reply a turn stands for, from its ``turns`` columns (a row about to be written, or one
    read back for a retried request); ``outcome`` is set when that turn ended the call."""
    return Reply(
        session_id=row["conversation_id"],
        turn_index=row["turn_index"],
        text=row["reply_text"],
        script_id=row["script_id"],
        stage=row["stage"],
        source=row["source"],
        intent=row["intent"],
        confidence=row["confidence"],
        margin=row["margin"],
        variant=row["variant"],
        ended=outcome is not None,
        outcome=outcome,
        latencies_ms=dict(row["latencies"] or {}),
        replayed=replayed,
    )
