"""The simulated customer on its own: decisions from persona numbers and the bot's acts."""

from __future__ import annotations

import pytest

from engine.flow.loader import load_flow
from engine.simulation import SimulatedCustomer, load_population
from tests.conftest import BROADBAND

PLAIN = {  # a persona with no randomness in its path except the surface text
    "off_topic": 0.0,
    "noise": 0.0,
    "bot_aversion": 0.0,
    "busy": 0.0,
    "wrong_person": 0.0,
    "identity_cooperation": 1.0,
    "patience": 1.0,
}


@pytest.fixture(scope="module")
def population():
    return load_population(load_flow(BROADBAND))


def customer(population, index=0, seed=7, **values):
    return SimulatedCustomer(population.adjusted(set_to={**PLAIN, **values}), seed, index)


def test_same_seed_and_index_is_the_same_customer(population):
    a, b = SimulatedCustomer(population, 7, 3), SimulatedCustomer(population, 7, 3)
    assert (a.persona_name, a.slots, a.agenda, a.will_buy) == (
        b.persona_name,
        b.slots,
        b.agenda,
        b.will_buy,
    )
    acts = ["greet", "verify", "confirm", "pitch", "inform", "handle_price_objection", "close"]
    assert [a.respond(x) for x in acts] == [b.respond(x) for x in acts]
    others = [SimulatedCustomer(population, 8, 3), SimulatedCustomer(population, 7, 4)]
    drawn = {(c.persona_name, tuple(c.slots.items()), tuple(c.agenda)) for c in [a, *others]}
    assert len(drawn) > 1


def test_personas_are_drawn_by_weight(population):
    names = [SimulatedCustomer(population, 1, i).persona_name for i in range(2000)]
    for name, persona in population.personas.items():
        assert abs(names.count(name) / len(names) - persona.weight) < 0.04, name


def test_a_willing_customer_walks_the_happy_path(population):
    c = customer(population, interest=1.0, objections={})
    said = [c.respond(act) for act in ["greet", "verify", "confirm", "pitch", "close"]]
    assert [u.intent for u in said] == [
        "affirm",
        "provide_identity",
        "describe_usage",
        "agree_to_offer",
        "agree_to_offer",
    ]
    assert c.strikes == 0 and all(step.addressed for step in c.trace)
    assert said[0].text in population.bank.intents["affirm"]


def test_an_unwilling_customer_declines(population):
    c = customer(population, interest=0.0, objections={})
    for act in ["greet", "verify", "confirm"]:
        c.respond(act)
    assert c.respond("pitch").intent == "not_interested"


def test_an_objection_stays_until_an_act_that_answers_it(population):
    c = customer(population, interest=1.0, objections={"price": 1.0})
    for act in ["greet", "verify", "confirm"]:
        c.respond(act)
    assert c.respond("pitch").intent == "price_objection"
    # a pitch does not answer a price objection: it costs patience and is raised again
    again = c.respond("pitch")
    assert again.intent == "price_objection" and c.strikes == 1 and c.agenda == ["price"]
    # a price answer takes it off the agenda; with nothing left the customer decides
    assert c.respond("handle_price_objection").intent == "agree_to_offer"
    assert c.agenda == [] and c.strikes == 1


def test_repairs_and_reprompts_cost_patience_and_the_customer_repeats(population):
    c = customer(population)
    c.respond("greet")
    repeat = c.respond("repair")
    assert repeat.intent == "affirm" and c.strikes == 1
    c.respond("reprompt")
    assert c.strikes == 2
    c.respond("greet")  # the same question again does not address "yes, speaking"
    assert c.strikes == 3


def test_patience_zero_hangs_up_at_the_first_unhelpful_reply(population):
    c = customer(population, patience=0.0)
    assert c.respond("greet").intent == "affirm"  # the opening line is not unhelpful
    assert c.respond("repair") is None  # the first unhelpful reply: hang-up probability 1
    assert c.strikes == 1 and c.trace[-1].said is None and not c.trace[-1].addressed


def test_lower_patience_hangs_up_sooner_on_average(population):
    def turns_until_hangup(patience: float) -> float:
        total = 0
        for i in range(300):
            c = customer(population, index=i, patience=patience)
            c.respond("greet")
            while c.respond("repair") is not None and c.turns < 50:
                pass
            total += c.turns
        return total / 300

    assert turns_until_hangup(0.5) < turns_until_hangup(0.8) < turns_until_hangup(0.95)


def test_off_topic_and_noise_are_interjections_answered_by_repairs(population):
    c = customer(population, off_topic=1.0)
    assert c.respond("greet").intent == "off_topic"
    assert c.respond("repair").intent == "off_topic" and c.strikes == 0
    c = customer(population, noise=1.0)
    said = c.respond("greet")
    assert said.intent == "noise" and said.text in population.bank.noise
    c.respond("reprompt")
    assert c.strikes == 0
    c = customer(population, off_topic=1.0)
    c.respond("greet")
    c.respond("pitch")  # ignoring an off-topic remark is unhelpful
    assert c.strikes == 1


def test_bot_averse_customers_ask_and_hang_up_on_hearing_a_bot(population):
    c = customer(population, bot_aversion=1.0)
    assert c.respond("greet").intent == "ask_if_robot"
    assert c.respond("faq") is None
    c = customer(population, bot_aversion=0.0)
    c.respond("greet")
    stays = c.respond("faq")  # hears the bot, stays on the line and repeats its answer
    assert stays.intent == "affirm" and c.trace[-1].role == "faq"


def test_identity_refusal_busy_and_wrong_person(population):
    c = customer(population, identity_cooperation=0.0)
    c.respond("greet")
    assert c.respond("verify").intent == "refuse_identity"
    assert customer(population, busy=1.0).respond("greet").intent == "busy"
    stranger = customer(population, wrong_person=1.0)
    assert stranger.respond("greet").intent == "wrong_person"
    assert stranger.respond("verify").intent == "wrong_person"  # never gives someone's details


def test_goodbye_from_the_bot_is_answered_with_goodbye(population):
    c = customer(population)
    c.respond("greet")
    assert c.respond("goodbye").intent == "goodbye"


def test_the_customer_gives_up_after_max_turns(population):
    c = customer(population)
    said = [c.respond("sell" if i else "greet") for i in range(population.max_turns + 1)]
    # "sell" is no act of the flow, so it is heard as a repair: never helpful, but a customer
    # with patience 1 never hangs up for that; it repeats its answer until the turn limit.
    assert said[-1] is None and c.turns == population.max_turns + 1
    assert [s.intent for s in said[:-1]] == ["affirm"] * population.max_turns
    assert c.strikes == population.max_turns  # every reply after the greeting was unhelpful
