"""Typed models of the three YAML files of a flow folder.

These models check each file on its own (types, ranges, unknown fields). Checks that need more
than one file (does that script id exist? is that stage reachable?) live in ``flow_loader``.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from engine.flow.generation import GenerationOverrides

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=80)]
ScriptId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$", max_length=120)]
OUT_OF_SCOPE = "out_of_scope"
EMBEDDERS = ("minilm", "tfidf-char")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _stage_name_to_transition(value: Any) -> Any:
    """``affirm: identity`` is shorthand for ``affirm: {to: identity}``."""
    return {"to": value} if isinstance(value, str) else value


class TransitionSpec(_Strict):
    to: Name | None = Field(None, description="Target stage; omitted = stay in the current stage.")
    say: ScriptId | None = Field(
        None, description="Script sent instead of the target's entry reply."
    )


Transition = Annotated[
    TransitionSpec,
    BeforeValidator(_stage_name_to_transition, json_schema_input_type=Name | TransitionSpec),
]


class Otherwise(_Strict):
    say: ScriptId | None = Field(None, description="Re-prompt script (scripted stages).")
    max: int = Field(2, ge=0, le=20, description="Unmatched turns allowed before `then`.")
    then: Name = Field(description="Stage entered once `max` is exceeded.")


class Forbidden(_Strict):
    """Hard rules checked before any matching: a draft that breaks one falls back."""

    phrases: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Case-insensitive whole-word phrases."
    )
    patterns: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Python regular expressions, matched case-insensitively."
    )


class StageCompliance(_Strict):
    threshold: float | None = Field(None, ge=0, le=1)
    margin: float | None = Field(
        None, ge=0, le=1, description="Minimum score gap to the best script with another act."
    )
    mode: Literal["strict", "pass"] | None = None
    fallback: dict[ScriptId, Annotated[float, Field(gt=0, le=1)]] | None = Field(
        None, description="Fallback script id -> weight; weights sum to 1."
    )
    forbidden: Forbidden | None = Field(None, description="Added to the flow-level rules.")
    decoding: Literal["free", "constrained"] | None = Field(
        None, description="Overrides the flow's compliance.decoding for this stage."
    )


class Stage(_Strict):
    kind: Literal["scripted", "llm", "end"]
    say: ScriptId | None = Field(None, description="Script sent on entering the stage.")
    goal: str | None = Field(None, description="What the stage is for; the LLM prompt's task.")
    on: dict[Name, Transition] = Field(default_factory=dict)
    otherwise: Otherwise | None = None
    generation: GenerationOverrides | None = None
    compliance: StageCompliance | None = None
    outcome: Name | None = Field(None, description="End stages: the conversation's outcome.")


class ClassifierConfig(_Strict):
    model: Literal["tfidf", "tfidf+minilm"] = Field(
        "tfidf",
        description="tfidf: word + character n-grams (fast); tfidf+minilm: plus MiniLM embeddings.",
    )
    threshold: Annotated[float, Field(ge=0, le=1)] | Literal["auto"] = Field(
        0.3,
        description="Minimum calibrated confidence to accept an intent; auto: chosen on "
        "held-out (out-of-fold) predictions.",
    )
    margin: Annotated[float, Field(ge=0, le=1)] | Literal["auto"] = Field(
        0.1, description="Minimum top-two probability margin; auto: chosen like threshold."
    )
    calibrate: bool = Field(
        True, description="Temperature-scale probabilities on held-out predictions."
    )
    max_accuracy_drop: float = Field(
        0.01,
        ge=0,
        le=0.5,
        description="auto only: the in-scope accuracy the rejection rule may cost.",
    )


class PureLLMCompliance(_Strict):
    """The pure_llm arm's filter: one threshold for the whole library, its own fallback pool."""

    threshold: float | None = Field(None, ge=0, le=1, description="Default: the flow's.")
    margin: float | None = Field(None, ge=0, le=1, description="Default: the flow's.")
    fallback: dict[ScriptId, Annotated[float, Field(gt=0, le=1)]] | None = Field(
        None, description="Fallback script id -> weight; default: the universal fallback."
    )


