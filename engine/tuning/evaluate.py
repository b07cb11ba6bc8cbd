"""Held-out evaluation of the LLM stage: does a draft become an approved script that answers?

The contexts are the turns at which the engine asks the LLM for a reply, built exactly as the
engine builds them (:func:`engine.llm.prompt.build_messages` over a call history), with the
customer's line taken from ``utterances.yaml``: the simulation's held-out bank, never
``intents.yaml`` (which trains the classifier and, through ``salesbot tune``, the adapters).

Where a context comes from:

- **the turn**: the engine's own policy (:func:`engine.policy.decide`) walked from the start
  stage over the intents the simulated customer can say (personas.yaml), breadth first: a line
  that moves the call into an LLM stage ("entered", e.g. the usage answer to the needs
  question) or is said inside it ("in stage", e.g. "how much is it?" after a pitch). Each
  (stage, intent, entered) is kept once, with the shortest history that reaches it.
- **the history**: that path's exchanges (the flow's scripted happy path: greeting, identity,
  needs question), with the customer's line of each step from the bank (its first line) and,
  for an earlier LLM turn, the first approved script of that stage whose act answers it.
- **the right acts** for the customer's line: the flow's own rule of what answers a customer,
  personas.yaml's ``moves`` (intent -> ``answered_by``). An intent without a move (the usage
  answer, "not interested") is answered by the stage's ``pitch`` act: presenting the offer is
  what the stage is for. Only what a customer says once the offer is on the table is asked
  (:func:`llm_stage_intents`): greeting and identity answers are left out.
- **slots**: the flow's defaults, the customer's name from the bank's ``slots`` (in turn).

Each context is drafted by a backend (free or restricted to the candidate scripts, greedy or
sampled with the stage's parameters and a fixed seed per context), the draft goes through the
real compliance filter, and the outcome records: approved (not a fallback), approved with an
act that answers the customer, hard-rule hits, fallback, and the decision latency (generation +
filter).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field

from engine.compliance.filter import ComplianceFilter
from engine.errors import FlowValidationError
from engine.flow.generation import GenerationParams
from engine.flow.model import Flow
from engine.flow.problems import Problems
from engine.flow.schema import Name, _Strict
from engine.llm.base import BackendError, BatchItem, ChatMessage, Generation
from engine.llm.prompt import build_messages
from engine.policy import decide, entry
from engine.tuning.data import llm_stage_intents

DEFAULT_ACT = "pitch"  # the act that answers an intent without a move (see the module doc)
DECODINGS = ("free", "constrained")


@dataclass(frozen=True)
class EvalContext:
    """One held-out LLM turn: the prompt the engine would send and what would answer it."""

    stage: str
    intent: str
    customer: str
    entered: bool  # the line moved the call into ``stage`` (else it was said inside it)
    history: tuple[tuple[str | None, str], ...]
    slots: Mapping[str, str]
    messages: tuple[ChatMessage, ...]
    right_acts: tuple[str, ...]
    reading: str | None = None  # the classifier's reading of ``customer`` (None: not sure)


@dataclass(frozen=True)
class Outcome:
    """What happened to one context under one decoding setting."""

    context: EvalContext
    decoding: str  # free | constrained
    sampled: bool
    draft: str
    decision: str  # approved | pass | fallback | universal
    script_id: str | None
    act: str | None
    rule_hits: int
    completion_tokens: int
    latency_s: float  # generation + compliance filter
    error: str | None = None  # the backend failed (the engine would send the fallback)
    model: str = ""  # which model drafted, when several are compared ("base", "tuned")
    score: float | None = None  # similarity to the nearest eligible script (free drafts)
    nearest_act: str | None = None  # that script's act, approved or not (threshold sweeps)

    @property
    def approved(self) -> bool:
        return self.decision in ("approved", "pass")

    @property
    def right(self) -> bool:
        return self.approved and self.act in self.context.right_acts

    @property
    def fallback(self) -> bool:
        return not self.approved


def right_acts(flow: Flow, moves: Mapping[str, Sequence[str]], stage: str, intent: str) -> tuple:
    """Acts of ``stage``'s candidates that answer ``intent``: the move's ``answered_by``, else
    the stage's ``pitch`` act; empty when no candidate of the stage has one of them."""
    acts = tuple(moves.get(intent) or (DEFAULT_ACT,))
    policy = flow.stages[stage].compliance
    present = {flow.scripts[c].act for c in (policy.candidates if policy else ())}
    return tuple(a for a in acts if a in present)


