"""The engine on the small test flow with a scripted fake LLM, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses

import pytest

from engine.compliance import ComplianceFilter
from engine.compliance.embedders import CharNgramEmbedder
from engine.engine import Engine, draft_seed
from engine.errors import IdempotencyKeyReused, MissingSlot, SessionEnded, SessionNotFound
from engine.flow.loader import load_flow
from engine.llm.prompt import INTENT_NOTE, STAGE_NOTE
from intents import load_or_train
from storage import Store
from tests.conftest import ROOT
from tests.fakes import FakeBackend

MINI = ROOT / "tests" / "flows" / "mini"


def make_engine(db_url: str, backend: FakeBackend | None = None) -> Engine:
    flow = load_flow(MINI)
    classifier = load_or_train(
        {k: list(v) for k, v in flow.intents.items()}, language=flow.language
    )
    return Engine(
        flow=flow,
        classifier=classifier,
        backend=backend or FakeBackend(),
        compliance=ComplianceFilter(flow, CharNgramEmbedder()),
        store=Store(db_url),
    )


def test_whole_call_through_scripted_and_llm_stages(db_url):
    backend = FakeBackend().enqueue("Our faster plan gives you 500 megabits for eight pounds more")
    engine = make_engine(db_url, backend)
    opening = engine.start("cust-1", {"customer_name": "Alex"})
    assert opening.text == "Hello, this is Sam. Am I speaking with Alex?"
    assert (opening.stage, opening.source, opening.script_id) == (
        "greeting",
        "script",
        "greeting.open",
    )

    pitch = engine.turn(opening.session_id, "yes that's me")
    assert pitch.intent == "affirm" and pitch.stage == "pitch"
    assert pitch.source == "llm" and pitch.script_id == "pitch.speed"
    assert pitch.text == engine.flow.scripts["pitch.speed"].text
    assert set(pitch.latencies_ms) >= {"classify_ms", "generate_ms", "compliance_ms", "total_ms"}
    # The prompt carried the stage goal, what the customer said and what the classifier read.
    messages, params = backend.history[0]
    assert "Offer the faster plan." in messages[0]["content"]
    assert messages[-2] == {"role": "user", "content": "yes that's me"}
    assert messages[-1] == {"role": "system", "content": f"{STAGE_NOTE}pitch. {INTENT_NOTE}affirm"}
    assert params.max_new_tokens == 24 and params.top_p == 0.9

    closing = engine.turn(opening.session_id, "yes please")
    assert closing.ended and closing.outcome == "converted" and closing.stage == "converted"

    stored = engine.transcript(opening.session_id)
    replies = [opening, pitch, closing]
    assert [(t.turn_index, t.reply_text, t.script_id, t.stage, t.source) for t in stored] == [
        (r.turn_index, r.text, r.script_id, r.stage, r.source) for r in replies
    ]
    assert [t.user_text for t in stored] == [None, "yes that's me", "yes please"]
    events = [e.stage for e in engine.store.stage_events(opening.session_id)]
    assert events == ["greeting", "pitch", "converted"]
    audit = engine.store.compliance_decisions(opening.session_id)
    assert len(audit) == 1 and audit[0].decision == "approved"
    assert (
        audit[0].raw_text.startswith("Our faster plan")
        and audit[0].top_k["ids"][0] == "pitch.speed"
    )
    assert audit[0].library_hash == engine.flow.library_hash
    conversation = engine.store.get(opening.session_id)
    assert (conversation.status, conversation.outcome, conversation.flow_version) == (
        "ended",
        "converted",
        engine.flow.version,
    )


def test_off_script_llm_draft_gets_a_sticky_fallback_variant(db_url):
    backend = FakeBackend(default="zzzz qqqq xxxx")
    engine = make_engine(db_url, backend)
    session = engine.start("cust-2", {"customer_name": "Alex"}).session_id
    first = engine.turn(session, "yes")
    second = engine.turn(session, "hmm what")
    assert first.source == second.source == "fallback"
    assert first.variant in {"pitch.fallback_a", "pitch.fallback_b"}
    assert second.variant == first.variant  # fixed for the whole call
    assert first.text == engine.flow.scripts[first.variant].text
    audit = engine.store.compliance_decisions(session)
    assert [a.decision for a in audit] == ["fallback", "fallback"]
    assert all(a.score is None or a.score < a.threshold for a in audit)


def test_llm_drafts_are_seeded_by_session_and_turn(db_url):
    """Seeded sampling: a re-run of the same call draws the same drafts, other turns differ."""
    backend = FakeBackend(default="zzzz qqqq xxxx")
    engine = make_engine(db_url, backend)
    sessions = [
        engine.start(f"cust-seed-{i}", {"customer_name": "Alex"}).session_id for i in (1, 2)
    ]
    for session in sessions:
        engine.turn(session, "yes")
        engine.turn(session, "hmm what")
    seeds = backend.seeds
    assert all(isinstance(seed, int) for seed in seeds) and len(set(seeds)) == 4
    now = engine.store.read_turn(sessions[0], None, 12)[0]  # after two customer turns
    before = [dataclasses.replace(now, turn_count=count) for count in (0, 1)]
    assert seeds[:2] == [draft_seed(snapshot) for snapshot in before]


def test_backend_failure_sends_the_fallback_and_logs_the_error(db_url):
    backend = FakeBackend().enqueue(RuntimeError("model server unreachable"))
    engine = make_engine(db_url, backend)
    session = engine.start("cust-3", {"customer_name": "Alex"}).session_id
    reply = engine.turn(session, "yes")
    assert reply.source == "fallback" and reply.stage == "pitch"
    audit = engine.store.compliance_decisions(session)
    assert audit[0].raw_text is None and "unreachable" in audit[0].error


def test_otherwise_reprompts_then_exits(db_url):
    engine = make_engine(db_url)
    session = engine.start("cust-4", {"customer_name": "Alex"}).session_id
    first = engine.turn(session, "")  # silence is always out of scope
    assert (first.script_id, first.stage, first.ended) == ("greeting.reprompt", "greeting", False)
    second = engine.turn(session, "   ")
    assert second.ended and second.outcome == "refused"


def test_global_answer_keeps_the_stage(db_url):
    engine = make_engine(db_url)
    session = engine.start("cust-5", {"customer_name": "Alex"}).session_id
    reply = engine.turn(session, "are you a robot")
    assert (reply.intent, reply.script_id, reply.stage) == ("ask_if_robot", "faq.robot", "greeting")
    assert reply.text == "I'm an automated assistant calling for Sam's team."


def test_a_new_engine_continues_the_session(db_url):
    first = make_engine(db_url)
    session = first.start("cust-6", {"customer_name": "Alex"}).session_id
    first.store.close()
    second = make_engine(db_url, FakeBackend(default="Would you like me to upgrade you today?"))
    reply = second.turn(session, "yes")
    assert reply.stage == "pitch" and reply.turn_index == 1
    assert reply.script_id == "pitch.ask"


SLOTS = {"customer_name": "Alex", "agent_name": "Sam"}


def strict_replies(flow, stage_name: str, slots: dict[str, str]) -> set[str]:
    """Every text strict mode may send in ``stage_name``, rendered: for an llm stage its approved
    candidates, its fallback wordings and the universal fallback; for a scripted or end stage
    the scripts listed for it (the stage's own and the flow-wide ``*`` ones)."""
    policy = flow.stages[stage_name].compliance
    if policy is not None:
        ids = {*policy.candidates, *(s for s, _ in policy.fallback), policy.universal_fallback}
    else:
        ids = {s.id for s in flow.scripts_for_stage(stage_name)}
    return {flow.render(i, slots) for i in ids}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "x" * 10_000,
        "yes 👍🎉",
        "\x00\x01\x1b[31myes\x7f",
        "\ud800 broken surrogate",
        "是的",
    ],
)
def test_any_text_gets_a_reply_and_is_stored(db_url, text):
    engine = make_engine(db_url, FakeBackend(default="faster plan"))
    session = engine.start("cust-7", {"customer_name": "Alex"}).session_id  # = SLOTS
    reply = engine.turn(session, text)
    assert reply.text in strict_replies(engine.flow, reply.stage, SLOTS)
    assert reply.text == engine.flow.render(reply.script_id, SLOTS)
    stored = engine.transcript(session)[-1]
    assert stored.reply_text == reply.text
    assert len(stored.user_text) == len(text)  # kept whole; only unstorable characters replaced
    if not text.strip():
        assert reply.intent == "out_of_scope"


