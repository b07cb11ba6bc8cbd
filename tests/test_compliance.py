"""The compliance filter's decisions, with the model-free character n-gram embedder."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from engine.compliance import ComplianceFilter
from engine.compliance.embedders import CharNgramEmbedder
from engine.compliance.filter import pick_variant
from engine.flow.loader import load_flow
from tests.flow_faults import copy_mini
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


# ---------------------------------------------------------------- hard rules, margin, wordings


def test_forbidden_pattern_sends_the_fallback_even_when_the_draft_matches():
    policy = replace(FLOW.stages["pitch"].compliance, forbidden_patterns=(r"guarantee\w*",))
    draft = "Our faster plan gives you 500 megabits for eight pounds more a month, guaranteed!"
    clean = make_filter().check(draft.replace(", guaranteed", ""), "pitch", policy, "s5", SLOTS)
    result = make_filter().check(draft, "pitch", policy, "s5", SLOTS)
    assert clean.decision == "approved" and clean.rule_hits == ()
    assert (result.decision, result.reason) == ("fallback", "rule")
    assert [h.as_dict() for h in result.rule_hits] == [
        {"rule": "pattern", "value": r"guarantee\w*", "match": "guaranteed"}
    ]
    # The ranking is still computed and kept for the audit row.
    assert result.top_k[0][0] == "pitch.speed" and result.score >= result.threshold


def test_forbidden_phrase_is_whole_word_case_and_quote_insensitive():
    policy = replace(FLOW.stages["pitch"].compliance, forbidden_phrases=("can't lose",))
    flt = make_filter()
    hit = flt.check("You CAN\u2019T   lose with the faster plan", "pitch", policy, "s6", SLOTS)
    miss = flt.check("You can't loser with the faster plan", "pitch", policy, "s6", SLOTS)
    assert [h.rule for h in hit.rule_hits] == ["phrase"] and hit.reason == "rule"
    assert miss.rule_hits == ()


@pytest.mark.parametrize(
    ("draft", "hits"),
    [
        ("Our faster plan gives you 500 megabits for eight pounds more a month!", []),
        ("Our faster plan gives you 500 megabits for 8 pounds more a month!", []),
        ("Our faster plan gives you 500 megabits for £12 more a month!", ["price:12"]),
        ("Our faster plan gives you 500 megabits, 20% off this month!", ["percent:20"]),
        ("Our faster plan gives you 900 megabits for eight pounds more!", ["plain:900"]),
    ],
)
def test_pass_mode_numbers_must_appear_in_an_approved_script(draft, hits):
    policy = replace(FLOW.stages["pitch"].compliance, mode="pass")
    result = make_filter().check(draft, "pitch", policy, "s7", SLOTS)
    assert [h.value for h in result.rule_hits] == hits
    assert result.decision == ("pass" if not hits else "fallback")
    assert result.text == (draft if not hits else FLOW.scripts[result.variant].text)


def test_strict_mode_does_not_apply_the_number_rule():
    draft = "Our faster plan gives you 500 megabits for £12 more a month!"
    result = make_filter().check(draft, "pitch", FLOW.stages["pitch"].compliance, "s8", SLOTS)
    assert result.decision == "approved" and result.rule_hits == ()
    assert result.text == FLOW.scripts["pitch.speed"].text  # the approved price, not £12


def test_margin_is_measured_against_the_best_script_of_another_act():
    flt = make_filter()
    policy = FLOW.stages["pitch"].compliance
    draft = "our faster plan, would you like me to upgrade you today"
    loose = flt.check(draft, "pitch", policy, "s9", SLOTS)
    acts = [FLOW.scripts[i].act for i, _ in loose.top_k]
    rival = next(s for (i, s), act in zip(loose.top_k, acts, strict=True) if act != acts[0])
    assert loose.margin == pytest.approx(loose.top_k[0][1] - rival)
    assert loose.decision == "approved"  # the flow's margin is 0
    strict_margin = replace(policy, margin=loose.margin + 0.01)
    tight = flt.check(draft, "pitch", strict_margin, "s9", SLOTS)
    assert (tight.decision, tight.reason) == ("fallback", "ambiguous")


def test_extra_wordings_are_matched_but_only_the_script_text_is_sent(tmp_path):
    folder = copy_mini(tmp_path)
    scripts = folder / "scripts.yaml"
    text = scripts.read_text()
    anchor = "    text: Our faster plan gives you 500 megabits for eight pounds more a month.\n"
    wording = "    wordings: [Upgrading gets you half a gigabit for a small monthly extra.]\n"
    scripts.write_text(text.replace(anchor, anchor + wording))
    flow = load_flow(folder)
    assert flow.scripts["pitch.speed"].wordings == (
        "Upgrading gets you half a gigabit for a small monthly extra.",
    )
    draft = "upgrading gets you half a gigabit for a small extra each month"
    policy = flow.stages["pitch"].compliance
    before = make_filter().check(draft, "pitch", policy, "s10", SLOTS)
    after = ComplianceFilter(flow, CharNgramEmbedder()).check(draft, "pitch", policy, "s10", SLOTS)
    assert after.score > before.score and after.score >= policy.threshold > before.score
    assert (after.decision, after.script_id) == ("approved", "pitch.speed")
    assert after.text == flow.scripts["pitch.speed"].text


def test_no_eligible_candidate_falls_back_with_reason_empty():
    policy = replace(FLOW.stages["pitch"].compliance, candidates=("faq.robot",))
    result = make_filter().check("anything at all", "pitch", policy, "s11", {"agent_name": None})
    assert (result.decision, result.reason, result.top_k) == ("fallback", "empty", ())


def test_a_draft_that_is_an_eligible_script_word_for_word_is_matched_without_embedding():
    flt = make_filter()
    embedded = []
    embed = flt.embed
    flt.embed = lambda text: embedded.append(text) or embed(text)
    policy = FLOW.stages["pitch"].compliance
    text = FLOW.render("faq.robot", dict(SLOTS))  # a script with a slot, filled as it is sent
    result = flt.check(text, "pitch", policy, "s9", SLOTS)
    assert (result.decision, result.script_id, result.score) == ("approved", "faq.robot", 1.0)
    assert embedded == []
    # the same words when that script may not be said now: embedded, and never that script
    match = flt.match(text, policy, SLOTS, allowed={"pitch.speed", "pitch.ask"})
    assert embedded == [text] and match.top_k[0][0] != "faq.robot"
    assert match.nearest[0] == "faq.robot"  # still reported as what the draft aimed at
    # one character off is a draft like any other
    flt.check(text + "!", "pitch", policy, "s9", SLOTS)
    assert len(embedded) == 2
