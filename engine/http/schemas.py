"""Request and response bodies. Inputs are separate from outputs and from the tables.

Request models are built from the settings (text and slot limits), so the OpenAPI document
states the very limits the service enforces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictFloat,
    StrictInt,
    StringConstraints,
    create_model,
    model_validator,
)

from engine.flow.slots import SlotSpec
from engine.reply import Reply

SESSION_ID = r"^[A-Za-z0-9_-]{1,64}$"
NAME = r"^[A-Za-z0-9_.-]{1,100}$"
PHONE = r"^\+?[0-9 ()\-.]+$"


def _as_utc(value: datetime) -> datetime:
    # Timestamps are written in UTC; SQLite hands them back without their zone.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
IDEMPOTENCY_KEY = r"^[\x21-\x7e]{1,200}$"  # visible ASCII; stored in a 200-character column


class ReplyOut(BaseModel):
    """What the bot says, and why."""

    session_id: str
    turn_index: int = Field(description="0 for the opening line, then 1, 2, ...")
    text: str
    script_id: str | None = Field(description="Approved script sent (null only if none).")
    stage: str = Field(description="The stage after this turn.")
    source: str = Field(description="script | llm | fallback | universal")
    intent: str | None
    confidence: float | None
    margin: float | None
    variant: str | None = Field(description="Fallback wording variant, if one was sent.")
    ended: bool
    outcome: str | None
    latencies_ms: dict[str, float]

    @classmethod
    def of(cls, reply: Reply) -> ReplyOut:
        return cls.model_validate(reply.to_dict())


class SessionCreated(BaseModel):
    session_id: str
    reply: ReplyOut


class TranscriptTurn(BaseModel):
    turn_index: int
    user_text: str | None
    reply_text: str
    script_id: str | None
    stage_before: str | None
    stage: str
    source: str
    intent: str | None
    confidence: float | None
    variant: str | None
    created_at: UtcDatetime


class SessionOut(BaseModel):
    """A session's state and transcript. Slot values are not returned."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    flow_name: str
    flow_version: str
    customer_id: str
    arm: str
    experiment: str | None
    stage: str
    status: str
    outcome: str | None
    end_reason: str | None
    turn_count: int
    created_at: UtcDatetime
    updated_at: UtcDatetime
    ended_at: UtcDatetime | None
    transcript: list[TranscriptTurn]


class EndRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(
        "hangup",
        pattern=r"^[a-z][a-z0-9_]{0,39}$",
        description="Why the call ended: `hangup` (records the flow's on_hangup stage), "
        "`transferred`, ...",
    )


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


def slot_value_type(spec: SlotSpec, max_slot_chars: int) -> Any:
    """The JSON type of one slot's value, as exact as JSON Schema allows: a text slot's length
    and pattern (matched with Python's ``re``, as Engine.start does), an enum's values, a
    number, an ISO date. What the schema cannot say (the flow's hard rules, a phone number's
    digit count, a real calendar date) Engine.start checks: 422 ``invalid_slot``."""
    if spec.type == "text":
        constraints = StringConstraints(
            max_length=min(spec.max_length, max_slot_chars), pattern=rf"^(?:{spec.pattern})$"
        )
        return Annotated[str, constraints]
    if spec.type == "enum":
        return Literal[spec.values]  # type: ignore[valid-type]
    if spec.type == "number":
        bounds = Field(ge=spec.minimum, le=spec.maximum)
        return Annotated[StrictInt if spec.integer else StrictInt | StrictFloat, bounds]
    if spec.type == "date":
        return Annotated[date, Strict(), Field(ge=spec.earliest, le=spec.latest)]
    return Annotated[str, StringConstraints(max_length=min(32, max_slot_chars), pattern=PHONE)]


def start_request_model(
    slots: Mapping[str, SlotSpec], experiments: Sequence[str], max_slot_chars: int
) -> type[BaseModel]:
    """The start body for one flow: its slots by name (required where the flow has no
    default), its experiments by name. The schema is exact, so a client (or a schema-driven
    test) learns from the document what the service accepts."""
    slot_fields: dict[str, Any] = {}
    for i, (name, spec) in enumerate(slots.items()):
        value = slot_value_type(spec, max_slot_chars)
        # Aliases keep slot names that clash with pydantic's own attributes (`json`, ...) legal.
        if spec.required:
            slot_fields[f"slot_{i}"] = (value, Field(alias=name, description="Required."))
        else:
            slot_fields[f"slot_{i}"] = (
                value | None,
                Field(None, alias=name, description=f"Default: {spec.default!r}."),
            )
    slots_model = create_model(
        "Slots",
        __config__=ConfigDict(extra="forbid", regex_engine="python-re"),
        __doc__="The flow's slot values. Never logged; not returned by the API.",
        **slot_fields,
    )
    required = any(spec.required for spec in slots.values())
    fields: dict[str, Any] = {
        "customer_id": (str, Field(min_length=1, max_length=200)),
        "slots": (slots_model, Field(...) if required else Field(default_factory=slots_model)),
        "arm": (
            Literal["hybrid", "pure_llm"] | None,
            Field(None, description="Mode for a session outside any experiment."),
        ),
    }
    extra: dict[str, Any] = {}
    if experiments:
        fields["experiment"] = (
            Literal[tuple(experiments)] | None,  # type: ignore[valid-type]
            Field(None, description="Experiment that assigns the arm by hash of the unit."),
        )
        extra = {"not": {"required": ["arm", "experiment"]}}
    model = create_model(
        "StartRequest",
        __config__=ConfigDict(extra="forbid", json_schema_extra=extra or None),
        __doc__="Open a session: who is called, the slot values, optionally an experiment.",
        __validators__={"_one_of": model_validator(mode="after")(_arm_or_experiment)},
        **fields,
    )
    return model


def _arm_or_experiment(request: Any) -> Any:
    if request.arm is not None and getattr(request, "experiment", None) is not None:
        raise ValueError("give `experiment` (the arm is assigned) or `arm`, not both")
    return request


def slot_values(request: Any) -> dict[str, Any]:
    """The slots a start request gave, by slot name."""
    return request.slots.model_dump(by_alias=True, exclude_none=True)


def turn_request_model(max_text_chars: int) -> type[BaseModel]:
    return create_model(
        "TurnRequest",
        __config__=ConfigDict(extra="forbid"),
        __doc__="What the caller said (speech-to-text output).",
        text=(str, Field(min_length=1, max_length=max_text_chars)),
    )


def session_out(conversation: Any, turns: list[Any]) -> SessionOut:
    return SessionOut.model_validate(
        {
            **{
                name: getattr(conversation, name)
                for name in SessionOut.model_fields
                if name != "transcript"
            },
            "transcript": [
                {name: getattr(t, name) for name in TranscriptTurn.model_fields} for t in turns
            ],
        }
    )