def test_end_records_the_hangup_stage_once(db_url):
    engine = make_engine(db_url)
    session = engine.start("cust-8", {"customer_name": "Alex"}).session_id
    engine.end(session, "hangup")
    engine.end(session, "hangup")
    conversation = engine.store.get(session)
    assert (conversation.status, conversation.outcome, conversation.stage) == (
        "ended",
        "hung_up",
        "hung_up",
    )
    assert [e.stage for e in engine.store.stage_events(session)] == ["greeting", "hung_up"]
    with pytest.raises(SessionEnded):
        engine.turn(session, "hello?")


def test_errors_name_what_is_wrong(db_url):
    engine = make_engine(db_url)
    with pytest.raises(SessionNotFound, match="nope"):
        engine.turn("nope", "hello")
    with pytest.raises(SessionNotFound):
        engine.end("nope")
    with pytest.raises(MissingSlot, match="customer_name"):
        engine.start("cust-9", {})


def test_pure_llm_arm_serves_scripted_stages_with_the_llm(db_url):
    backend = FakeBackend().enqueue(
        "Hello, this is Sam. Am I speaking with Alex?",
        "Our faster plan gives you 500 megabits for eight pounds more a month.",
    )
    engine = make_engine(db_url, backend)
    opening = engine.start("cust-10", {"customer_name": "Alex"}, arm="pure_llm")
    assert opening.source == "llm" and opening.script_id == "greeting.open"
    reply = engine.turn(opening.session_id, "yes")
    # no state machine: the LLM chose to pitch, and the ruler places the call by what was said
    assert reply.stage == "pitch" and reply.script_id == "pitch.speed"
    assert engine.store.get(opening.session_id).arm == "pure_llm"


