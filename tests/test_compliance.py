"""The compliance filter's decisions, with the model-free character n-gram embedder."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from engine.compliance import ComplianceFilter
from engine.compliance.embedders import CharNgramEmbedder
from engine.compliance.filter import pick_variant
from engine.flow_loader import load_flow
from tests.test_engine import MINI

FLOW = load_flow(MINI)
SLOTS = {"customer_name": "Alex", "agent_name": "Sam"}


def make_filter() -> ComplianceFilter:
    return ComplianceFilter(FLOW, CharNgramEmbedder())


def test_close_draft_sends_the_approved_script_not_the_draft():
    result = make_filter().check(
        "our faster plan gives you 500 megabits, eight pounds more!",
        "pitch",
        FLOW.stages["pitch"].compliance,
        "s1",
        SLOTS,
    )
    assert (result.decision, result.script_id, result.source) == ("approved", "pitch.speed", "llm")
    assert result.text == FLOW.scripts["pitch.speed"].text
    assert result.score >= result.threshold and result.top_k[0][0] == "pitch.speed"


def test_candidates_are_the_stage_scripts_without_its_fallbacks():
    candidates = FLOW.stages["pitch"].compliance.candidates
    assert set(candidates) == {"pitch.speed", "pitch.ask", "faq.robot"}


def test_unrelated_draft_falls_back_to_a_weighted_sticky_variant():
    policy = FLOW.stages["pitch"].compliance
    result = make_filter().check("buy crypto now!!!", "pitch", policy, "s2", SLOTS)
    assert result.decision == "fallback" and result.source == "fallback"
    assert result.variant == pick_variant(policy.fallback, "s2", "pitch") == result.script_id


def test_stage_without_fallback_pool_sends_the_universal_fallback():
    policy = replace(FLOW.stages["pitch"].compliance, fallback=())
    result = make_filter().check("buy crypto now!!!", "pitch", policy, "s3", SLOTS)
    assert (result.decision, result.script_id) == ("universal", "universal.fallback")


def test_pass_mode_sends_the_raw_text_when_close_enough():
    policy = replace(FLOW.stages["pitch"].compliance, mode="pass")
    draft = "Our faster plan gives you 500 megabits for eight pounds more a month!"
    result = make_filter().check(draft, "pitch", policy, "s4", SLOTS)
    assert result.decision == "pass" and result.text == draft


def test_scripts_with_unfillable_placeholders_are_not_eligible():
    flt = make_filter()
    policy = FLOW.stages["pitch"].compliance
    assert "faq.robot" in flt.eligible(policy, SLOTS)
    assert "faq.robot" not in flt.eligible(policy, {"customer_name": "Alex", "agent_name": None})


def test_variant_draw_follows_the_weights():
    pool = (("a", 0.25), ("b", 0.75))
    counts = Counter(pick_variant(pool, f"session-{i}", "pitch") for i in range(4000))
    assert 0.22 < counts["a"] / 4000 < 0.28
    assert pick_variant(pool, "same", "pitch") == pick_variant(pool, "same", "pitch")