def move_acts(population) -> dict[str, tuple[str, ...]]:
    """intent -> acts that answer it, from personas.yaml's moves."""
    acts: dict[str, list[str]] = {}
    for move in population.moves.values():
        acts.setdefault(move.intent, []).extend(move.answered_by)
    return {intent: tuple(dict.fromkeys(a)) for intent, a in acts.items()}


def _turns(flow: Flow, said: Sequence[str], llm_turns: int = 1):
    """(stage, intent, entered, path) for every LLM turn the policy reaches, shortest path first;
    a path is the (intent or None, stage, script id or None) steps said before that turn."""
    start = entry(flow, flow.start, None, "hybrid", "start")
    first = (None, flow.start, start.reply.script_id)
    queue = deque([(flow.start, (first,), 0)])
    seen_states = {(flow.start, 0)}
    seen_turns: set[tuple[str, str, bool]] = set()
    while queue:
        at, path, llm_count = queue.popleft()
        for intent in said:
            decision = decide(flow, at, 0, intent, "hybrid")
            target = flow.stages[decision.stage]
            if decision.reply.kind == "llm":
                key = (decision.reply.stage, intent, at != decision.reply.stage)
                if key not in seen_turns:
                    seen_turns.add(key)
                    yield (*key, path)
                state = (decision.stage, llm_count + 1)
                if llm_count < llm_turns and not target.is_end and state not in seen_states:
                    seen_states.add(state)
                    step = (intent, decision.reply.stage, None)
                    queue.append((decision.stage, (*path, step), llm_count + 1))
            elif not target.is_end and (decision.stage, llm_count) not in seen_states:
                seen_states.add((decision.stage, llm_count))
                step = (intent, decision.reply.stage, decision.reply.script_id)
                queue.append((decision.stage, (*path, step), llm_count))


def held_out_contexts(
    flow: Flow,
    population=None,
    *,
    stages: Sequence[str] | None = None,
    limit: int | None = None,
    lines: Mapping[str, Sequence[str]] | None = None,
    read: Callable[[str], str | None] | None = None,
) -> list[EvalContext]:
    """Every LLM turn of ``flow`` x every held-out line of its intent (see the module doc).

    ``lines``: intent -> the customer's line at the LLM turn, instead of the bank's (the call
    before it is still told in bank lines): lines written outside the project, or the training
    lines, to tell generalisation from fitting.

    ``limit`` keeps an even spread: every k-th context of the full list, so each stage and
    intent stays represented in proportion.

    ``read``: line -> the intent classifier's reading, handed to the prompt as the engine hands
    it over; the flow's own classifier by default (:func:`classifier_reading`). Its mistakes
    stay in: the right acts are those of the line's true intent.
    """
    if population is None:
        from engine.simulation.personas import load_population

        population = load_population(flow)
    moves = move_acts(population)
    bank = population.bank.intents
    said = sorted(population.said_intents() & set(bank))
    asked = llm_stage_intents(population)
    names = list(getattr(population.bank, "slots", {}).get("customer_name", ())) or ["Alex"]
    read = classifier_reading(flow) if read is None else read
    found: list[EvalContext] = []
    for stage, intent, entered, path in _turns(flow, said):
        if intent not in asked or (stages is not None and stage not in stages):
            continue
        acts = right_acts(flow, moves, stage, intent)
        said_now = bank.get(intent) if lines is None else lines.get(intent)
        if not acts or not said_now:
            continue
        for line in said_now:
            slots = {k: v for k, v in flow.slot_defaults.items() if v is not None}
            if "customer_name" in flow.slot_defaults:
                slots["customer_name"] = names[len(found) % len(names)]
            history = _history(flow, path, bank, moves, slots)
            if history is None:
                continue
            reading = read(line)
            messages = build_messages(
                flow, flow.stages[stage], history, slots, line, intent=reading
            )
            found.append(
                EvalContext(
                    stage,
                    intent,
                    line,
                    entered,
                    tuple(history),
                    slots,
                    tuple(messages),
                    acts,
                    reading,
                )
            )
    if limit is not None and 0 < limit < len(found):
        step = len(found) / limit
        found = [found[int(i * step)] for i in range(limit)]
    return found


