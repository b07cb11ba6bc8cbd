"""Typed models of the three YAML files of a flow folder.

These models check each file on its own (types, ranges, unknown fields). Checks that need more
than one file (does that script id exist? is that stage reachable?) live in ``flow_loader``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

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


class FlowFile(_Strict):
    """flow.yaml"""

    flow: Name
    version: int | str = 1
    language: str = Field("en", pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]+)*$")
    description: str = ""
    start: Name
    on_hangup: Name | None = None
    slots: dict[Name, str | None] = Field(default_factory=dict)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    compliance: ComplianceConfig
    llm: LLMConfig = Field(default_factory=LLMConfig)
    global_: dict[Name, Transition] = Field(default_factory=dict, alias="global")
    stages: dict[Name, Stage] = Field(min_length=1)


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
