"""A whole call of the broadband flow with the real default models (SmolLM2-135M, MiniLM)."""

from __future__ import annotations

import pytest

from engine.engine import Engine
from storage import Store
from tests.real_models import allowed_in, broadband_parts, library, with_decoding

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def parts():
    return broadband_parts()


@pytest.mark.parametrize("decoding", ["free", "constrained"])
def test_call_reaches_the_llm_stage_and_only_approved_text_is_sent(parts, db_url, decoding):
    flow, classifier, backend, compliance = parts
    flow = with_decoding(flow, decoding)
    engine = Engine(flow, classifier, backend, compliance, Store(db_url))
    replies = [engine.start("integration-1", {"customer_name": "Alex"})]
    caller = [
        flow.intents["affirm"][0],
        flow.intents["provide_identity"][0],
        flow.intents["describe_usage"][0],  # -> pitch (llm)
        flow.intents["ask_details"][0],  # stays in pitch: another llm reply
        flow.intents["price_objection"][0],  # -> objection (llm)
    ]
    for text in caller:
        replies.append(engine.turn(replies[0].session_id, text))
    assert [r.stage for r in replies] == [
        "greeting",
        "identity",
        "needs",
        "pitch",
        "pitch",
        "objection",
    ]
    for reply in replies[3:]:
        assert reply.source in {"llm", "fallback", "universal"}
        assert reply.text in allowed_in(flow, reply.stage)
        assert reply.latencies_ms["generate_ms"] > 0
    stored = engine.transcript(replies[0].session_id)
    assert [(t.reply_text, t.stage, t.source, t.script_id) for t in stored] == [
        (r.text, r.stage, r.source, r.script_id) for r in replies
    ]
    audit = engine.store.compliance_decisions(replies[0].session_id)
    assert len(audit) == 3 and all(a.raw_text for a in audit)
    assert all(a.embedder == "minilm" for a in audit)
    if decoding == "free":
        for a, r in zip(audit, replies[3:], strict=True):
            if a.raw_text == r.text:  # an eligible script word for word: matched as itself
                assert a.decision == "approved" and a.score == 1.0
                assert a.top_k["ids"] == [r.script_id]
            else:  # the raw draft was recorded but never sent; its 3 nearest scripts
                assert len(a.top_k["ids"]) == 3
    else:  # the draft is the script sent, word for word: matched as itself, not embedded
        assert all(a.raw_text == r.text for a, r in zip(audit, replies[3:], strict=True))
        assert all(r.source == "llm" and r.text in library(flow) for r in replies[3:])
        assert all(a.top_k["ids"] == [r.script_id] for a, r in zip(audit, replies[3:], strict=True))
