"""``personas.yaml``: who the simulated customers are, as numbers, validated like a flow.

A persona is a handful of numbers (interest, patience, off-topic propensity, identity
cooperation, bot aversion, an agenda of objections); the customer's decisions are computed from
them in :mod:`engine.simulation.customer`, never by an LLM (LLM-played customers are known to be
too easy to persuade). The file also says how this flow's bot acts are heard (``acts``: act ->
role) and which acts answer each objection (``moves``), because act names belong to the flow.

:func:`load_population` validates ``personas.yaml`` and ``utterances.yaml`` against the loaded
flow and reports every problem with file, line and field, like :func:`engine.flow.loader.load_flow`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.errors import FlowValidationError
from engine.flow.model import Flow
from engine.flow.problems import Problems
from engine.hashing import content_hash
from engine.simulation.utterances import Name, UtteranceBank, UtterancesFile

PERSONAS_FILE = "personas.yaml"
UTTERANCES_FILE = "utterances.yaml"
HASH_SCHEME = "population:v1:"

# How a customer hears a bot reply, whatever the flow calls the act:
#   greet     asks whether it is the right person         verify   asks for security details
#   ask_need  asks how the customer uses the product      sell     pitches, informs, asks to buy
#   faq       answers a meta question ("are you a bot?")  repair   "sorry, say that again"
#   reprompt  re-asks because it did not understand       goodbye  ends the call
Role = Literal["greet", "verify", "ask_need", "sell", "faq", "repair", "reprompt", "goodbye"]
ROLES: tuple[str, ...] = Role.__args__  # type: ignore[attr-defined]
QUESTION_ROLES = frozenset({"greet", "verify", "ask_need", "sell"})

DEFAULT_ACT_ROLES: dict[str, str] = {
    "greet": "greet",
    "verify": "verify",
    "confirm": "ask_need",
    "ask_need": "ask_need",
    "pitch": "sell",
    "inform": "sell",
    "close": "sell",
    "handle_price_objection": "sell",
    "handle_contract_objection": "sell",
    "faq": "faq",
    "repair": "repair",
    "reprompt": "reprompt",
    "goodbye": "goodbye",
}

Probability = Annotated[float, Field(ge=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomerIntents(_Strict):
    """Which of the flow's intents the customer uses for each of its built-in answers."""

    confirm_identity: Name = Field("affirm", description="'Yes, speaking' to the greeting.")
    wrong_person: Name = Field("wrong_person", description="Someone else picked up.")
    busy: Name = Field("busy", description="'Can't talk now, call me later.'")
    provide_identity: Name = Field("provide_identity", description="Gives security details.")
    refuse_identity: Name = Field("refuse_identity", description="Will not give them.")
    describe_needs: Name = Field("describe_usage", description="Answers the needs question.")
    accept: Name = Field("agree_to_offer", description="Says yes to the offer.")
    decline: Name = Field("not_interested", description="Says no to the offer.")
    ask_if_robot: Name = Field("ask_if_robot", description="'Am I talking to a machine?'")
    goodbye: Name = Field("goodbye", description="Says goodbye when the bot does.")
    off_topic: Name = Field("off_topic", description="Talks about something else.")


class Move(_Strict):
    """An objection or question a persona may put on its agenda."""

    intent: Name = Field(description="The flow intent the customer says.")
    answered_by: list[Name] = Field(
        min_length=1, description="Bot acts that answer it; any other reply costs patience."
    )
    description: str = ""


class Persona(_Strict):
    weight: float = Field(gt=0, le=1, description="Share of simulated customers; sum to 1.")
    interest: Probability = Field(
        description="Chance of accepting once every objection on the agenda was answered."
    )
    patience: Probability = Field(
        description="At the k-th unhelpful reply the customer hangs up with 1 - patience ** k."
    )
    off_topic: Probability = Field(0.0, description="Chance per turn of an off-topic remark.")
    noise: Probability = Field(0.0, description="Chance per turn of an unintelligible utterance.")
    identity_cooperation: Probability = Field(
        1.0, description="Chance of giving security details when asked."
    )
    bot_aversion: Probability = Field(
        0.0,
        description="Chance of asking 'are you a robot?' at the start, and of hanging up on "
        "hearing that it is one.",
    )
    busy: Probability = Field(0.0, description="Chance of answering the greeting with 'busy'.")
    wrong_person: Probability = Field(0.0, description="Chance that someone else picks up.")
    objections: dict[Name, Probability] = Field(
        default_factory=dict,
        description="Agenda, in order: move name -> chance it is raised in this call.",
    )
    description: str = ""

    @model_validator(mode="after")
    def _one_greeting_answer(self) -> Persona:
        if self.busy + self.wrong_person > 1:
            raise ValueError("busy + wrong_person must not exceed 1")
        return self


class PersonasFile(_Strict):
    max_turns: int = Field(
        30, ge=2, le=500, description="The customer hangs up after this many utterances."
    )
    intents: CustomerIntents = Field(default_factory=CustomerIntents)
    acts: dict[Name, Role] = Field(
        default_factory=dict, description="Extra or changed act -> role mappings for this flow."
    )
    moves: dict[Name, Move] = Field(default_factory=dict)
    personas: dict[Name, Persona] = Field(min_length=1)