def classifier_reading(flow: Flow) -> Callable[[str], str | None]:
    """The engine's reading of a customer line: the flow's classifier, None when not sure."""
    from engine.engine import confident_intent
    from engine.flow.classifier import flow_classifier

    classifier = flow_classifier(flow)
    return lambda line: confident_intent(classifier.predict_one(line))


class LinesFile(_Strict):
    """Customer lines per intent, in utterances.yaml's shape (``intents:`` only)."""

    intents: dict[Name, Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]]


def read_lines(flow: Flow, path: str | Path) -> dict[str, tuple[str, ...]]:
    """The ``lines`` of :func:`held_out_contexts` from a YAML file; every problem (missing file,
    bad shape, an intent the flow does not have) is raised at once with its file and line."""
    path = Path(path)
    problems = Problems(path.parent)
    parsed = problems.read(path.name, LinesFile)
    located = problems.located.get(path.name)
    raw = located.data.get("intents") if located and isinstance(located.data, dict) else None
    if isinstance(raw, dict):  # also when another field is bad: every problem at once
        for intent in raw:
            if intent not in flow.intents:
                message = f"intent {intent!r} is not in intents.yaml"
                problems.add(path.name, ("intents", intent), message)
    if problems.items or parsed is None:
        raise FlowValidationError(problems.items)
    return {intent: tuple(lines) for intent, lines in parsed.intents.items()}


def _history(flow, path, bank, moves, slots) -> list[tuple[str | None, str]] | None:
    history: list[tuple[str | None, str]] = []
    for intent, stage, script_id in path:
        customer = None
        if intent is not None:
            if not bank.get(intent):
                return None
            customer = bank[intent][0]
        if script_id is None:  # an earlier LLM turn: the first script that answers it
            acts = right_acts(flow, moves, stage, intent or "")
            policy = flow.stages[stage].compliance
            answering = sorted(c for c in policy.candidates if flow.scripts[c].act in acts)
            if not answering:
                return None
            script_id = answering[0]
        history.append((customer, flow.render(script_id, dict(slots))))
    return history


def evaluate(
    flow: Flow,
    backend,
    compliance: ComplianceFilter,
    contexts: Sequence[EvalContext],
    *,
    decoding: str = "free",
    sampled: bool = False,
    seed: int = 0,
    batch: int = 1,
    deadline_s: float | None = None,
    progress=None,
) -> list[Outcome]:
    """Draft every context and judge the draft with the real compliance filter.

    ``sampled``: the stage's generation parameters with seed ``seed + i`` for context ``i``;
    else the same parameters with greedy decoding. ``batch`` > 1 drafts that many contexts in
    one ``generate_batch`` call (throughput; the latency is then the batch's wall time).
    ``deadline_s`` replaces the stages' deadline: on a loaded machine the flow's 8 s would cut
    drafts short, and this measures what the model drafts, not the machine's load.
    """
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {', '.join(DECODINGS)}, not {decoding!r}")
    outcomes: list[Outcome] = []
    for at in range(0, len(contexts), max(1, batch)):
        chunk = list(contexts[at : at + max(1, batch)])
        items = []
        for offset, context in enumerate(chunk):
            params = flow.stages[context.stage].generation or GenerationParams()
            update = {} if sampled else {"do_sample": False}
            if deadline_s is not None:
                update["deadline_s"] = deadline_s
            params = params.model_copy(update=update)
            policy = flow.stages[context.stage].compliance
            choices = (
                compliance.candidate_texts(policy, context.slots)
                if decoding == "constrained"
                else None
            )
            key = f"eval:{context.stage}:{int(context.entered)}"
            items.append(
                BatchItem(context.messages, params, seed + at + offset, key, choices=choices)
            )
        started = time.perf_counter()
        generations = _generate(backend, items)
        gen_s = time.perf_counter() - started
        for offset, (context, generation) in enumerate(zip(chunk, generations, strict=True)):
            outcome = _judge(flow, compliance, context, generation, f"eval-{at + offset}")
            outcome = dataclasses.replace(
                outcome,
                decoding=decoding,
                sampled=sampled,
                latency_s=outcome.latency_s + gen_s,
            )
            outcomes.append(outcome)
            if progress is not None:
                progress(outcome)
    return outcomes


