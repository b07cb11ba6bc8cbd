"""The pure_llm arm with scripted LLM stand-ins (deterministic, no model): an oracle that always
drafts the right approved script converts customers (the arm is not rigged to lose), an LLM that
drafts random approved scripts converts fewer, and an LLM that opens with an offer leaves a
process-order finding on the report."""

from __future__ import annotations

import hashlib
import re

import pytest

from engine.compliance import ComplianceFilter
from engine.compliance.embedders import CharNgramEmbedder
from engine.engine import Engine
from engine.errors import SessionNotFound
from engine.flow.loader import load_flow
from engine.llm.prompt import PLAYBOOK_HEADER, build_playbook_messages
from engine.milestones import Progress
from engine.policy import decide
from engine.report import build_report
from engine.report.render import render_html, render_markdown
from engine.simulation import Simulation, choose, load_population
from engine.simulation.results import run_conversations
from intents import load_or_train
from storage import Store
from tests.conftest import BROADBAND
from tests.fakes import FakeBackend

FLOW = load_flow(BROADBAND)
N = 40
SEED = 7
# which act answers which customer move (personas.yaml `moves`), else a pitch moves the call on
ANSWERS = {
    "price_objection": ("handle_price_objection",),
    "contract_objection": ("handle_contract_objection",),
    "ask_details": ("inform",),
    "ask_price": ("inform",),
    "happy_with_current": ("pitch",),
}


def verbatim(script_id: str) -> str:
    """The approved text as scripts.yaml has it, placeholders read as the filter indexes them."""
    defaults = {k: v for k, v in FLOW.slot_defaults.items() if v}
    text = FLOW.scripts[script_id].text
    return re.sub(r"\{(\w+)\}", lambda m: defaults.get(m[1]) or m[1].replace("_", " "), text)


class Oracle(FakeBackend):
    """Drafts, verbatim, the approved script a well-run call says now: the flow's next line for
    the customer's last move, an answer of the right act in the selling stages."""

    def __init__(self) -> None:
        super().__init__()
        self.engine: Engine | None = None

    def choose(self, session_key: str | None, messages) -> str:
        engine = self.engine
        assert engine is not None and session_key is not None
        try:
            progress = Progress.from_json(engine.store.get(session_key).progress)
        except SessionNotFound:
            return "greeting.open"  # the opening line
        intent = engine.classifier.predict_one(messages[-1]["content"]).intent
        progress, _ = engine.ruler.hear(progress, intent)
        decision = decide(FLOW, progress.stage or FLOW.start, 0, intent, "hybrid")
        if decision.reply.kind == "script":
            return decision.reply.script_id
        stage = decision.reply.stage
        candidates = [
            c
            for c in engine.ruler.available(progress, FLOW.stages[stage].compliance.candidates)
            if engine.ruler.lands_on(progress.stage, c) == stage
        ]
        acts = ANSWERS.get(intent, ("pitch",))
        fitting = [c for c in candidates if FLOW.scripts[c].act in acts] or candidates
        return fitting[len(messages) % len(fitting)]

    def generate(self, messages, params, seed=None, session_key=None):
        self.default = verbatim(self.choose(session_key, messages))
        return super().generate(messages, params, seed, session_key)


class RandomScripts(FakeBackend):
    """Drafts, verbatim, an approved script drawn at random from the whole library."""

    def generate(self, messages, params, seed=None, session_key=None):
        ids = sorted(FLOW.scripts)
        digest = hashlib.sha256(f"{session_key}:{seed}:{len(messages)}".encode()).digest()
        self.default = verbatim(ids[int.from_bytes(digest[:4], "big") % len(ids)])
        return super().generate(messages, params, seed, session_key)


class OffersFirst(Oracle):
    """The oracle, except that it opens the call with an offer."""

    def choose(self, session_key, messages):
        opening = not any(m["role"] == "assistant" for m in messages)
        return "pitch.intro" if opening else super().choose(session_key, messages)


@pytest.fixture(scope="module")
def classifier():
    return load_or_train(
        {k: list(v) for k, v in FLOW.intents.items()},
        language=FLOW.language,
        threshold=FLOW.classifier_threshold,
        margin=FLOW.classifier_margin,
    )


@pytest.fixture(scope="module")
def compliance():
    return ComplianceFilter(FLOW, CharNgramEmbedder())


