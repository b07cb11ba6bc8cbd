"""Training examples for the LLM stage, built from the flow itself: no hand-labelling.

An example is what the engine would send the model at one LLM turn (the prompt, built by the
same :func:`engine.llm.prompt.build_messages` the engine serves with, so training and serving
cannot drift) and the reply it should have drafted: the rendered text of an approved script of
that stage whose act answers what the customer just said.

Where the pieces come from:

- **call histories**: the engine's own policy (:func:`engine.policy.decide`) walked from the
  start stage: each scripted turn of the way there (greeting.open, identity.ask, ...) with a
  customer line of the intent that moves the call on, and up to ``llm_turns`` earlier LLM
  exchanges in the LLM stages;
- **customer lines**: ``intents.yaml`` (the classifier's training examples). Never
  ``utterances.yaml``: that is the simulation's held-out bank, the evaluation set
  (:func:`bank_lines` reads it for evaluation only);
- **the classifier's reading** (hybrid prompts): the line's intent, told to the model as the
  engine tells it what the intent classifier read; left out of 1 example in ``UNREAD_SHARE``,
  as the engine leaves it out when the classifier is not sure;
- **which acts answer a line**: personas.yaml's ``moves`` (intent -> ``answered_by``), plus
  flow.yaml's optional ``tuning.answers``; a line no mapping covers is answered by the stage's
  ``tuning.default_acts``, else it yields no example and is listed in ``uncovered``;
- **which script answers it**: of the stage's scripts with such an act, the one nearest to the
  line in meaning (:func:`nearest_script`).

Everything is drawn from one seeded generator: the same flow and seed give the same examples,
and :meth:`TrainingSet.data_hash` names them in the adapter's manifest.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.flow.model import Flow, Stage
from engine.hashing import content_hash
from engine.llm.base import ChatMessage
from engine.llm.prompt import build_messages, build_playbook_messages
from engine.policy import Arm, decide, entry

DATA_SCHEME = "tuning-data:v1:"
LLM_TURNS = 2  # earlier LLM exchanges a training history may hold
NAMES = {
    "en": ("Alex", "Sam", "Jordan", "Morgan", "Chris", "Pat", "Lee", "Robin", "Jamie", "Taylor"),
    "zh": ("王伟", "李娜", "张敏", "刘洋", "陈静", "杨磊", "赵军", "黄丽"),
}
# Hybrid examples without the classifier's reading: serving has none when the classifier is not
# sure (1-2% of the held-out LLM-stage lines), and the reply must still follow the words then.
UNREAD_SHARE = 8
# nearest_script: the intent's mean line weighs this much against the line itself
INTENT_WEIGHT = 2.0
# (intent, customer line, ids of the scripts that answer it) -> the one to teach
# (:func:`nearest_script`)
ScriptChooser = Callable[[str, str, Sequence[str]], str]
# A prompt builder with the engine's build_messages signature (flow, stage, history, slots,
# customer text, intent=...); :func:`playbook_messages` is the pure-LLM arm's.
MessagesFn = Callable[..., list[ChatMessage]]


def playbook_messages(
    flow: Flow,
    stage: Stage,
    history: Sequence[tuple[str | None, str]],
    slots,
    customer,
    intent: str | None = None,
) -> list[ChatMessage]:
    """The pure-LLM arm's prompt for a training context: the playbook names no stage, and the
    pure arm is not told the classifier's reading (it has no classifier in its loop)."""
    return build_playbook_messages(flow, history, slots, customer)


@dataclass(frozen=True)
class Step:
    """One earlier exchange of a history: what the customer meant and how the bot answered."""

    intent: str | None  # None: the bot spoke first
    stage: str  # the stage whose reply it was
    script_id: str | None  # a scripted reply; None: an LLM reply (an answering script is drawn)


@dataclass(frozen=True)
class Context:
    """An LLM turn the policy can reach: after ``history``, a line of ``intent`` said in
    ``at`` gets an LLM reply drafted for stage ``stage``."""

    history: tuple[Step, ...]
    at: str
    intent: str
    stage: str
    script_id: str | None = None  # pure-LLM arm: the script the hybrid arm would send


