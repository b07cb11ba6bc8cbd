"""An agenda-based simulated customer: every decision is made here, in code, from the persona's
numbers and the act of the bot's last reply. No LLM decides anything (LLM-played customers are
too easily persuaded), so a simulated funnel moves only when the bot's behaviour does.

How a reply is judged. The customer remembers what it said last and hears the reply by the act
of the script actually sent (a fallback wording too: scripts.yaml gives each fallback the act
it performs, a fallback that pitches is a pitch), mapped to a role
(:data:`engine.simulation.personas.DEFAULT_ACT_ROLES`):

- an answer (to the greeting, the security question, the needs question, an offer) is addressed
  by a reply that moves on to a question: not by a repair, a re-prompt, an FAQ answer or the
  same question again;
- an objection on the agenda is addressed only by the acts its move lists in ``answered_by``;
  an addressed objection leaves the agenda, an unaddressed one is raised again;
- "are you a robot?" is addressed by an FAQ answer; an off-topic remark by a repair; noise by a
  repair or a re-prompt.

A reply that does not address what the customer said is an unhelpful reply; at the k-th one the
customer hangs up with probability ``1 - patience ** k`` (the hazard rises with each). Once the
agenda is empty, the customer accepts the offer if its latent willingness (drawn once) is below
``interest``.

Randomness. One numpy Generator per (seed, customer index) draws the latent traits first, then
a fixed block of numbers per turn whatever happens, so the same customer in two arms sees the
same random numbers at the same turn (common random numbers: the arms' difference is not
drowned in customer noise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.simulation.personas import QUESTION_ROLES, Persona, Population
from engine.simulation.utterances import NOISE

DRAWS_PER_TURN = 6  # hazard, bot aversion, off-topic, noise, (spare), surface text
LATENT_DRAWS = 5  # persona, willingness, identity, greeting answer, robot question


@dataclass(frozen=True)
class Utterance:
    intent: str  # the intent the customer means (or "noise"): the simulation's ground truth
    text: str


@dataclass(frozen=True)
class _Said:
    kind: str  # answer | agenda | robot | off_topic | noise | goodbye
    key: str  # the role answered, or the move name
    utterance: Utterance


@dataclass
class TraceStep:
    """One step of the customer's reasoning, for tests and debugging."""

    act: str | None
    role: str
    addressed: bool
    strikes: int
    said: Utterance | None  # None: hung up


