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

    @property
    def slots(self) -> frozenset[str]:
        return placeholders(self.text)

    def render(self, slots: dict[str, str]) -> str:
        return self.text.format_map(slots)


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
    early_stop: int = 2  # stable checks before a streamed draft is cut short; 0 = off
    classifier_model: str = "tfidf"  # "tfidf" | "tfidf+minilm"
    classifier_calibrate: bool = True  # temperature scaling on held-out predictions
    classifier_max_accuracy_drop: float = 0.01  # "auto" rules may cost this much accuracy

    def transition_for(self, stage: Stage, intent: str) -> Transition | None:
        """The stage's own transition for ``intent``, else the flow's global one."""
        if stage.is_end:
            return None
        return stage.on.get(intent) or self.global_on.get(intent)

    def scripts_for_stage(self, stage: str) -> list[Script]:
        return [s for s in self.scripts.values() if stage in s.stages or "*" in s.stages]

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
