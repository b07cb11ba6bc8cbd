"""The pure_llm arm's turn: one playbook prompt, one filter over the whole approved library.

No state machine chooses the goal or the next stage: every bot turn after the opening line is an
LLM draft from :func:`engine.llm.prompt.build_playbook_messages`, mapped by the compliance filter
to the nearest approved script the call may hear now (engine/effects.py: preconditions hold, a
once-only script not said yet), with the flow's ``compliance.pure_llm`` threshold and fallback
pool. Where the call is, and how it ends, is the ruler's view (engine/milestones.py): a script
with an ``ends`` effect ends it, and the customer accepting at the closing question converts it
(the bot then says the converted end stage's line, as the hybrid arm does).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from engine.compliance import ComplianceFilter, ComplianceResult
from engine.compliance.filter import Match
from engine.drafting import sent
from engine.flow.model import CompliancePolicy, Flow
from engine.llm import BackendError, LLMBackend
from engine.llm.prompt import build_playbook_messages
from engine.milestones import Finding, Progress, Ruler
from engine.policy import Decision, ReplyPlan

STAGE_KEY = "pure_llm"  # the audit rows' stage and the fallback draw's key


def decide_pure(ruler: Ruler, progress: Progress, outcome: str | None) -> Decision:
    """The pure arm's "decision": an LLM draft, unless a milestone just ended the call."""
    if outcome is not None:
        end = ruler.outcome_stages[outcome][0]
        plan = ReplyPlan("script", end, ruler.closing_script(outcome))
        return Decision(end, 0, plan, (), "milestone", outcome)
    stage = progress.stage or ruler.flow.start
    return Decision(stage, 0, ReplyPlan("llm", stage), (), "playbook", None)


def pure_reply(
    flow: Flow,
    backend: LLMBackend,
    compliance: ComplianceFilter,
    ruler: Ruler,
    progress: Progress,
    *,
    history: tuple[tuple[str | None, str], ...],
    earlier: int,
    slots: Mapping[str, str],
    text: str | None,
    session_id: str,
    seed: int,
    latencies: dict[str, float],
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[str | None, ComplianceResult, str | None, tuple[Finding, ...]]:
    """(raw draft, what the customer hears, backend error, attempted process-order findings)."""
    policy = flow.pure_llm
    assert policy is not None
    messages = build_playbook_messages(flow, history, slots, text, earlier)
    allowed = tuple(ruler.available(progress, policy.candidates))  # what the call may hear now
    extra = {}
    if policy.decoding == "constrained" and backend.can_constrain:
        # As in the hybrid LLM stages: the draft is one of the scripts the call may hear now.
        choices = compliance.candidate_texts(replace(policy, candidates=allowed), slots)
        extra = {"choices": choices} if choices else {}
    before = clock()
    try:
        generation = backend.generate(
            messages, flow.default_generation, seed=seed, session_key=session_id, **extra
        )
    except BackendError as exc:
        latencies["generate_ms"] = (clock() - before) * 1000
        result = compliance.fallback(STAGE_KEY, policy, session_id, slots)
        sent(backend, messages, result.text, session_id)
        return None, result, str(exc), ()
    latencies["generate_ms"] = (clock() - before) * 1000
    before = clock()
    match, nearest = match_library(compliance, generation.text, policy, slots, allowed)
    result = compliance.decide(match, STAGE_KEY, policy, session_id, slots)
    latencies["compliance_ms"] = (clock() - before) * 1000
    sent(backend, messages, result.text, session_id)
    return generation.text, result, None, ruler.attempted(progress, nearest)


def match_library(
    compliance: ComplianceFilter,
    raw: str,
    policy: CompliancePolicy,
    slots: Mapping[str, str],
    allowed: Sequence[str],
) -> tuple[Match, str | None]:
    """The draft's match among ``allowed`` (the scripts the call may hear now), and its nearest
    script over the whole library (preconditions ignored) when that one passes the threshold:
    one embedding."""
    match = compliance.match(raw, policy, slots, allowed=set(allowed))
    best = match.nearest
    aimed = best is not None and best[1] >= policy.threshold and not match.rule_hits
    return match, best[0] if aimed else None
