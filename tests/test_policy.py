"""The pure turn decision, on the small test flow."""

from __future__ import annotations

from engine.flow.loader import load_flow
from engine.policy import decide, entry
from tests.test_engine import MINI

FLOW = load_flow(MINI)


def test_stage_transition_enters_target_with_its_entry_reply():
    d = decide(FLOW, "greeting", 0, "affirm", "hybrid")
    assert (d.stage, d.stage_turns, d.entered, d.reason) == ("pitch", 0, ("pitch",), "transition")
    assert d.reply.kind == "llm" and d.reply.stage == "pitch"


def test_global_transition_applies_when_the_stage_has_none():
    d = decide(FLOW, "pitch", 1, "goodbye", "hybrid")
    assert (d.stage, d.reason, d.outcome) == ("hung_up", "global", "hung_up")
    assert d.reply.script_id == "end.bye"


def test_answer_without_leaving_the_stage_keeps_the_counter():
    d = decide(FLOW, "greeting", 1, "ask_if_robot", "hybrid")
    assert (d.stage, d.stage_turns, d.entered, d.reason) == ("greeting", 1, (), "answer")
    assert d.reply.script_id == "faq.robot"


def test_otherwise_counts_then_exits():
    first = decide(FLOW, "greeting", 0, "out_of_scope", "hybrid")
    assert (first.stage, first.stage_turns, first.reply.script_id) == (
        "greeting",
        1,
        "greeting.reprompt",
    )
    exhausted = decide(FLOW, "greeting", 1, "out_of_scope", "hybrid")
    assert (exhausted.stage, exhausted.reason, exhausted.outcome) == (
        "refused",
        "otherwise_exhausted",
        "refused",
    )


def test_llm_stage_otherwise_generates_again_until_max():
    assert decide(FLOW, "pitch", 1, "out_of_scope", "hybrid").reply.kind == "llm"
    assert decide(FLOW, "pitch", 2, "out_of_scope", "hybrid").stage == "refused"


def test_pure_llm_arm_uses_the_llm_for_scripted_stages_but_not_for_end_stages():
    assert entry(FLOW, "greeting", None, "pure_llm", "start").reply.kind == "llm"
    assert decide(FLOW, "greeting", 0, "ask_if_robot", "pure_llm").reply.kind == "llm"
    end = decide(FLOW, "pitch", 0, "affirm", "pure_llm")
    assert end.reply.kind == "script" and end.reply.script_id == "end.converted"
