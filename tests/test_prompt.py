from engine.flow_loader import load_flow
from engine.llm.prompt import MAX_MESSAGE_CHARS, build_messages
from tests.test_engine import MINI

FLOW = load_flow(MINI)


def test_prompt_has_persona_goal_slots_history_and_the_new_text():
    history = [(None, "Hello, am I speaking with Alex?"), ("yes", "Great.")]
    slots = {"customer_name": "Alex", "agent_name": "Sam"}
    messages = build_messages(FLOW, FLOW.stages["pitch"], history, slots, "tell me more")
    system = messages[0]["content"]
    assert messages[0]["role"] == "system"
    assert "You are Sam." in system and "Offer the faster plan." in system and "Alex" in system
    assert [m["role"] for m in messages[1:]] == ["assistant", "user", "assistant", "user"]
    assert messages[-1]["content"] == "tell me more"


def test_long_and_empty_customer_text():
    long = build_messages(FLOW, FLOW.stages["pitch"], [], {}, "x" * 10_000)
    assert len(long[-1]["content"]) == MAX_MESSAGE_CHARS
    empty = build_messages(FLOW, FLOW.stages["pitch"], [], {}, "  ")
    assert empty[-1]["role"] == "user" and empty[-1]["content"].startswith("(")
