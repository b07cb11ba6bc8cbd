"""The held-out evaluation harness: contexts from the simulation's bank, metrics from the real
compliance filter, on scripted stand-in backends whose right answers are known in advance."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.compliance import ComplianceFilter
from engine.compliance.embedders import CharNgramEmbedder
from engine.errors import FlowValidationError
from engine.flow.loader import load_flow
from engine.llm.base import BackendError, Generation
from engine.llm.prompt import INTENT_NOTE, STAGE_NOTE
from engine.simulation.personas import load_population
from engine.tuning.evaluate import (
    classifier_reading,
    evaluate,
    held_out_contexts,
    read_lines,
    right_acts,
    summarise,
    threshold_sweep,
)

ROOT = Path(__file__).resolve().parent.parent
FLOW = load_flow(ROOT / "flows" / "broadband_en")
POPULATION = load_population(FLOW)
PRICE = FLOW.render("objection.price", {})  # act handle_price_objection, no placeholders


@pytest.fixture(scope="module")
def compliance() -> ComplianceFilter:
    return ComplianceFilter(FLOW, CharNgramEmbedder())


@pytest.fixture(scope="module")
def contexts():
    return held_out_contexts(FLOW, POPULATION)


class Drafts:
    """Drafts ``reply(messages, choices)``; records the choices it was offered."""

    name = "scripted"
    can_constrain = True

    def __init__(self, reply):
        self.reply = reply
        self.offered: list[tuple[str, ...] | None] = []

    def generate(self, messages, params, seed=None, session_key=None, choices=None):
        self.offered.append(None if choices is None else tuple(choices))
        text = self.reply(messages, choices)
        if isinstance(text, Exception):
            raise text
        return Generation(text, 10, 7, 0.0)


def test_customer_lines_come_from_the_held_out_bank_only(contexts):
    bank = {line for lines in POPULATION.bank.intents.values() for line in lines}
    training = {line for lines in FLOW.intents.values() for line in lines}
    assert contexts and all(c.customer in bank for c in contexts)
    assert not {c.customer for c in contexts} & training
    assert {c.stage for c in contexts} == {"pitch", "objection"}
    for c in contexts:
        said = {"role": "user", "content": c.customer}
        assert c.messages[-1] == said or c.messages[-2] == said
        assert c.customer in POPULATION.bank.intents[c.intent]


def test_the_prompt_carries_the_flows_classifier_reading_mistakes_included(contexts):
    """As the engine serves it: the intent classifier's reading of the line, not its label."""
    read = classifier_reading(FLOW)
    for c in contexts:
        assert c.reading == read(c.customer)
        note = f"{STAGE_NOTE}{c.stage}."
        assert c.messages[-2] == {"role": "user", "content": c.customer}
        if c.reading is None:  # not sure: the note names the stage only
            assert c.messages[-1] == {"role": "system", "content": note}
        else:
            noted = f"{note} {INTENT_NOTE}{c.reading}"
            assert c.messages[-1] == {"role": "system", "content": noted}
    # the classifier is right on most bank lines, and its misreadings are kept
    assert 0 < sum(c.reading != c.intent for c in contexts) < len(contexts) / 5
    misread = held_out_contexts(FLOW, POPULATION, read=lambda line: "deny")
    assert {c.messages[-1]["content"].split(". ", 1)[1] for c in misread} == {INTENT_NOTE + "deny"}
    assert [c.right_acts for c in misread] == [c.right_acts for c in contexts]


def test_lines_from_a_file_replace_the_bank_at_the_llm_turn_only(tmp_path):
    """``--lines``: what the customer says at the LLM turn comes from the file; the call before
    it is still the bank's, so the contexts differ in that one line."""
    (tmp_path / "lines.yaml").write_text(
        'intents:\n  price_objection: ["that is a lot of money for me"]\n'
    )
    lines = read_lines(FLOW, tmp_path / "lines.yaml")
    found = held_out_contexts(FLOW, POPULATION, lines=lines)
    assert found and {c.customer for c in found} == {"that is a lot of money for me"}
    assert {c.intent for c in found} == {"price_objection"}
    bank = {line for said in POPULATION.bank.intents.values() for line in said}
    for c in found:
        told = [m["content"] for m in c.messages if m["role"] == "user"]
        assert told[-1] == c.customer and all(line in bank for line in told[:-1])


def test_a_bad_lines_file_names_its_line_and_field(tmp_path):
    (tmp_path / "lines.yaml").write_text("intents:\n  price_objection: []\n  haggle: [less]\n")
    with pytest.raises(FlowValidationError) as caught:
        read_lines(FLOW, tmp_path / "lines.yaml")
    problems = {(p.line, p.field) for p in caught.value.problems}
    assert (2, "intents.price_objection") in problems
    assert (3, "intents.haggle") in problems
    assert "haggle" in str(caught.value) and "lines.yaml" in str(caught.value)
    with pytest.raises(FlowValidationError, match="file is missing"):
        read_lines(FLOW, tmp_path / "none.yaml")


def test_history_is_the_scripted_happy_path(contexts):
    usage = next(c for c in contexts if c.stage == "pitch" and c.entered)
    name = usage.slots["customer_name"]
    assert [bot for _, bot in usage.history] == [
        FLOW.render("greeting.open", usage.slots),
        FLOW.render("identity.ask", usage.slots),
        FLOW.render("identity.thanks", usage.slots),
    ]
    assert name in usage.messages[0]["content"]  # the persona names the customer
    inside = next(c for c in contexts if c.stage == "pitch" and not c.entered)
    assert len(inside.history) == 4  # plus one earlier pitch exchange: an approved script
    said, answer = inside.history[3]
    bank = {line for lines in POPULATION.bank.intents.values() for line in lines}
    pitch = FLOW.stages["pitch"].compliance.candidates
    assert said in bank
    assert answer in {FLOW.render(c, dict(inside.slots)) for c in pitch}