def test_a_failed_turn_writes_nothing(db_url):
    class Exploding(FakeBackend):
        def generate(self, messages, params, seed=None, session_key=None):
            raise KeyboardInterrupt  # not a backend error: the turn must roll back whole

    engine = make_engine(db_url, Exploding())
    session = engine.start("cust-11", {"customer_name": "Alex"}).session_id
    with pytest.raises(KeyboardInterrupt):
        engine.turn(session, "yes")
    assert len(engine.transcript(session)) == 1
    assert engine.store.get(session).stage == "greeting"
    assert [e.stage for e in engine.store.stage_events(session)] == ["greeting"]


def test_idempotency_key_returns_the_stored_reply_and_writes_nothing(db_url):
    engine = make_engine(db_url, FakeBackend(default="faster plan for eight pounds"))
    session = engine.start("cust-12", {"customer_name": "Alex"}).session_id
    first = engine.turn(session, "yes", idempotency_key="req-1")
    retry = engine.turn(session, "yes", idempotency_key="req-1")
    assert retry.text == first.text and retry.turn_index == first.turn_index == 1
    assert retry.stage == first.stage and retry.source == first.source
    assert len(engine.transcript(session)) == 2
    assert len(engine.backend.history) == 1  # the retry did not generate again
    other = engine.turn(session, "", idempotency_key="req-2")
    assert other.turn_index == 2


def stored_rows(engine: Engine, session: str) -> tuple[int, int, int]:
    """(turns, stage events, compliance decisions) stored for the session."""
    return (
        len(engine.store.turns(session)),
        len(engine.store.stage_events(session)),
        len(engine.store.compliance_decisions(session)),
    )


