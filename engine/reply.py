"""What a turn returns to the caller (CLI, HTTP, simulator alike)."""

from __future__ import annotations

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