@dataclass(frozen=True)
class Example:
    stage: str
    intent: str
    customer: str
    messages: tuple[ChatMessage, ...]
    reply: str
    script_id: str
    act: str


@dataclass(frozen=True)
class TrainingSet:
    examples: tuple[Example, ...]
    uncovered: tuple[tuple[str, str], ...]  # (stage, intent) pairs no script answers

    def data_hash(self) -> str:
        """Tagged sha256 of the (prompt, reply) pairs, in order: the manifest's data hash."""
        return content_hash(
            [[list(map(dict, e.messages)), e.reply] for e in self.examples], DATA_SCHEME
        )

    def stages(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for example in self.examples:
            counts[example.stage] = counts.get(example.stage, 0) + 1
        return counts


def answer_map(flow: Flow) -> dict[str, tuple[str, ...]]:
    """Intent -> acts that answer it: personas.yaml's moves plus flow.yaml's tuning.answers."""
    answers: dict[str, list[str]] = {}
    if (Path(flow.folder) / "personas.yaml").is_file():
        from engine.simulation.personas import load_population

        for move in load_population(flow).moves.values():
            answers.setdefault(move.intent, []).extend(move.answered_by)
    for intent, acts in flow.tuning.answers.items():
        answers.setdefault(intent, []).extend(acts)
    return {intent: tuple(dict.fromkeys(acts)) for intent, acts in answers.items()}


def bank_lines(flow: Flow) -> dict[str, tuple[str, ...]]:
    """The held-out customer lines (utterances.yaml): for evaluation, never for training."""
    from engine.simulation.personas import load_population

    return {k: tuple(v) for k, v in load_population(flow).bank.intents.items()}


def llm_stage_intents(population) -> set[str]:
    """What a simulated customer says once the offer is on the table: its moves (objections
    and questions), its answer to the needs question, and "no". Greeting and identity answers
    ("speaking", a date of birth) are left out: nobody says them in a pitch."""
    said = {move.intent for move in population.moves.values()}
    return said | {population.intents.describe_needs, population.intents.decline}


def offer_intents(flow: Flow) -> set[str] | None:
    """:func:`llm_stage_intents` of the flow's personas.yaml; None when it has none."""
    if not (Path(flow.folder) / "personas.yaml").is_file():
        return None
    from engine.simulation.personas import load_population

    return llm_stage_intents(load_population(flow))


def nearest_script(flow: Flow, lines: Mapping[str, Sequence[str]] | None = None) -> ScriptChooser:
    """Among the scripts whose act answers a line, the one nearest in meaning to the line and to
    its intent as a whole (the cosine similarity to the line plus ``INTENT_WEIGHT`` times that
    to the mean of the intent's lines, by the flow's own compliance embedder; near-ties, within
    1e-4, go to the first id).

    Why not any of them at random: an act is coarse ("inform" holds the price, the router, the
    contract and the cooling-off answers), and "how much is it?" answered by the cooling-off
    script half the time spreads the model's first-token probability over every answering
    script's first word, so under greedy decoding a script that answers nothing often wins
    (measured: 0 of 18 price and details questions in the pitch stage got an answering script).
    The line's own term lets "can I cancel if I change my mind?" get the cooling-off answer;
    the intent's term, weighted twice, keeps the answers to one intent on a few scripts, so the
    model can learn them ("how long is the contract?" gets pitch.details, which gives the term
    among the offer's facts). At weight 1, in the objection stage, 17 of the 52 contract
    objection lines were taught objection.moving_house, which starts "I understand" like the
    price answer, and 5 of 9 held-out price objections then got the contract answer (0 of 9 in
    run J at weight 2, 4 of 9 with the shipped adapter K; docs/benchmarks.md).
    ``lines`` (intent -> lines) give the intents' means and are embedded at once.
    """
    from engine.compliance import create_embedder

    embedder = create_embedder(flow.embedder)
    library = {sid: script.text for sid, script in sorted(flow.scripts.items())}
    if embedder.fits_corpus:
        embedder.fit(list(library.values()))
    texts = list(library.values())
    script_vectors = dict(zip(library, _dense(embedder.embed_batch(texts)), strict=True))
    lines = lines or {}
    said = sorted({line for group in lines.values() for line in group})
    line_vectors = dict(zip(said, _dense(embedder.embed_batch(said)), strict=True)) if said else {}
    centroids = {}
    for intent, group in lines.items():
        if group:
            mean = np.mean([line_vectors[line] for line in group], axis=0)
            centroids[intent] = mean / (np.linalg.norm(mean) or 1.0)

    def choose(intent: str, line: str, script_ids: Sequence[str]) -> str:
        if len(script_ids) == 1:
            return script_ids[0]
        if line not in line_vectors:
            line_vectors[line] = _dense(embedder.embed_batch([line]))[0]
        target = line_vectors[line] + INTENT_WEIGHT * centroids.get(intent, 0.0)
        scores = {sid: round(float(target @ script_vectors[sid]), 4) for sid in script_ids}
        return max(sorted(script_ids), key=lambda sid: scores[sid])

    return choose


def _dense(matrix) -> list:
    """Rows of an embedder's output as dense vectors (TF-IDF embedders return sparse ones)."""
    rows = matrix.toarray() if hasattr(matrix, "toarray") else matrix
    return list(rows)


def contexts(
    flow: Flow,
    arm: Arm = "hybrid",
    llm_turns: int = LLM_TURNS,
    answerable: Callable[[str, str], bool] = lambda stage, intent: True,
) -> list[Context]:
    """Every (history, stage, intent) at which the policy asks the LLM for a reply, over the
    shortest scripted way to each stage and up to ``llm_turns`` earlier LLM exchanges (only
    through exchanges that ``answerable(stage, intent)`` says have an answering script)."""
    # Both arms' histories hold what the hybrid arm would have said, its opening included.
    start = entry(flow, flow.start, None, "hybrid", "start")
    first = Step(None, flow.start, start.reply.script_id if start.reply.kind == "script" else None)
    queue: deque[tuple[str, tuple[Step, ...], int]] = deque([(flow.start, (first,), 0)])
    seen = {(flow.start, 0)}
    found: list[Context] = []
    while queue:
        at, history, llm_count = queue.popleft()
        for intent in flow.intents:
            decision = decide(flow, at, 0, intent, arm)
            target = flow.stages[decision.stage]
            if decision.reply.kind == "llm":
                hybrid = decide(flow, at, 0, intent, "hybrid").reply
                script_id = hybrid.script_id if hybrid.kind == "script" else None
                found.append(Context(history, at, intent, decision.reply.stage, script_id))
                step = Step(intent, decision.reply.stage, script_id)
                key = (decision.stage, llm_count + 1)
                if (
                    llm_count < llm_turns
                    and not target.is_end
                    and key not in seen
                    and (script_id is not None or answerable(decision.reply.stage, intent))
                ):
                    seen.add(key)
                    queue.append((decision.stage, (*history, step), llm_count + 1))
            elif not target.is_end and (decision.stage, llm_count) not in seen:
                seen.add((decision.stage, llm_count))
                step = Step(intent, decision.reply.stage, decision.reply.script_id)
                queue.append((decision.stage, (*history, step), llm_count))
    return found


def build_training_set(
    flow: Flow,
    *,
    seed: int = 0,
    lines: Mapping[str, Sequence[str]] | None = None,
    arm: Arm = "hybrid",
    messages_fn: MessagesFn = build_messages,
    llm_turns: int = LLM_TURNS,
    per_line: int = 1,
    choose: ScriptChooser | None = None,
) -> TrainingSet:
    """(prompt -> approved reply) examples for every LLM turn the flow can reach.

    ``lines``: intent -> customer lines; intents.yaml by default. Pass :func:`bank_lines` only
    to build an evaluation set. Each line of each reachable context gives ``per_line`` examples
    (histories and slots drawn from the seeded generator). ``choose`` picks the answering
    script: :func:`nearest_script` by default.
    """
    rng = random.Random(seed)
    lines = flow.intents if lines is None else lines
    choose = nearest_script(flow, lines) if choose is None else choose
    answers = answer_map(flow)
    examples: list[Example] = []
    uncovered: dict[tuple[str, str], None] = {}

    def answerable(stage: str, intent: str) -> bool:
        return bool(_answering(flow, stage, intent, answers)) and bool(lines.get(intent))

    for ctx in contexts(flow, arm, llm_turns, answerable):
        replies = _answering(flow, ctx.stage, ctx.intent, answers, ctx.script_id)
        said = lines.get(ctx.intent, ())
        if not replies:
            if said:
                uncovered[(ctx.stage, ctx.intent)] = None
            continue
        for customer in said:
            for _ in range(per_line):
                slots = _slots(flow, rng)
                history = _realise(flow, ctx.history, lines, answers, slots, rng, choose)
                if history is None:
                    continue
                script = flow.scripts[choose(ctx.intent, customer, replies)]
                stage: Stage = flow.stages[ctx.stage]
                # the classifier's reading, as the engine hands it over (none, 1 in 8)
                reading = None if rng.randrange(UNREAD_SHARE) == 0 else ctx.intent
                messages = messages_fn(flow, stage, history, slots, customer, intent=reading)
                examples.append(
                    Example(
                        stage=ctx.stage,
                        intent=ctx.intent,
                        customer=customer,
                        messages=tuple(messages),
                        reply=script.render(slots),
                        script_id=script.id,
                        act=script.act,
                    )
                )
    if arm == "pure_llm":  # the pure-LLM bot drafts the opening too, with nothing said yet
        examples += _openings(flow, rng, messages_fn, count=max(1, len(examples) // 40))
    rng.shuffle(examples)
    return TrainingSet(tuple(examples), tuple(uncovered))


OPENING_SHARE = 8  # 1 / the pure share's part given to the opening (see build_tuning_set)


def build_tuning_set(
    flow: Flow, *, seed: int = 0, max_examples: int | None = None, pure_share: float = 0.35
) -> TrainingSet:
    """What `salesbot tune` trains on: both arms' prompts, so one adapter serves the hybrid LLM
    stages and the pure-LLM arm alike (a comparison in which only one arm's model was tuned
    would measure the tuning, not the designs).

    ``max_examples``: a seeded sample of at most this many, ``pure_share`` of them from the
    pure-LLM arm's playbook prompts (where the flow has that arm); the rest hybrid.
    """
    choose = nearest_script(flow, flow.intents)  # one embedder for both arms' examples
    hybrid = build_training_set(flow, seed=seed, choose=choose)
    pure = (
        build_training_set(
            flow, seed=seed, arm="pure_llm", messages_fn=playbook_messages, choose=choose
        )
        if flow.pure_llm is not None
        else TrainingSet((), ())
    )
    rng = random.Random(seed)
    hybrid_n, pure_n = len(hybrid.examples), len(pure.examples)
    offer = offer_intents(flow)
    if max_examples is not None and hybrid_n + pure_n > max_examples:
        pure_n = min(pure_n, round(max_examples * pure_share)) if hybrid_n else max_examples
        hybrid_n = min(hybrid_n, max_examples - pure_n)
    # Every pure-LLM call starts with the opening, before the customer says anything: it gets
    # a fixed eighth of the pure share, the rest is spread evenly over the scripts (where it
    # would be one script in fifty: the tuned arm then often opened with another script).
    openings = [e for e in pure.examples if not e.customer]
    others = [e for e in pure.examples if e.customer]
    opening_n = min(len(openings), max(1, pure_n // OPENING_SHARE)) if pure_n else 0
    examples = (
        balanced_sample(hybrid.examples, hybrid_n, rng, key=lambda e: _turn_kind(e, offer))
        + rng.sample(openings, opening_n)
        + balanced_sample(others, pure_n - opening_n, rng)
    )
    rng.shuffle(examples)
    uncovered = tuple(dict.fromkeys(hybrid.uncovered + pure.uncovered))
    return TrainingSet(tuple(examples), uncovered)


OTHER_TURNS = "(other)"  # _turn_kind's one group for the odd lines of a stage


def _turn_kind(example: Example, offer: set[str] | None) -> tuple[str, str]:
    """(stage, intent) of a hybrid example; the intents a customer does not say once the offer
    is on the table (``offer``: "speaking", a date of birth said during the pitch) share one
    group per stage, so that together they weigh as much as one intent."""
    odd = offer is not None and example.intent not in offer
    return example.stage, OTHER_TURNS if odd else example.intent


def balanced_sample(
    examples: Sequence[Example],
    n: int,
    rng: random.Random,
    key: Callable[[Example], object] = lambda e: e.script_id,
) -> list[Example]:
    """``n`` examples spread evenly over groups, by default their replies' scripts (round robin
    over the groups, each group's examples in seeded order).

    The pure-LLM arm's turns are mostly re-prompts (every line the greeting stage does not
    expect gets one); a plain sample would teach little else, while the pitch, the objections
    and the close are where a call is won. The hybrid arm's are grouped by (stage, intent): a
    plain sample follows how many histories reach each, and the model learnt the frequent
    first words instead of reading the note (measured in run J: a plain sample, usage answers
    cut to a quarter, gave the objection stage 51 contract objections and 6 usage answers, and
    the adapter sent the contract answer to 16 of 18 held-out usage, "happy as I am" and "not
    interested" lines there; grouped, 84% of the objection stage's held-out lines got an
    answering script, against 57%)."""
    by_key: dict[object, list[Example]] = {}
    for example in examples:
        by_key.setdefault(key(example), []).append(example)
    queues = [rng.sample(group, len(group)) for _, group in sorted(by_key.items())]
    picked: list[Example] = []
    while len(picked) < n and queues:
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop())
        queues = [q for q in queues if q]
    return picked


def _openings(flow: Flow, rng: random.Random, messages_fn: MessagesFn, count: int) -> list[Example]:
    """The call's first turn: no history, no customer line, the hybrid arm's opening script."""
    opening = entry(flow, flow.start, None, "hybrid", "start").reply
    if opening.kind != "script" or opening.script_id is None:
        return []
    script = flow.scripts[opening.script_id]
    found = []
    for _ in range(count):
        slots = _slots(flow, rng)
        messages = messages_fn(flow, flow.stages[flow.start], [], slots, None)
        found.append(
            Example(
                stage=flow.start,
                intent="",
                customer="",
                messages=tuple(messages),
                reply=script.render(slots),
                script_id=script.id,
                act=script.act,
            )
        )
    return found


def _answering(
    flow: Flow,
    stage_name: str,
    intent: str,
    answers: Mapping[str, tuple[str, ...]],
    script_id: str | None = None,
) -> list[str]:
    """Approved scripts of the stage whose act answers ``intent`` (sorted ids)."""
    if script_id is not None:
        return [script_id]
    stage = flow.stages[stage_name]
    candidates = stage.compliance.candidates if stage.compliance else ()
    acts = answers.get(intent) or flow.tuning.default_acts.get(stage_name, ())
    return sorted(s for s in candidates if flow.scripts[s].act in acts)


def _slots(flow: Flow, rng: random.Random) -> dict[str, str]:
    slots: dict[str, str] = {}
    for name, default in flow.slot_defaults.items():
        values = flow.tuning.slots.get(name)
        if values:
            slots[name] = rng.choice(values)
        elif default is not None:
            slots[name] = default
        else:
            pool = NAMES.get(flow.language.split("-")[0], NAMES["en"])
            slots[name] = rng.choice(pool) if "name" in name else name.replace("_", " ")
    return slots


def _realise(
    flow: Flow,
    steps: Sequence[Step],
    lines: Mapping[str, Sequence[str]],
    answers: Mapping[str, tuple[str, ...]],
    slots: dict[str, str],
    rng: random.Random,
    choose: ScriptChooser,
) -> list[tuple[str | None, str]] | None:
    """Concrete (customer text, bot reply) pairs for a history; None when a step has no line
    or no answering script to show."""
    history: list[tuple[str | None, str]] = []
    for step in steps:
        customer = None
        if step.intent is not None:
            said = lines.get(step.intent)
            if not said:
                return None
            customer = rng.choice(said)
        script_id = step.script_id
        if script_id is None:
            replies = _answering(flow, step.stage, step.intent or "", answers)
            if not replies:
                return None
            script_id = choose(step.intent or "", customer or "", replies)
        history.append((customer, flow.render(script_id, slots)))
    return history