def test_a_turn_key_reused_with_another_text_is_refused_and_writes_nothing(db_url):
    engine = make_engine(db_url, FakeBackend(default="faster plan for eight pounds"))
    session = engine.start("cust-13", {"customer_name": "Alex"}).session_id
    first = engine.turn(session, "yes", idempotency_key="req-1")
    before = stored_rows(engine, session)
    with pytest.raises(IdempotencyKeyReused, match="'req-1'") as refused:
        engine.turn(session, "no thanks", idempotency_key="req-1")
    assert refused.value.key == "req-1"
    assert stored_rows(engine, session) == before
    assert len(engine.backend.history) == 1  # nothing was generated for the reused key
    retry = engine.turn(session, "yes", idempotency_key="req-1")  # a true retry still works
    assert (retry.turn_index, retry.text, retry.replayed) == (first.turn_index, first.text, True)
    assert not first.replayed
    assert stored_rows(engine, session) == before


def test_a_scoped_turn_key_reused_on_another_session_is_refused_and_writes_nothing(db_url):
    engine = make_engine(db_url, FakeBackend(default="faster plan for eight pounds"))
    one = engine.start("cust-15", {"customer_name": "Alex"}).session_id
    two = engine.start("cust-16", {"customer_name": "Alex"}).session_id
    engine.turn(one, "yes", idempotency_key="req-9", idempotency_scope="dialer")
    before = stored_rows(engine, two)
    with pytest.raises(IdempotencyKeyReused, match="'req-9'"):
        engine.turn(two, "yes", idempotency_key="req-9", idempotency_scope="dialer")
    assert stored_rows(engine, two) == before
    # Another client's key of the same name is its own request.
    other = engine.turn(two, "yes", idempotency_key="req-9", idempotency_scope="crm")
    assert other.turn_index == 1 and not other.replayed


def test_a_start_key_opens_one_session_and_refuses_another_request(db_url):
    engine = make_engine(db_url)
    first = engine.start("cust-14", {"customer_name": "Alex"}, idempotency_key="open-1")
    before = stored_rows(engine, first.session_id)
    retry = engine.start("cust-14", {"customer_name": "Alex"}, idempotency_key="open-1")
    assert dataclasses.replace(retry, replayed=False) == first and retry.replayed
    assert stored_rows(engine, first.session_id) == before
    for changed in (
        {"customer_id": "someone-else"},
        {"slots": {"customer_name": "Sam"}},
        {"arm": "pure_llm"},
    ):
        request = {"customer_id": "cust-14", "slots": {"customer_name": "Alex"}} | changed
        with pytest.raises(IdempotencyKeyReused, match="'open-1'"):
            engine.start(**request, idempotency_key="open-1")
    assert stored_rows(engine, first.session_id) == before
    # The same key for a turn of the session it opened is another request too.
    with pytest.raises(IdempotencyKeyReused):
        engine.turn(first.session_id, "yes", idempotency_key="open-1")
    assert stored_rows(engine, first.session_id) == before
    # A key naming a session that another request opened is no retry of that request.
    taken = engine.start("cust-14", {"customer_name": "Alex"}).session_id
    with pytest.raises(IdempotencyKeyReused, match="'open-2'"):
        engine.start("cust-14", {"customer_name": "Al"}, session_id=taken, idempotency_key="open-2")
    assert len(engine.transcript(taken)) == 1


def test_a_key_on_another_session_never_returns_the_first_sessions_reply(db_url):
    """Turn keys are scoped to their session (the session is part of the request's URL): the
    key on another session is that session's own request, not a retry of the first."""
    engine = make_engine(db_url, FakeBackend(default="faster plan for eight pounds"))
    one = engine.start("cust-15", {"customer_name": "Alex"}).session_id
    two = engine.start("cust-16", {"customer_name": "Alex"}).session_id
    first = engine.turn(one, "yes", idempotency_key="req-1")
    other = engine.turn(two, "yes", idempotency_key="req-1")
    assert (first.session_id, other.session_id) == (one, two)
    assert not other.replayed and len(engine.backend.history) == 2