class Milestone(_Strict):
    """A flag the ruler sets from the customer's words: one of ``intents`` while the call is at
    ``stage`` (engine/milestones.py); with ``ends``, setting it ends the call with that outcome."""

    stage: Name
    intents: list[Name] = Field(min_length=1)
    ends: Name | None = Field(None, description="Outcome of the call once the flag is set.")


class ComplianceConfig(_Strict):
    embedder: str = Field("minilm", description="A registered embedder: minilm, tfidf-char, ...")
    threshold: float = Field(0.55, ge=0, le=1)
    margin: float = Field(
        0.0, ge=0, le=1, description="Minimum score gap to the best script with another act."
    )
    mode: Literal["strict", "pass"] = "strict"
    universal_fallback: ScriptId
    forbidden: Forbidden = Field(default_factory=Forbidden)
    early_stop: int = Field(
        2, ge=0, le=20, description="Stop streaming once the best match held for N checks; 0 = off."
    )
    pure_llm: PureLLMCompliance = Field(default_factory=PureLLMCompliance)
    decoding: Literal["free", "constrained"] = Field(
        "free",
        description="free: draft freely, then match the nearest script; constrained: decode "
        "only the candidate scripts' texts (backends with can_constrain; others draft freely).",
    )


class LLMConfig(_Strict):
    persona: str = "You are a polite phone sales agent."
    generation: GenerationOverrides | None = None
    backend: Name = Field(
        "transformers",
        description="LLM backend: transformers (batched offline simulation), llamacpp (CPU "
        "serving), openai (any OpenAI-compatible server: vLLM, TGI, llama.cpp server, Ollama). "
        "A deployment may override it (CLI --backend).",
    )
    backend_options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword options of the backend (model, dtype, ...)."
    )
    adapter: str | None = Field(
        None,
        description="A LoRA adapter folder made by `salesbot tune`, relative to the flow folder "
        "(e.g. adapters/broadband_en); the transformers backend merges it at load.",
    )
    intent_note: bool = Field(
        True,
        description="End an LLM stage's prompt with the engine's note: the stage, and the intent "
        "classifier's reading of the customer's last words (hybrid arm). `salesbot tune` trains "
        "with the same setting; an adapter trained without the note should be served without it.",
    )


class TuningConfig(_Strict):
    """What `salesbot tune` cannot derive from the flow (see engine.tuning.data)."""

    answers: dict[Name, list[Name]] = Field(
        default_factory=dict,
        description="Intent -> acts that answer a customer line of that intent (added to "
        "personas.yaml's answered_by).",
    )
    default_acts: dict[Name, list[Name]] = Field(
        default_factory=dict,
        description="llm stage -> acts that answer a line no mapping covers.",
    )
    slots: dict[Name, list[Annotated[str, Field(min_length=1)]]] = Field(
        default_factory=dict, description="Slot -> example values for the training calls."
    )


def _slot_short_form(value: Any) -> Any:
    """``name: null`` is a required free-text slot, ``name: Sam`` one with a default."""
    if value is None:
        return {}
    return {"default": value} if isinstance(value, str) else value


_TYPE_FIELDS = {
    "max_length": "text",
    "pattern": "text",
    "values": "enum",
    "min": "number",
    "max": "number",
    "integer": "number",
    "earliest": "date",
    "latest": "date",
}


