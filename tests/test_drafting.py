"""The one LLM-draft path: generate or stream, then the compliance filter, on the mini flow."""

from __future__ import annotations

import pytest

from engine.compliance import ComplianceFilter
from engine.compliance.embedders import CharNgramEmbedder
from engine.drafting import draft_reply
from engine.flow.loader import load_flow
from engine.llm.base import BackendError
from engine.llm.prompt import build_messages
from tests.fakes import FakeBackend
from tests.test_compliance_early_stop import ON_SCRIPT, StreamingFakeBackend
from tests.test_engine import MINI

FLOW = load_flow(MINI)
PITCH = FLOW.stages["pitch"]
SLOTS = {"customer_name": "Alex", "agent_name": "Sam"}
MESSAGES = [{"role": "user", "content": "yes"}]


@pytest.fixture(scope="module")
def compliance() -> ComplianceFilter:
    return ComplianceFilter(FLOW, CharNgramEmbedder())


def draft(backend, compliance, early_stop: int = 2):
    latencies: dict[str, float] = {}
    raw, result, error = draft_reply(
        backend, compliance, MESSAGES, PITCH, SLOTS, latencies,
        session_key="s-1", seed=7, early_stop=early_stop,
    )  # fmt: skip
    return raw, result, error, latencies


def test_a_whole_draft_is_generated_and_judged(compliance):
    backend = FakeBackend(ON_SCRIPT)
    raw, result, error, latencies = draft(backend, compliance)
    assert (raw, error) == (ON_SCRIPT, None)
    assert result.source == "llm" and result.script_id == "pitch.speed"
    assert set(latencies) == {"generate_ms", "compliance_ms"}
    assert backend.seeds == [7]
    # the backend hears what was sent (the approved script, not the draft), to encode it ahead
    sent = [*MESSAGES, {"role": "assistant", "content": result.text}]
    assert result.text != raw and backend.prefilled == [(sent, "s-1")]


def test_the_engines_note_is_not_prefilled_with_the_reply(compliance):
    """The next turn's prompt holds the customer's words and the reply, not this turn's note."""
    backend = FakeBackend(ON_SCRIPT)
    noted = [*MESSAGES, {"role": "system", "content": "Stage: pitch."}]
    _, result, _ = draft_reply(
        backend, compliance, noted, PITCH, SLOTS, {}, session_key="s-1", seed=7
    )
    assert backend.prefilled == [
        ([*MESSAGES, {"role": "assistant", "content": result.text}], "s-1")
    ]
    # and the prefilled prompt is a prefix of the next turn's, as the engine builds it
    history = [(None, "Hello"), ("yes", result.text)]
    later = build_messages(FLOW, PITCH, history, SLOTS, "how much?", intent="ask_price")
    earlier = build_messages(FLOW, PITCH, [(None, "Hello")], SLOTS, "yes", intent="affirm")
    assert later[: len(earlier)] == [*earlier[:-1], {"role": "assistant", "content": result.text}]


def test_a_streaming_backend_is_streamed_and_cut_once_the_script_is_settled(compliance):
    backend = StreamingFakeBackend(ON_SCRIPT)
    raw, result, error, latencies = draft(backend, compliance)
    assert result.script_id == "pitch.speed" and error is None
    assert backend.streams[0]["closed_early"] and len(raw) < len(ON_SCRIPT)
    assert latencies["stopped_early"] == 1 and {"generate_ms", "compliance_ms"} <= set(latencies)


def test_early_stop_off_generates_even_when_the_backend_can_stream(compliance):
    backend = StreamingFakeBackend(ON_SCRIPT)
    raw, _, _, latencies = draft(backend, compliance, early_stop=0)
    assert raw == ON_SCRIPT and backend.streams == [] and "stopped_early" not in latencies


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        (FakeBackend().enqueue(BackendError("the model is down")), "the model is down"),
        (StreamingFakeBackend().enqueue((ON_SCRIPT, 5)), "stream broke midway"),
    ],
    ids=["generate", "stream"],
)
def test_a_backend_error_sends_the_stages_fallback_and_is_recorded(compliance, backend, message):
    raw, result, error, latencies = draft(backend, compliance)
    assert raw is None and error == message
    assert result.source == "fallback"
    assert result.script_id in {script for script, _ in PITCH.compliance.fallback}
    assert "generate_ms" in latencies and "compliance_ms" not in latencies
    if isinstance(backend, FakeBackend):  # the fallback is what the call goes on with
        assert backend.prefilled == [
            ([*MESSAGES, {"role": "assistant", "content": result.text}], "s-1")
        ]
