import dataclasses

from engine.engine import confident_intent
from engine.flow.loader import load_flow
from engine.llm.prompt import INTENT_NOTE, MAX_MESSAGE_CHARS, STAGE_NOTE, build_messages
from intents import OUT_OF_SCOPE, IntentPrediction
from tests.test_engine import MINI

FLOW = load_flow(MINI)


def test_prompt_has_persona_goal_slots_history_and_the_new_text():
    history = [(None, "Hello, am I speaking with Alex?"), ("yes", "Great.")]
    slots = {"customer_name": "Alex", "agent_name": "Sam"}
    messages = build_messages(FLOW, FLOW.stages["pitch"], history, slots, "tell me more")
    system = messages[0]["content"]
    assert messages[0]["role"] == "system"
    assert "You are Sam." in system and "Offer the faster plan." in system and "Alex" in system
    roles = [m["role"] for m in messages[1:]]
    assert roles == ["assistant", "user", "assistant", "user", "system"]  # then the note
    assert messages[-2]["content"] == "tell me more"


def test_long_and_empty_customer_text():
    long = build_messages(FLOW, FLOW.stages["pitch"], [], {}, "x" * 10_000)
    assert len(long[-2]["content"]) == MAX_MESSAGE_CHARS
    empty = build_messages(FLOW, FLOW.stages["pitch"], [], {}, "  ")
    assert empty[-2]["role"] == "user" and empty[-2]["content"].startswith("(")


def test_the_stage_and_the_classifiers_reading_come_after_the_customers_words():
    history = [(None, "Hello, am I speaking with Alex?")]
    off = dataclasses.replace(FLOW, intent_note=False)
    plain = build_messages(off, off.stages["pitch"], history, {}, "too dear", intent="deny")
    read = build_messages(FLOW, FLOW.stages["pitch"], history, {}, "too dear", intent="deny")
    # the same prompt up to the customer's words (KV reuse), then one note the model can use
    assert read[: len(plain)] == plain and len(read) == len(plain) + 1
    assert plain[-1] == {"role": "user", "content": "too dear"}
    assert read[-1] == {"role": "system", "content": f"{STAGE_NOTE}pitch. {INTENT_NOTE}deny"}
    # the classifier not sure: the stage only
    unsure = build_messages(FLOW, FLOW.stages["pitch"], history, {}, "too dear")
    assert unsure[-1] == {"role": "system", "content": f"{STAGE_NOTE}pitch."}
    # nothing said, nothing read: the model is asked to go on, with no reading to mislead it
    silent = build_messages(FLOW, FLOW.stages["pitch"], history, {}, "  ", intent="deny")
    assert silent[-2]["role"] == "user" and silent[-2]["content"].startswith("(")
    assert silent[-1] == {"role": "system", "content": f"{STAGE_NOTE}pitch."}


def test_the_engine_hands_over_only_a_reading_the_classifier_is_sure_of():
    sure = IntentPrediction("deny", 0.9, 0.7, (("deny", 0.9), ("affirm", 0.2)))
    unsure = IntentPrediction(OUT_OF_SCOPE, 0.3, 0.05, (("deny", 0.3),), rejected_by="threshold")
    assert confident_intent(sure) == "deny"
    assert confident_intent(unsure) is None and confident_intent(None) is None


def _call(turns: int) -> list[tuple[str | None, str]]:
    return [(None, "Hello.")] + [(f"caller {i}", f"bot {i}") for i in range(1, turns)]


def test_history_window_keeps_six_to_eleven_exchanges():
    for turns in range(1, 40):
        messages = build_messages(FLOW, FLOW.stages["pitch"], _call(turns), {}, "next")
        shown = sum(1 for m in messages if m["role"] == "assistant")
        assert min(turns, 6) <= shown <= 11
        assert messages[-3]["content"] == (f"bot {turns - 1}" if turns > 1 else "Hello.")


def test_prompts_of_later_turns_extend_earlier_ones_for_prefix_reuse():
    """KV reuse needs turn N's prompt, up to the customer's words (the engine's note after them
    is not kept in the history), to begin turn N+1's prompt."""
    extended = 0
    for turns in range(1, 31):
        now = build_messages(FLOW, FLOW.stages["pitch"], _call(turns), {}, "caller x")
        later_history = [*_call(turns), ("caller x", "bot x")]
        later = build_messages(FLOW, FLOW.stages["pitch"], later_history, {}, "caller y")
        extended += later[: len(now) - 1] == now[:-1]  # up to the customer's words
    assert extended >= 25  # the window's start moves once every six turns


def test_window_counts_from_the_start_of_the_call_when_only_recent_turns_were_read():
    history = _call(20)
    whole = build_messages(FLOW, FLOW.stages["pitch"], history, {}, "x")
    recent = build_messages(FLOW, FLOW.stages["pitch"], history[-12:], {}, "x", earlier=8)
    assert recent == whole