@dataclass
class SimulatedCustomer:
    """Reacts to bot replies; :meth:`respond` returns what it says, or None when it hangs up."""

    population: Population
    seed: int
    index: int
    persona_name: str = field(init=False)
    persona: Persona = field(init=False)
    slots: dict[str, str] = field(init=False)
    agenda: list[str] = field(init=False)
    will_buy: bool = field(init=False)
    cooperates: bool = field(init=False)
    greeting_answer: str = field(init=False)
    strikes: int = field(init=False, default=0)
    turns: int = field(init=False, default=0)
    trace: list[TraceStep] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.seed < 0 or self.index < 0:
            raise ValueError("seed and index must be non-negative")
        self._rng = np.random.default_rng([self.seed, self.index])
        latent = self._rng.random(LATENT_DRAWS)
        names = list(self.population.personas)
        weights = np.array([self.population.personas[n].weight for n in names])
        cumulative = np.cumsum(weights) / weights.sum()
        chosen = min(int(np.searchsorted(cumulative, latent[0], side="right")), len(names) - 1)
        self.persona_name = names[chosen]
        self.persona = persona = self.population.personas[self.persona_name]
        self.will_buy = bool(latent[1] < persona.interest)
        self.cooperates = bool(latent[2] < persona.identity_cooperation)
        intents = self.population.intents
        if latent[3] < persona.wrong_person:
            self.greeting_answer = intents.wrong_person
        elif latent[3] < persona.wrong_person + persona.busy:
            self.greeting_answer = intents.busy
        else:
            self.greeting_answer = intents.confirm_identity
        self._asks_robot = bool(latent[4] < persona.bot_aversion)
        raised = self._rng.random(len(persona.objections))
        self.agenda = [
            m for m, u in zip(persona.objections, raised, strict=True) if u < persona.objections[m]
        ]
        bank = self.population.bank
        slot_names = sorted(bank.slots)
        picks = self._rng.random(len(slot_names))
        self.slots = {
            name: bank.slots[name][int(u * len(bank.slots[name]))]
            for name, u in zip(slot_names, picks, strict=True)
        }
        self._last: _Said | None = None
        self._question = "greet"  # the last real question the bot asked
        self._heard_bot = False
        self._recent: dict[str, str] = {}

    # -- the one public decision ------------------------------------------------------------

    def respond(self, act: str | None) -> Utterance | None:
        """What the customer says after a reply with this act, or None to hang up."""
        u = self._rng.random(DRAWS_PER_TURN)
        self.turns += 1
        role = self.population.act_roles.get(act, "repair") if act else "repair"
        if role == "goodbye":  # the bot said goodbye but the call is still open: say bye back
            return self._note(
                act,
                role,
                True,
                self._say("goodbye", "goodbye", self.population.intents.goodbye, u[5]),
            )
        addressed = self._addressed(act, role)
        if not addressed:
            self.strikes += 1
        elif self._last is not None and self._last.kind == "agenda" and self.agenda:
            self.agenda.pop(0)
        persona = self.persona
        if role == "faq" and not self._heard_bot:
            self._heard_bot = True
            if u[1] < persona.bot_aversion:
                return self._note(act, role, addressed, None)
        if not addressed and u[0] < 1 - persona.patience**self.strikes:
            return self._note(act, role, addressed, None)
        if self.turns > self.population.max_turns:
            return self._note(act, role, addressed, None)
        if role in QUESTION_ROLES:
            self._question = role
        said = self._interjection(u) or self._intended(addressed, u[5])
        return self._note(act, role, addressed, said)

    # -- judging ------------------------------------------------------------------------------

    def _addressed(self, act: str | None, role: str) -> bool:
        last = self._last
        if last is None:
            return True  # the opening line answers nothing
        if last.kind == "agenda":
            return act in self.population.moves[last.key].answered_by
        if last.kind == "robot":
            return role == "faq"
        if last.kind == "off_topic":
            return role == "repair"
        if last.kind == "noise":
            return role in ("repair", "reprompt")
        # an answer: the bot must move on, not ask the same thing again (an offer may be re-asked)
        return role in QUESTION_ROLES and not (role == last.key and role != "sell")

    # -- choosing what to say --------------------------------------------------------------------

    def _interjection(self, u: np.ndarray) -> _Said | None:
        intents, persona = self.population.intents, self.persona
        if self._asks_robot:
            self._asks_robot = False
            return self._say("robot", "robot", intents.ask_if_robot, u[5])
        if u[2] < persona.off_topic:
            return self._say("off_topic", "off_topic", intents.off_topic, u[5])
        if u[3] < persona.noise:
            return self._say("noise", "noise", NOISE, u[5])
        return None

    def _intended(self, addressed: bool, u: float) -> _Said:
        last = self._last
        if last is not None and not addressed and last.kind in ("answer", "agenda", "robot"):
            return self._say(last.kind, last.key, last.utterance.intent, u)  # say it again
        return self._answer(self._question, u)

    def _answer(self, question: str, u: float) -> _Said:
        intents = self.population.intents
        if self.greeting_answer != intents.confirm_identity:
            return self._say("answer", question, self.greeting_answer, u)  # busy / wrong person
        if question == "greet":
            return self._say("answer", question, intents.confirm_identity, u)
        if question == "verify":
            intent = intents.provide_identity if self.cooperates else intents.refuse_identity
            return self._say("answer", question, intent, u)
        if question == "ask_need":
            return self._say("answer", question, intents.describe_needs, u)
        if self.agenda:
            move = self.agenda[0]
            return self._say("agenda", move, self.population.moves[move].intent, u)
        intent = intents.accept if self.will_buy else intents.decline
        return self._say("answer", question, intent, u)

    def _say(self, kind: str, key: str, intent: str, u: float) -> _Said:
        """Pick the surface text: uniform from the bank, never the same text twice in a row."""
        texts = self.population.bank.texts(intent)
        i = min(int(u * len(texts)), len(texts) - 1)
        if len(texts) > 1 and texts[i] == self._recent.get(intent):
            i = (i + 1) % len(texts)
        self._recent[intent] = texts[i]
        return _Said(kind, key, Utterance(intent, texts[i]))

    def _note(
        self, act: str | None, role: str, addressed: bool, said: _Said | None
    ) -> Utterance | None:
        self.trace.append(
            TraceStep(act, role, addressed, self.strikes, said.utterance if said else None)
        )
        if said is None:
            return None
        self._last = said
        return said.utterance