@dataclass(frozen=True)
class Population:
    """Personas, surface text and act roles for one flow; what a simulation draws customers from."""

    flow: Flow
    personas: MappingProxyType[str, Persona]
    moves: MappingProxyType[str, Move]
    intents: CustomerIntents
    act_roles: MappingProxyType[str, str]
    max_turns: int
    bank: UtteranceBank
    version: str  # "population:v1:<sha256>" of both files' parsed content

    def role_of(self, script_id: str | None) -> str:
        """How the customer hears a reply: by the act of the script that was sent."""
        if script_id is None or script_id not in self.flow.scripts:
            return "repair"  # raw text in pass mode with no script: heard as not addressed
        return self.act_roles[self.flow.scripts[script_id].act]

    def adjusted(
        self, *, set_to: Mapping[str, float] | None = None, scale: Mapping[str, float] | None = None
    ) -> Population:
        """Every persona with some numbers set (``set_to={"patience": 0.3}``) or multiplied
        (``scale={"interest": 0.5}``, clipped to [0, 1]): for sensitivity runs and checks that
        the simulation responds to its inputs. The version changes with the adjustment."""
        personas = {}
        for name, persona in self.personas.items():
            data = persona.model_dump()
            for key, factor in (scale or {}).items():
                data[key] = min(1.0, max(0.0, data[key] * factor))
            data.update(set_to or {})
            personas[name] = Persona.model_validate(data)
        change = {"set_to": dict(set_to or {}), "scale": dict(scale or {})}
        version = content_hash({"base": self.version, **change}, HASH_SCHEME)
        return dataclasses.replace(self, personas=MappingProxyType(personas), version=version)

    def said_intents(self) -> set[str]:
        """Every intent a customer of this population can say."""
        return set(self.intents.model_dump().values()) | {m.intent for m in self.moves.values()}


def _check(
    flow: Flow, personas: PersonasFile, utterances: UtterancesFile | None, problems: Problems
) -> dict[str, str]:
    """Cross-file rules; returns the act -> role map for the flow."""
    p, u = PERSONAS_FILE, UTTERANCES_FILE
    flow_acts = {s.act for s in flow.scripts.values()}
    roles = {**DEFAULT_ACT_ROLES, **personas.acts}
    for act in sorted(flow_acts - set(roles)):
        where = next(s.id for s in flow.scripts.values() if s.act == act)
        problems.add(
            p,
            ("acts",),
            f"act {act!r} (script {where!r}) has no role; add it under acts: "
            f"with one of {', '.join(ROLES)}",
        )
    for act in personas.acts:
        if act not in flow_acts:
            problems.add(p, ("acts", act), f"no script in the flow has act {act!r}")
    for field, intent in personas.intents.model_dump().items():
        if intent not in flow.intents:
            problems.add(p, ("intents", field), f"intent {intent!r} is not in intents.yaml")
    for name, move in personas.moves.items():
        if move.intent not in flow.intents:
            problems.add(
                p, ("moves", name, "intent"), f"intent {move.intent!r} is not in intents.yaml"
            )
        for i, act in enumerate(move.answered_by):
            if act not in flow_acts:
                problems.add(
                    p, ("moves", name, "answered_by", i), f"no script in the flow has act {act!r}"
                )
    total = math.fsum(persona.weight for persona in personas.personas.values())
    if abs(total - 1) > 1e-6:
        problems.add(p, ("personas",), f"persona weights sum to {total:g}, not 1")
    for name, persona in personas.personas.items():
        for move in persona.objections:
            if move not in personas.moves:
                known = ", ".join(sorted(personas.moves)) or "none"
                problems.add(
                    p,
                    ("personas", name, "objections", move),
                    f"unknown move {move!r} (moves: {known})",
                )
    if utterances is None:
        return roles
    for intent in utterances.intents:
        if intent not in flow.intents:
            problems.add(u, ("intents", intent), f"intent {intent!r} is not in intents.yaml")
    said = set(personas.intents.model_dump().values()) | {m.intent for m in personas.moves.values()}
    for intent in sorted(said - set(utterances.intents)):
        problems.add(u, ("intents",), f"no utterances for intent {intent!r}, which customers say")
    if not utterances.noise and any(x.noise > 0 for x in personas.personas.values()):
        problems.add(u, ("noise",), "personas have noise > 0 but there are no noise utterances")
    for slot, default in flow.slot_defaults.items():
        if default is None and slot not in utterances.slots:
            problems.add(u, ("slots",), f"slot {slot!r} has no default in flow.yaml: list values")
    return roles


def load_population(flow: Flow, folder: str | Path | None = None) -> Population:
    """Load ``personas.yaml`` and ``utterances.yaml`` from the flow's folder (or ``folder``).

    Raises :class:`FlowValidationError` listing every problem found in both files.
    """
    root = Path(folder) if folder is not None else flow.folder
    problems = Problems(root)
    personas = problems.read(PERSONAS_FILE, PersonasFile)
    utterances = problems.read(UTTERANCES_FILE, UtterancesFile)
    roles: dict[str, str] = {}
    if personas is not None:
        roles = _check(flow, personas, utterances, problems)
    if problems.items or personas is None or utterances is None:
        raise FlowValidationError(problems.items)
    version = content_hash(
        {"personas": personas.model_dump(mode="json"), "utterances": utterances.model_dump()},
        HASH_SCHEME,
    )
    return Population(
        flow=flow,
        personas=MappingProxyType(dict(personas.personas)),
        moves=MappingProxyType(dict(personas.moves)),
        intents=personas.intents,
        act_roles=MappingProxyType(roles),
        max_turns=personas.max_turns,
        bank=UtteranceBank.from_file(utterances),
        version=version,
    )
