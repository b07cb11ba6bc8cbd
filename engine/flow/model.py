"""A compiled flow: the immutable graph every conversation of that flow shares.

Built once by :func:`engine.flow.loader.load_flow`; nothing is looked up by string
mid-conversation that was not checked at load time.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from engine.flow.generation import GenerationParams
from engine.flow.slots import SlotSpec

StageKind = Literal["scripted", "llm", "end"]


@dataclass(frozen=True)
class Transition:
    to: str | None  # None: stay in the current stage
    say: str | None  # overrides the target stage's entry reply


@dataclass(frozen=True)
class Otherwise:
    say: str | None
    max: int
    then: str


@dataclass(frozen=True)
class CompliancePolicy:
    threshold: float
    mode: Literal["strict", "pass"]
    fallback: tuple[tuple[str, float], ...]  # (script id, weight), weights sum to 1
    universal_fallback: str
    candidates: tuple[str, ...]  # approved script ids the LLM's draft is matched against
    margin: float = 0.0  # minimum gap between the best script and the best one with another act
    forbidden_phrases: tuple[str, ...] = ()  # hard rules, flow-level plus stage-level
    forbidden_patterns: tuple[str, ...] = ()  # regex sources, checked to compile at load time
    decoding: str = "free"  # free | constrained (engine.llm.hf.constrained)


@dataclass(frozen=True)
class Stage:
    name: str
    kind: StageKind
    say: str | None
    goal: str
    on: MappingProxyType[str, Transition]
    otherwise: Otherwise | None
    outcome: str | None
    generation: GenerationParams | None
    compliance: CompliancePolicy | None

    @property
    def is_end(self) -> bool:
        return self.kind == "end"


@dataclass(frozen=True)
class Script:
    id: str
    stages: tuple[str, ...]
    act: str
    text: str
    wordings: tuple[str, ...] = ()  # extra approved wordings: matched against, never sent
    ends: str | None = None  # effect: sending it ends the call with this outcome
    sets: tuple[str, ...] = ()  # effect: flags that hold once it was sent
    requires: tuple[str, ...] = ()  # precondition: flags that must hold for it to be a candidate
    once: bool = False  # precondition: not a candidate once it was said in the call

    @property
    def slots(self) -> frozenset[str]:
        return placeholders(self.text)

    def render(self, slots: dict[str, str]) -> str:
        return self.text.format_map(slots)


@dataclass(frozen=True)
class Milestone:
    """A flag the ruler sets when the customer says one of ``intents`` at ``stage``."""

    name: str
    stage: str
    intents: tuple[str, ...]
    ends: str | None = None  # outcome of the call once set (e.g. accepted -> converted)


@dataclass(frozen=True)
class TuningSpec:
    """flow.yaml's optional ``tuning:`` section: what the training-data builder cannot derive.

    ``answers``: intent -> acts that answer a customer line of that intent (added to
    personas.yaml's ``answered_by``); ``default_acts``: llm stage -> acts that answer a line no
    mapping covers (e.g. the customer describing their usage on entering the pitch);
    ``slots``: slot -> example values for the training calls' histories.
    """

    answers: MappingProxyType[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    default_acts: MappingProxyType[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    slots: MappingProxyType[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )


@dataclass(frozen=True)
class Flow:
    name: str
    version: str  # content hash, "flow:v1:<sha256>"
    label: str | int
    language: str
    description: str
    folder: Path
    start: str
    on_hangup: str | None
    slot_defaults: MappingProxyType[str, str | None]
    classifier_threshold: float | Literal["auto"]
    classifier_margin: float | Literal["auto"]
    embedder: str
    persona: str
    backend: str
    backend_options: MappingProxyType[str, Any]
    default_generation: GenerationParams
    global_on: MappingProxyType[str, Transition]
    stages: MappingProxyType[str, Stage]
    scripts: MappingProxyType[str, Script]
    intents: MappingProxyType[str, tuple[str, ...]]
    library_hash: str = field(default="")
    intent_note: bool = True  # llm.intent_note: LLM stages end with the stage and the reading
    early_stop: int = 2  # stable checks before a streamed draft is cut short; 0 = off
    classifier_model: str = "tfidf"  # "tfidf" | "tfidf+minilm"
    classifier_calibrate: bool = True  # temperature scaling on held-out predictions
    classifier_max_accuracy_drop: float = 0.01  # "auto" rules may cost this much accuracy
    slots: MappingProxyType[str, SlotSpec] = field(default_factory=lambda: MappingProxyType({}))
    # Flow-level hard rules and fallback: slot values are checked against them at start, and
    # so is every rendered reply of a stage without a compliance policy (end stages).
    forbidden_phrases: tuple[str, ...] = ()
    forbidden_patterns: tuple[str, ...] = ()
    universal_fallback: str | None = None
    milestones: tuple[Milestone, ...] = ()  # flags the ruler sets from the customer's intents
    pure_llm: CompliancePolicy | None = None  # the pure_llm arm's filter over the whole library
    tuning: TuningSpec = field(default_factory=TuningSpec)
    adapter: Path | None = None  # llm.adapter: a LoRA adapter folder (checked at load time)
    adapter_hash: str | None = None  # its manifest's adapter hash, recorded in audit rows
    warnings: tuple[Any, ...] = ()  # FlowProblem-s that do not stop the flow (stale adapter)

    def transition_for(self, stage: Stage, intent: str) -> Transition | None:
        """The stage's own transition for ``intent``, else the flow's global one."""
        if stage.is_end:
            return None
        return stage.on.get(intent) or self.global_on.get(intent)

    def render(self, script_id: str, slots: dict[str, str]) -> str:
        return self.scripts[script_id].render(slots)


def placeholders(text: str) -> frozenset[str]:
    """Slot names used as ``{slot}`` in a script text (the text must pass ``template_problem``)."""
    return frozenset(name for _, name, _, _ in string.Formatter().parse(text) if name)


def template_problem(text: str) -> str | None:
    """Why ``text`` cannot be rendered with ``{slot}`` placeholders, or None when it can.

    Checked at load time so that a typo such as ``{customer_name`` or ``{}`` is a validation
    error with a line number instead of an exception in the middle of a live call.
    """
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError as exc:
        return f"malformed placeholder ({exc}); write {{slot_name}}, and {{{{ }}}} for braces"
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if not name.isidentifier():
            return f"placeholder {{{name}}} must be a slot name such as {{customer_name}}"
        if spec or conversion:
            return f"placeholder {{{name}}} takes no format spec or conversion"
    return None