def _generate(backend, items: list[BatchItem]) -> list[Generation | BackendError]:
    """One result per item; a failed item is its error (the engine would send a fallback)."""
    if len(items) > 1 and hasattr(backend, "generate_batch"):
        try:
            return list(backend.generate_batch(items))
        except BackendError as exc:
            return [exc] * len(items)
    results: list[Generation | BackendError] = []
    for item in items:
        extra = {} if item.choices is None else {"choices": item.choices}
        try:
            results.append(
                backend.generate(
                    list(item.messages), item.params, item.seed, item.session_key, **extra
                )
            )
        except BackendError as exc:
            results.append(exc)
    return results


def _judge(flow, compliance, context, generation, session_key) -> Outcome:
    policy = flow.stages[context.stage].compliance
    error = generation if isinstance(generation, BackendError) else None
    text = "" if error else generation.text
    started = time.perf_counter()
    result = compliance.check(text, context.stage, policy, session_key, context.slots)
    filter_s = time.perf_counter() - started
    approved = result.decision in ("approved", "pass")
    return Outcome(
        context=context,
        decoding="",
        sampled=False,
        draft=text,
        decision=result.decision,
        script_id=result.script_id,
        act=flow.scripts[result.script_id].act if approved and result.script_id else None,
        rule_hits=len(result.rule_hits),
        completion_tokens=0 if error else generation.completion_tokens,
        latency_s=filter_s,
        error=str(error) if error else None,
        score=result.score,
        nearest_act=flow.scripts[result.top_k[0][0]].act if result.top_k else None,
    )


def threshold_sweep(
    outcomes: Sequence[Outcome], thresholds: Sequence[float]
) -> list[tuple[float, float, float]]:
    """(threshold, right act, wrong act sent) shares of free drafts, had the stages used that
    threshold: a draft without a hard-rule hit is sent as its nearest script when its
    similarity reaches the threshold (the margin rule left as configured elsewhere: ignored
    here). Recalibrating free decoding on a tuned model's own drafts is choosing a row."""
    rows = []
    for threshold in thresholds:
        sent = [
            o for o in outcomes
            if o.rule_hits == 0 and o.score is not None and o.score >= threshold
        ]  # fmt: skip
        right = sum(o.nearest_act in o.context.right_acts for o in sent)
        n = max(1, len(outcomes))
        rows.append((threshold, right / n, (len(sent) - right) / n))
    return rows


@dataclass(frozen=True)
class Summary:
    """The figures of one group of outcomes (a stage, or all of a setting)."""

    setting: str  # e.g. "free greedy"
    stage: str  # a stage name or "all"
    n: int
    approved: float  # shares in [0, 1]
    right: float
    rule_hits: int  # drafts with at least one hard-rule hit
    fallback: float
    latency_p50_s: float
    tokens_mean: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def setting_name(decoding: str, sampled: bool, model: str = "") -> str:
    name = f"{decoding} {'sampled' if sampled else 'greedy'}"
    return f"{model} {name}" if model else name


def summarise(outcomes: Sequence[Outcome]) -> list[Summary]:
    """Per setting: one row per stage, then one for all stages."""
    rows: list[Summary] = []
    settings = dict.fromkeys((o.model, o.decoding, o.sampled) for o in outcomes)
    for model, decoding, sampled in settings:
        mine = [
            o for o in outcomes if (o.model, o.decoding, o.sampled) == (model, decoding, sampled)
        ]
        stages = list(dict.fromkeys(o.context.stage for o in mine))
        for stage in [*stages, "all"]:
            group = [o for o in mine if stage == "all" or o.context.stage == stage]
            n = len(group)
            rows.append(
                Summary(
                    setting=setting_name(decoding, sampled, model),
                    stage=stage,
                    n=n,
                    approved=sum(o.approved for o in group) / n,
                    right=sum(o.right for o in group) / n,
                    rule_hits=sum(o.rule_hits > 0 for o in group),
                    fallback=sum(o.fallback for o in group) / n,
                    latency_p50_s=statistics.median(o.latency_s for o in group),
                    tokens_mean=statistics.fmean(o.completion_tokens for o in group),
                )
            )
    return rows