class Slot(_Strict):
    """A slot and its type; values given at start() are checked against it."""

    type: Literal["text", "enum", "number", "date", "phone"] = Field(
        "text",
        description="text: free text (max_length, pattern); enum: one of `values`; number "
        "(min, max, integer); date: ISO 8601 YYYY-MM-DD (earliest, latest); phone: 7 to 15 "
        "digits with + ( ) - . and spaces.",
    )
    required: bool | None = Field(
        None, description="Must be given at start(); default: true unless a default is set."
    )
    description: str = ""
    max_length: int | None = Field(
        None, ge=1, le=500, description="text only: at most this many characters (default 60)."
    )
    pattern: str | None = Field(
        None,
        min_length=1,
        description="text only: a Python regular expression the whole value must match "
        "(default: a name, letters of any script joined by single spaces, ' - .).",
    )
    values: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, min_length=1, description="enum only: the allowed values."
    )
    min: float | None = Field(None, description="number only: the smallest value allowed.")
    max: float | None = Field(None, description="number only: the largest value allowed.")
    integer: bool | None = Field(None, description="number only: whole numbers only.")
    earliest: date | None = Field(None, description="date only: the earliest date allowed.")
    latest: date | None = Field(None, description="date only: the latest date allowed.")
    default: str | int | float | date | None = Field(
        None, description="Used when start() gives no value; it must pass the slot's rules."
    )

    @field_validator(*_TYPE_FIELDS)
    @classmethod
    def _applies_to_type(cls, value: Any, info: ValidationInfo) -> Any:
        wanted, declared = _TYPE_FIELDS[info.field_name or ""], info.data.get("type")
        if value is not None and declared is not None and declared != wanted:
            raise ValueError(f"`{info.field_name}` applies to {wanted} slots, not {declared}")
        return value

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        try:
            re.compile(value or "")
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Slot:
        from engine.flow.slots import default_problem

        if self.type == "enum" and not self.values:
            raise ValueError("enum slots need `values`")
        if self.required and self.default is not None:
            raise ValueError("a required slot takes no default")
        if self.required is False and self.default is None:
            raise ValueError("an optional slot needs a default (scripts render it)")
        problem = default_problem(self)
        if problem:
            raise ValueError(problem)
        return self


SlotDeclaration = Annotated[
    Slot, BeforeValidator(_slot_short_form, json_schema_input_type=str | None | Slot)
]


class FlowFile(_Strict):
    """flow.yaml"""

    flow: Name
    version: int | str = 1
    language: str = Field("en", pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]+)*$")
    description: str = ""
    start: Name
    on_hangup: Name | None = None
    slots: dict[Name, SlotDeclaration] = Field(
        default_factory=dict,
        description="Slot name -> type; `null` = required free text, a string = its default.",
    )
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    compliance: ComplianceConfig
    llm: LLMConfig = Field(default_factory=LLMConfig)
    tuning: TuningConfig | None = None
    global_: dict[Name, Transition] = Field(default_factory=dict, alias="global")
    stages: dict[Name, Stage] = Field(min_length=1)
    milestones: dict[Name, Milestone] = Field(
        default_factory=dict, description="Flags the ruler sets from the customer's intents."
    )


class IntentsFile(_Strict):
    """intents.yaml"""

    intents: dict[Name, Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=2)]]


class Script(_Strict):
    id: ScriptId
    stages: list[str] = Field(min_length=1, description='Stage names, or "*" for every stage.')
    act: Name
    text: str = Field(min_length=1)
    wordings: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Extra approved wordings, matched but never sent."
    )
    ends: Name | None = Field(None, description="Sending it ends the call with this outcome.")
    sets: list[Name] = Field(default_factory=list, description="Flags that hold once it is sent.")
    requires: list[Name] = Field(
        default_factory=list, description="Flags that must hold for it to be a candidate."
    )
    once: bool = Field(False, description="At most once per call.")


class ScriptsFile(_Strict):
    """scripts.yaml"""

    scripts: list[Script] = Field(min_length=1)


FILES: dict[str, type[BaseModel]] = {
    "flow.yaml": FlowFile,
    "intents.yaml": IntentsFile,
    "scripts.yaml": ScriptsFile,
}


def json_schema(file_name: str = "flow.yaml") -> dict[str, Any]:
    """The JSON Schema of one file of a flow folder, for editors (yaml-language-server)."""
    schema = FILES[file_name].model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"salesbot {file_name}"
    return schema
