"""The pure decision of one turn: given where the conversation is and what the caller meant,
where does it go and what kind of reply does it need? No I/O here, so it is trivially testable
and the same for every arm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.flow.model import Flow, Stage

Arm = Literal["hybrid", "pure_llm"]


@dataclass(frozen=True)
class ReplyPlan:
    kind: Literal["script", "llm"]
    stage: str  # the stage whose goal / compliance policy applies
    script_id: str | None = None


@dataclass(frozen=True)
class Decision:
    stage: str  # stage after the turn
    stage_turns: int  # unmatched turns spent in that stage so far
    reply: ReplyPlan
    entered: tuple[str, ...]  # stages entered by this turn (stage-reached events)
    reason: str  # transition | global | answer | otherwise | otherwise_exhausted
    outcome: str | None  # set when the turn ends the conversation


def entry(flow: Flow, target: str, say: str | None, arm: Arm, reason: str) -> Decision:
    """Enter ``target``: its entry reply, or the transition's own ``say``."""
    stage = flow.stages[target]
    if stage.is_end:
        plan = ReplyPlan("script", target, say or stage.say)
    elif arm == "pure_llm" or (stage.kind == "llm" and not say):
        plan = ReplyPlan("llm", target)
    else:
        plan = ReplyPlan("script", target, say or stage.say)
    return Decision(target, 0, plan, (target,), reason, stage.outcome if stage.is_end else None)


def decide(flow: Flow, stage_name: str, stage_turns: int, intent: str, arm: Arm) -> Decision:
    stage: Stage = flow.stages[stage_name]
    own = stage.on.get(intent)
    transition = own or flow.transition_for(stage, intent)
    if transition is not None:
        reason = "transition" if own else "global"
        if transition.to is not None:
            return entry(flow, transition.to, transition.say, arm, reason)
        # An answer without leaving the stage (e.g. "are you a robot?").
        if arm == "pure_llm":
            plan = ReplyPlan("llm", stage_name)
        else:
            plan = ReplyPlan("script", stage_name, transition.say)
        return Decision(stage_name, stage_turns, plan, (), "answer", None)

    otherwise = stage.otherwise
    turns = stage_turns + 1
    if otherwise is not None and turns > otherwise.max:
        return entry(flow, otherwise.then, None, arm, "otherwise_exhausted")
    if stage.kind == "llm" or arm == "pure_llm":
        plan = ReplyPlan("llm", stage_name)
    else:
        plan = ReplyPlan("script", stage_name, (otherwise.say if otherwise else None) or stage.say)
    return Decision(stage_name, turns, plan, (), "otherwise", None)