def test_right_acts_follow_the_flow():
    moves = {m.intent: tuple(m.answered_by) for m in POPULATION.moves.values()}
    assert right_acts(FLOW, moves, "objection", "price_objection") == (
        "handle_price_objection",
        "inform",
    )
    assert right_acts(FLOW, moves, "pitch", "describe_usage") == ("pitch",)  # no move
    # an act the stage has no script for is dropped: pitch has no price-objection scripts
    assert right_acts(FLOW, moves, "pitch", "ask_price") == ("inform",)


def test_only_what_a_customer_says_in_an_llm_stage(contexts):
    intents = {c.intent for c in contexts}
    assert "price_objection" in intents and "describe_usage" in intents
    assert not intents & {"affirm", "provide_identity", "wrong_person", "busy"}


def test_limit_is_an_even_spread(contexts):
    some = held_out_contexts(FLOW, POPULATION, limit=20)
    assert len(some) == 20 and {c.stage for c in some} == {"pitch", "objection"}
    assert some[0] == contexts[0]
    only = held_out_contexts(FLOW, POPULATION, stages=["objection"])
    assert only and {c.stage for c in only} == {"objection"}


def test_metrics_of_a_backend_that_always_drafts_the_price_answer(compliance, contexts):
    objection = [c for c in contexts if c.stage == "objection"]
    outcomes = evaluate(FLOW, Drafts(lambda m, c: PRICE), compliance, objection)
    assert all(o.approved and o.script_id == "objection.price" for o in outcomes)
    expected = [("handle_price_objection" in c.right_acts) for c in objection]
    assert [o.right for o in outcomes] == expected
    assert 0 < sum(expected) < len(expected)  # a real mix of right and wrong
    (row,) = [r for r in summarise(outcomes) if r.stage == "all"]
    assert row.n == len(objection) and row.approved == 1.0 and row.fallback == 0.0
    assert row.right == pytest.approx(sum(expected) / len(expected))
    assert row.rule_hits == 0 and row.tokens_mean == 7


def test_threshold_sweep_counts_what_each_threshold_would_send(compliance, contexts):
    """The price answer drafted verbatim scores ~1.0 against its script: every threshold sends
    it, right where the customer objected to the price and wrong elsewhere; a draft with a hard-
    rule hit is never sent, whatever the threshold."""
    objection = [c for c in contexts if c.stage == "objection"]
    outcomes = evaluate(FLOW, Drafts(lambda m, c: PRICE), compliance, objection)
    assert all(o.nearest_act == "handle_price_objection" and o.score > 0.99 for o in outcomes)
    right = sum(o.right for o in outcomes) / len(outcomes)
    assert threshold_sweep(outcomes, [0.5, 0.95]) == [
        (0.5, pytest.approx(right), pytest.approx(1 - right)),
        (0.95, pytest.approx(right), pytest.approx(1 - right)),
    ]
    broken = evaluate(FLOW, Drafts(lambda m, c: PRICE + " 10% off!"), compliance, objection[:3])
    assert threshold_sweep(broken, [0.0]) == [(0.0, 0.0, 0.0)]


def test_hard_rule_hits_and_backend_errors_are_fallbacks(compliance, contexts):
    some = contexts[::40]

    def reply(messages, choices):
        customer = messages[-1]["content"]
        if len(customer) % 2:
            return BackendError("boom")
        return PRICE + " And you get a 10% discount."

    outcomes = evaluate(FLOW, Drafts(reply), compliance, some)
    assert not any(o.approved or o.right for o in outcomes)
    assert all(o.decision == "fallback" and o.fallback for o in outcomes)
    errors = [o for o in outcomes if o.error]
    assert errors and all(o.rule_hits == 0 for o in errors)
    assert all(o.rule_hits >= 1 for o in outcomes if not o.error)
    by_stage = {r.stage: r for r in summarise(outcomes)}
    assert by_stage["all"].rule_hits == len(outcomes) - len(errors)
    assert by_stage["all"].fallback == 1.0


def test_constrained_offers_the_stage_candidates_rendered(compliance, contexts):
    some = contexts[::25]
    backend = Drafts(lambda m, choices: choices[-1])
    outcomes = evaluate(FLOW, backend, compliance, some, decoding="constrained", sampled=True)
    for context, offered, outcome in zip(some, backend.offered, outcomes, strict=True):
        policy = FLOW.stages[context.stage].compliance
        assert offered == compliance.candidate_texts(policy, context.slots)
        assert not any(re.search(r"\{\w+\}", text) for text in offered)  # all slots filled
        assert outcome.approved and outcome.draft == offered[-1]
        assert FLOW.render(outcome.script_id, dict(context.slots)) == offered[-1]
        assert outcome.decoding == "constrained" and outcome.sampled
    assert {r.setting for r in summarise(outcomes)} == {"constrained sampled"}


def test_free_decoding_offers_no_choices_and_greedy_params(compliance, contexts):
    seen = []

    class Params(Drafts):
        def generate(self, messages, params, seed=None, session_key=None, choices=None):
            seen.append((params.do_sample, params.deadline_s, seed))
            return super().generate(messages, params, seed, session_key, choices)

    backend = Params(lambda m, c: PRICE)
    evaluate(FLOW, backend, compliance, contexts[:3], seed=5, deadline_s=99.0)
    assert backend.offered == [None, None, None]
    assert seen == [(False, 99.0, 5), (False, 99.0, 6), (False, 99.0, 7)]
    with pytest.raises(ValueError, match="decoding"):
        evaluate(FLOW, backend, compliance, contexts[:1], decoding="beam")
