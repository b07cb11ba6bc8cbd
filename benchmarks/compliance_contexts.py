"""Conversation contexts of the broadband_en llm stages, with the replies that would fit them.

Shared by the prompt study and the early-stop benchmark. Each context is the call so far (the
scripted opening, identity check and needs question, plus a pitch for objection contexts), what
the customer just said, and the approved scripts that would be a fitting answer to it: the
"decision quality" of a draft is whether the compliance filter maps it to one of those.
"""

from __future__ import annotations

from dataclasses import dataclass

SLOTS = {
    "customer_name": "Alex",
    "agent_name": "Sam",
    "company": "Brightline Broadband",
    "current_plan": "100 Mbps",
}

_GENERAL_PITCH = ("pitch.intro", "pitch.speed", "pitch.summary", "pitch.details")


@dataclass(frozen=True)
class Context:
    name: str
    stage: str
    customer: str
    fitting: frozenset[str]


def _pitch(name: str, customer: str, *ids: str) -> Context:
    return Context(name, "pitch", customer, frozenset(ids))


def _objection(name: str, customer: str, *ids: str) -> Context:
    return Context(name, "objection", customer, frozenset(ids))


CONTEXTS = (
    _pitch(
        "streaming",
        "we stream a lot of films and football, usually on two tellies",
        "pitch.streaming", "pitch.household", "pitch.many_devices", *_GENERAL_PITCH,
    ),
    _pitch(
        "work_from_home",
        "I work from home most days, loads of video calls",
        "pitch.work_from_home", "pitch.household", *_GENERAL_PITCH,
    ),
    _pitch(
        "gaming",
        "my son's always gaming online and downloading games",
        "pitch.gaming", "pitch.household", "pitch.download_example", *_GENERAL_PITCH,
    ),
    _pitch(
        "light_use",
        "just emails and a bit of browsing really",
        "pitch.light_use", "pitch.future_proof", *_GENERAL_PITCH,
    ),
    _pitch(
        "price",
        "how much would it cost me?",
        "pitch.price", "pitch.price_per_day", "pitch.current_plan", "pitch.details",
        "pitch.no_extra_costs", "pitch.intro", "pitch.summary", "pitch.light_use",
    ),
    _pitch(
        "contract",
        "how long would the contract be?",
        "pitch.contract", "pitch.details", "pitch.cooling_off",
    ),
    _pitch(
        "extra_costs",
        "would I have to pay for installation or a new router?",
        "pitch.installation", "pitch.no_extra_costs", "pitch.router", "pitch.details",
        "pitch.summary",
    ),
    _pitch(
        "speed",
        "how fast is it compared to what I have now?",
        "pitch.speed", "pitch.intro", "pitch.current_plan", "pitch.details",
        "pitch.download_example",
    ),
    _objection(
        "too_expensive",
        "that's too expensive for me",
        "objection.price", "objection.price_value", "objection.price_no_hidden_costs",
        "objection.price_no_discount", "objection.price_cooling_off", "objection.router_value",
    ),
    _objection(
        "contract_worry",
        "I don't want to be tied into a long contract",
        "objection.contract_length", "objection.contract_fixed_price",
        "objection.contract_cooling_off", "objection.think_cooling_off",
    ),
    _objection(
        "happy_as_is",
        "I'm happy with what I've got, thanks",
        "objection.happy_current", "objection.speed_enough", "objection.happy_no_pressure",
        "objection.not_interested", "objection.acknowledge",
    ),
    _objection(
        "think_about_it",
        "I need to think about it",
        "objection.think_about_it", "objection.think_cooling_off", "objection.email_option",
        "objection.happy_no_pressure", "objection.acknowledge",
    ),
    _objection(
        "partner",
        "I'd have to check with my wife first",
        "objection.check_with_partner", "objection.email_option", "objection.think_about_it",
        "objection.think_cooling_off",
    ),
    _objection(
        "moving",
        "we might be moving house next year",
        "objection.moving_house", "objection.contract_cooling_off", "objection.contract_length",
    ),
    _objection(
        "discount",
        "can you do it any cheaper? give me a discount and I'll think about it",
        "objection.price_no_discount", "objection.price", "objection.price_value",
        "objection.price_cooling_off",
    ),
    _objection(
        "speed_fine",
        "honestly the speed I have is fine",
        "objection.speed_enough", "objection.happy_current", "objection.happy_no_pressure",
        "objection.wfh_value",
    ),
)  # fmt: skip


def history(flow, context: Context) -> list[tuple[str | None, str]]:
    """The call up to the customer's last turn, as the engine would pass it."""
    said = [
        (None, flow.render("greeting.open", SLOTS)),
        ("yes speaking", flow.render("identity.ask", SLOTS)),
        ("it's 12 Oak Street", flow.render("identity.thanks", SLOTS)),
    ]
    if context.stage == "objection":
        said.append(("we mostly stream films", flow.render("pitch.streaming", SLOTS)))
    return said
