"""One ruler for both arms: the funnel stages a call reached, computed from what was said.

The ruler is defined once from the flow and runs, the same code, in both arms during the call.
Its stage events are the ones stored; in the hybrid arm they agree with the state machine (a
test checks it on simulated calls), in the pure_llm arm they are the only source.

What moves the call (:meth:`Ruler.lands_on`), given the stage the call is at and the script the
bot just sent:

1. a script with an ``ends`` effect: the end stage with that outcome (the call is over);
2. a script that is the entry line of another stage (its ``say``, or the ``say`` of a transition
   into it, e.g. ``identity.thanks`` for ``needs``): that stage;
3. a script of the current stage (or of every stage, ``"*"``: an FAQ answer, a repair): no move;
4. otherwise: the script's own stage (the first of its stages after the current one in the
   flow's order, else its first).

What the customer says sets milestone flags (flow.yaml ``milestones``): one of the listed intents
while the call is at the listed stage, e.g. identity passed = the customer gave identity details
while the bot was asking for them. A milestone with ``ends`` ends the call: ``accepted`` (the
customer says yes at the closing question) converts it.

Process-order findings: a script sent whose ``requires`` flags did not hold (an offer before the
security check passed, a close before any offer), and, for LLM drafts, a draft whose nearest
approved script over the whole library had such a precondition: the filter did not let it out,
but the LLM tried (``sent: false``). Both are stored on the turn (``turns.findings``) and counted
per arm in the report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine import effects
from engine.flow.model import Flow

PROCESS_ORDER = "process_order"


@dataclass(frozen=True)
class Finding:
    """A process-order violation: ``script`` said (or drafted) before ``missing`` held."""

    script_id: str
    missing: tuple[str, ...]
    sent: bool  # False: an LLM draft that the filter kept from the customer
    stage: str | None  # where the call was
    rule: str = PROCESS_ORDER

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "script_id": self.script_id,
            "missing": list(self.missing),
            "sent": self.sent,
            "stage": self.stage,
        }


@dataclass(frozen=True)
class Progress:
    """The ruler's state of one call, stored as JSON on the conversation (``progress``)."""

    stage: str | None = None  # the stage the call is at, by what was said
    flags: frozenset[str] = frozenset()
    said: frozenset[str] = frozenset()  # scripts said so far

    def as_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "flags": sorted(self.flags), "said": sorted(self.said)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Progress:
        data = data or {}
        return cls(
            data.get("stage"), frozenset(data.get("flags", ())), frozenset(data.get("said", ()))
        )


@dataclass(frozen=True)
class Step:
    """What one bot reply did, by the ruler."""

    progress: Progress
    entered: tuple[str, ...]  # stage events
    outcome: str | None  # the call ends with this outcome
    findings: tuple[Finding, ...] = field(default=())


class Ruler:
    """See the module docstring. Built once per flow; holds no per-call state."""

    def __init__(self, flow: Flow):
        self.flow = flow
        self.order = {name: i for i, name in enumerate(flow.stages)}
        entries: dict[str, list[str]] = {}

        def entry(script_id: str | None, stage: str | None) -> None:
            if script_id and stage and stage not in entries.setdefault(script_id, []):
                entries[script_id].append(stage)

        for stage in flow.stages.values():
            entry(stage.say, stage.name)
            for transition in stage.on.values():
                entry(transition.say, transition.to)
        for transition in flow.global_on.values():
            entry(transition.say, transition.to)
        self.entries = {k: tuple(v) for k, v in entries.items()}
        self.outcome_stages: dict[str, list[str]] = {}
        for stage in flow.stages.values():
            if stage.is_end and stage.outcome:
                self.outcome_stages.setdefault(stage.outcome, []).append(stage.name)

    # -- the customer's words ----------------------------------------------------------------

    def hear(self, progress: Progress, intent: str | None) -> tuple[Progress, str | None]:
        """Set the milestones the customer's ``intent`` reaches; the outcome one of them ends the
        call with (e.g. converted), else None."""
        outcome = None
        flags = set(progress.flags)
        for milestone in self.flow.milestones:
            if milestone.stage == progress.stage and intent in milestone.intents:
                flags.add(milestone.name)
                outcome = outcome or milestone.ends
        return Progress(progress.stage, frozenset(flags), progress.said), outcome

    def closing_script(self, outcome: str) -> str:
        """What the bot says when a milestone ends the call: the end stage's ``say``."""
        stage = self.flow.stages[self.outcome_stages[outcome][0]]
        assert stage.say is not None
        return stage.say

    # -- the bot's words -----------------------------------------------------------------------

    def lands_on(self, current: str | None, script_id: str) -> str:
        """The stage the call is at after the bot sends ``script_id`` at ``current``."""
        script = self.flow.scripts[script_id]
        if script.ends is not None:
            stages = self.outcome_stages[script.ends]
            return next((s for s in stages if s in script.stages), stages[0])
        entries = [s for s in self.entries.get(script_id, ()) if s != current]
        if entries and current not in self.entries.get(script_id, ()):
            return self._first_after(current, entries)
        if current is not None and (current in script.stages or "*" in script.stages):
            return current
        own = [s for s in script.stages if s in self.order]
        if not own:
            return current or self.flow.start
        return self._first_after(current, own)

    def _first_after(self, current: str | None, stages: Iterable[str]) -> str:
        ranked = sorted(stages, key=self.order.__getitem__)
        here = self.order.get(current, -1) if current is not None else -1
        return next((s for s in ranked if self.order[s] > here), ranked[0])

    def said(self, progress: Progress, script_id: str) -> Step:
        """Apply a sent script: findings, effects (flags, ends), and the stage it moves to."""
        script = self.flow.scripts[script_id]
        lacking = effects.missing(script, progress.flags)
        findings = (Finding(script_id, lacking, True, progress.stage),) if lacking else ()
        flags, said = effects.apply(script, progress.flags, progress.said)
        target = self.lands_on(progress.stage, script_id)
        entered = (target,) if target != progress.stage else ()
        stage = self.flow.stages[target]
        outcome = script.ends or (stage.outcome if stage.is_end else None)
        return Step(Progress(target, flags, said), entered, outcome, findings)

    def attempted(self, progress: Progress, script_id: str | None) -> tuple[Finding, ...]:
        """A finding when an LLM draft's nearest script (over the whole library, preconditions
        ignored) could not be said yet: the LLM tried to skip a step."""
        if script_id is None:
            return ()
        lacking = effects.missing(self.flow.scripts[script_id], progress.flags)
        return (Finding(script_id, lacking, False, progress.stage),) if lacking else ()

    def available(self, progress: Progress, candidates: Iterable[str]) -> tuple[str, ...]:
        """``candidates`` whose preconditions hold now (engine/effects.py)."""
        return effects.available(self.flow, tuple(candidates), progress.flags, progress.said)
