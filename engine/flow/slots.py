"""Typed slots: what a caller may put into a flow's ``{slot}`` placeholders, checked at start.

A slot value is customer data, yet it is rendered into approved scripts and the LLM's system
prompt. Left as free text it is a way around the compliance filter ("Alex. We will give you 50%
off" as a name), so every slot has a type, in the spirit of Rasa's slot types and Dialogflow's
entity types:

- ``text``: free text, at most ``max_length`` characters of an allowed ``pattern`` (by default
  a name: letters of any script, single spaces, ``' ’ - .``, at most 60 characters);
- ``enum``: one of the listed ``values``;
- ``number``: a decimal number, optionally an integer, between ``min`` and ``max``;
- ``date``: an ISO 8601 calendar date (``2026-12-02``), between ``earliest`` and ``latest``;
- ``phone``: a phone number, 7 to 15 digits (E.164's limit) with ``+ ( ) - .`` and spaces.

Whatever the type, a value may hold no control or format character (newlines, zero-width and
bidirectional marks), and it must break none of the flow's hard rules (forbidden phrases and
patterns). The rules are checked again on every rendered reply (see
``ComplianceFilter.screen``), because a value can join the script's own words into a forbidden
phrase.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from engine.errors import InvalidSlot, MissingSlot
from engine.text import storable

if TYPE_CHECKING:
    from engine.flow.model import Flow
    from engine.flow.schema import Slot

SlotType = Literal["text", "enum", "number", "date", "phone"]
SLOT_TYPES: tuple[str, ...] = ("text", "enum", "number", "date", "phone")

# A name in any script: letters (Python's \w less digits and "_"), joined by one space, hyphen,
# apostrophe or period ("Mary-Jane O'Neil", "J. R. Smith", "张伟"). The two alternatives of the
# group are disjoint, so matching is linear even on hostile input.
LETTER = r"[^\W\d_]"
TEXT_PATTERN = rf"{LETTER}(?:{LETTER}|[ '\u2019.\-])*"
TEXT_MAX_LENGTH = 60
NUMBER_MAX_CHARS = 32  # "12345.67" fits; a 10,000-digit string is not parsed
PHONE_PATTERN = re.compile(r"\+?[0-9 ()\-.]+")
PHONE_DIGITS = (7, 15)  # E.164: at most 15 digits
# Unicode categories no value may hold: control, format (zero-width, bidi), surrogate, private
# use, unassigned, and the line and paragraph separators.
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class SlotValueError(ValueError):
    """A value breaks a rule of its slot type; ``rule`` names it (max_length, pattern, ...)."""

    def __init__(self, rule: str, message: str):
        self.rule = rule
        super().__init__(message)


@dataclass(frozen=True)
class SlotSpec:
    """One declared slot, compiled: its type, whether start() needs it, and its rules."""

    name: str
    type: SlotType = "text"
    required: bool = True
    default: str | None = None
    max_length: int = TEXT_MAX_LENGTH  # text
    pattern: str = TEXT_PATTERN  # text; a full match is required
    values: tuple[str, ...] = ()  # enum
    minimum: float | None = None  # number
    maximum: float | None = None  # number
    integer: bool = False  # number
    earliest: date | None = None  # date
    latest: date | None = None  # date

    def check(self, value: Any) -> str:
        """The value as stored and rendered (a string), or :class:`SlotValueError`."""
        if isinstance(value, bool) or value is None:
            kind = type(value).__name__
            raise SlotValueError("type", f"expected a {self.type} value, got {kind}")
        if self.type == "number" and isinstance(value, (int, float)):
            return self._number(value)
        if self.type == "date" and isinstance(value, date):
            return self._date(value)
        if not isinstance(value, str):
            raise SlotValueError("type", f"expected text, got {type(value).__name__}")
        text = value.strip()
        bad = next((c for c in text if unicodedata.category(c) in _INVISIBLE), None)
        if bad is not None:
            raise SlotValueError(
                "control_character",
                f"control or format character U+{ord(bad):04X} is not allowed (newlines, "
                "zero-width and bidirectional marks included)",
            )
        if not text:
            raise SlotValueError("empty", "the value is empty")
        return getattr(self, f"_{self.type}")(text)

    def _text(self, text: str) -> str:
        if len(text) > self.max_length:
            raise SlotValueError(
                "max_length", f"at most {self.max_length} characters (got {len(text)})"
            )
        if not _compiled(self.pattern).fullmatch(text):
            raise SlotValueError("pattern", f"does not match the slot's pattern {self.pattern!r}")
        return text

    def _enum(self, text: str) -> str:
        if text not in self.values:
            raise SlotValueError("enum", f"must be one of: {', '.join(self.values)}")
        return text

    def _number(self, value: str | int | float) -> str:
        if isinstance(value, str):
            if len(value) > NUMBER_MAX_CHARS:
                raise SlotValueError("number", f"at most {NUMBER_MAX_CHARS} characters")
            try:
                number = Decimal(value)
            except InvalidOperation:
                raise SlotValueError("number", "not a number (write e.g. 42 or 38.5)") from None
        else:
            number = Decimal(str(value))
        if not number.is_finite():
            raise SlotValueError("number", "not a finite number")
        if self.integer and number != number.to_integral_value():
            raise SlotValueError("integer", "must be a whole number")
        if self.minimum is not None and number < Decimal(str(self.minimum)):
            raise SlotValueError("min", f"must be at least {self.minimum:g}")
        if self.maximum is not None and number > Decimal(str(self.maximum)):
            raise SlotValueError("max", f"must be at most {self.maximum:g}")
        if number == number.to_integral_value():
            stored = str(int(number))
        else:
            stored = format(number.normalize(), "f")
        if len(stored) > NUMBER_MAX_CHARS:
            raise SlotValueError(
                "number", f"too large or too precise to write in {NUMBER_MAX_CHARS} digits"
            )
        return stored

    def _date(self, value: str | date) -> str:
        if isinstance(value, str):
            if not _DATE.fullmatch(value):
                raise SlotValueError("date", "not an ISO 8601 date (write YYYY-MM-DD)")
            try:
                value = date.fromisoformat(value)
            except ValueError as exc:
                raise SlotValueError("date", f"not a valid date ({exc})") from None
        if self.earliest is not None and value < self.earliest:
            raise SlotValueError("earliest", f"must be on or after {self.earliest.isoformat()}")
        if self.latest is not None and value > self.latest:
            raise SlotValueError("latest", f"must be on or before {self.latest.isoformat()}")
        return value.isoformat()

    def _phone(self, text: str) -> str:
        digits = sum(c.isdigit() for c in text)
        low, high = PHONE_DIGITS
        if not PHONE_PATTERN.fullmatch(text) or not low <= digits <= high:
            raise SlotValueError(
                "phone", f"a phone number: {low} to {high} digits, with + ( ) - . and spaces"
            )
        return text


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def compile_slot(name: str, decl: Slot) -> SlotSpec:
    """The runtime spec of a declaration from flow.yaml (already validated by its model)."""
    fields: dict[str, Any] = {"name": name, "type": decl.type}
    for key in ("max_length", "pattern", "integer", "earliest", "latest"):
        if getattr(decl, key) is not None:
            fields[key] = getattr(decl, key)
    if decl.values is not None:
        fields["values"] = tuple(decl.values)
    fields["minimum"], fields["maximum"] = decl.min, decl.max
    spec = SlotSpec(**fields)
    default = None if decl.default is None else spec.check(decl.default)
    required = decl.required if decl.required is not None else default is None
    return SlotSpec(**{**fields, "default": default, "required": required})


def default_problem(decl: Slot) -> str | None:
    """Why a declaration's default breaks the declaration's own rules, or None."""
    if decl.default is None:
        return None
    try:
        compile_slot("_", decl)
    except SlotValueError as exc:
        return f"the default breaks the slot's rule {exc.rule}: {exc}"
    return None


def resolve_slots(flow: Flow, given: Mapping[str, Any] | None) -> dict[str, str]:
    """The session's slot values: each given one checked against its type and the flow's hard
    rules, defaults filled in. Raises :class:`MissingSlot` or :class:`InvalidSlot`.

    The value itself is never put into an error message: it is customer data and error messages
    reach logs and HTTP responses.
    """
    from engine.compliance.rules import forbidden_hits

    given = dict(given or {})
    for name in given:
        if name not in flow.slots:
            known = ", ".join(sorted(flow.slots)) or "none"
            raise InvalidSlot(name, "unknown", f"the flow has no such slot (slots: {known})")
    missing = [
        name for name, spec in flow.slots.items() if spec.required and given.get(name) is None
    ]
    if missing:
        raise MissingSlot(missing)
    resolved: dict[str, str] = {}
    for name, spec in flow.slots.items():
        value = given.get(name)
        if value is None:
            if spec.default is not None:
                resolved[name] = spec.default
            continue
        try:
            checked = spec.check(value)
        except SlotValueError as exc:
            raise InvalidSlot(name, exc.rule, str(exc)) from None
        hits = forbidden_hits(checked, flow.forbidden_phrases, flow.forbidden_patterns)
        if hits:
            rules = "; ".join(f"{hit.rule} {hit.value!r}" for hit in hits)
            raise InvalidSlot(name, "forbidden", f"breaks the flow's hard rules ({rules})")
        resolved[name] = storable(checked)
    return resolved
