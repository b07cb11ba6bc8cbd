"""Domain exceptions. The library raises these; the CLI and HTTP layers translate them."""

from __future__ import annotations

from dataclasses import dataclass


class SalesbotError(Exception):
    """Base class for every error salesbot raises on purpose."""


@dataclass(frozen=True)
class FlowProblem:
    """One thing wrong with a flow, located precisely enough for an editor to jump to it."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class FlowValidationError(SalesbotError):
    """A flow folder failed validation; carries every problem found, not just the first."""

    def __init__(self, problems: list[FlowProblem]):
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in flow:\n{lines}")


class SessionNotFound(SalesbotError):
    def __init__(self, session_id: str):
        self.session_id = session_id
        super().__init__(f"unknown session id {session_id!r}")


class SessionEnded(SalesbotError):
    def __init__(self, session_id: str, outcome: str | None):
        self.session_id = session_id
        super().__init__(f"session {session_id!r} has already ended (outcome: {outcome})")


class MissingSlot(SalesbotError):
    def __init__(self, names: list[str]):
        super().__init__(f"start() needs a value for slot(s): {', '.join(sorted(names))}")


class InvalidSlot(SalesbotError):
    """A slot value given at start() breaks a rule of its slot's type (or the flow's hard
    rules). Names the slot and the rule, never the value: it is customer data."""

    def __init__(self, name: str, rule: str, message: str):
        self.name = name
        self.rule = rule
        self.detail = message
        super().__init__(f"slot {name!r} breaks rule {rule}: {message}")


class ConcurrentTurns(SalesbotError):
    def __init__(self, session_id: str):
        super().__init__(
            f"session {session_id!r} kept changing while a turn was computed; retry the turn"
        )


class IdempotencyKeyReused(SalesbotError):
    """An idempotency key came back with a different request: a client bug, not a retry."""

    def __init__(self, key: str):
        self.key = key
        super().__init__(
            f"Idempotency-Key {key!r} was already used for a different request "
            "(another body or another session); send a new key for a new request"
        )