def simulate(tmp_path, classifier, compliance, backend):
    engine = Engine(
        flow=FLOW,
        classifier=classifier,
        backend=backend,
        compliance=compliance,
        store=Store(f"sqlite:///{tmp_path / 'sim.db'}"),
    )
    if isinstance(backend, Oracle):
        backend.engine = engine
    experiment, arms = choose(FLOW, {}, "hybrid,pure_llm", None, SEED)
    result = Simulation(
        engine, load_population(FLOW), experiment, arms, n=N, seed=SEED, concurrency=1
    ).run()
    conversations = run_conversations(engine.store, result.run_id)
    report = build_report(engine.store, experiment.name, run_id=result.run_id)
    return engine, conversations, report


def closed(conversations, arm: str) -> int:
    return sum(c.arm == arm and c.outcome == "converted" for c in conversations)


def test_the_playbook_prompt_holds_the_whole_flow_and_no_stage_is_singled_out():
    messages = build_playbook_messages(
        FLOW, [(None, "Hello"), ("yes", "Thanks")], {"customer_name": "Alex"}, "how much?"
    )
    system = messages[0]["content"]
    assert system.startswith(FLOW.persona.split("{")[0]) and PLAYBOOK_HEADER in system
    goals = [s.goal for s in FLOW.stages.values() if not s.is_end]
    positions = [system.index(goal) for goal in goals]
    assert positions == sorted(positions)  # every non-end stage's goal, in the flow's order
    assert "Step 2 must succeed before step 3, 4, 5." in system  # security gates the offer
    assert "Your task now" not in system
    assert [m["role"] for m in messages[1:]] == ["assistant", "user", "assistant", "user"]
    assert messages[-1]["content"] == "how much?"
    # the same system message on every turn: per-session KV reuse keeps working
    later = build_playbook_messages(FLOW, [(None, "Hello")] * 3, {"customer_name": "Alex"}, "ok")
    assert later[0] == messages[0]


def test_an_oracle_llm_converts_customers_in_pure_llm(tmp_path, classifier, compliance):
    engine, conversations, report = simulate(tmp_path, classifier, compliance, Oracle())
    pure, hybrid = closed(conversations, "pure_llm"), closed(conversations, "hybrid")
    assert pure >= 3 and pure >= hybrid // 2, (pure, hybrid)
    # every bot turn of a pure_llm call was an LLM draft, except the converted call's goodbye
    for c in conversations:
        if c.arm == "pure_llm":
            sources = [t.source for t in engine.store.turns(c.session_id)]
            assert set(sources[:-1]) <= {"llm", "fallback", "universal"}
    row = {r.arm: r for r in report.process_order}
    assert row["pure_llm"].calls_sent.count == 0 and row["pure_llm"].calls_attempted.count == 0


def test_an_llm_drafting_random_approved_scripts_converts_fewer(tmp_path, classifier, compliance):
    _, oracle_calls, _ = simulate(tmp_path / "oracle", classifier, compliance, Oracle())
    _, random_calls, _ = simulate(tmp_path / "random", classifier, compliance, RandomScripts())
    assert closed(random_calls, "pure_llm") < closed(oracle_calls, "pure_llm")


def test_an_llm_that_opens_with_an_offer_is_a_process_order_finding(
    tmp_path, classifier, compliance
):
    engine, conversations, report = simulate(tmp_path, classifier, compliance, OffersFirst())
    row = {r.arm: r for r in report.process_order}
    assert row["pure_llm"].calls_attempted.count == N  # every pure call opened with an offer
    assert row["pure_llm"].top[0].startswith("pitch.intro before identity_passed")
    assert row["hybrid"].calls_attempted.count == 0 and row["hybrid"].calls_sent.count == 0
    # the filter kept the offer from the customer: no call heard it before the security check
    first = [engine.store.turns(c.session_id)[0] for c in conversations if c.arm == "pure_llm"]
    assert all(not t.script_id.startswith("pitch.") for t in first)
    findings = first[0].findings
    assert findings == [
        {
            "rule": "process_order",
            "script_id": "pitch.intro",
            "missing": ["identity_passed"],
            "sent": False,
            "stage": None,
        }
    ]
    assert "Process-order findings per arm" in render_markdown(report)
    assert "Process-order findings per arm" in render_html(report)
