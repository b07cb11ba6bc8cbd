"""How each arm decides what to say, and how the funnel and outcome are measured: one paragraph
per arm mode, printed in every report (and in the README) so a reader knows what is compared."""

from __future__ import annotations

ARM_METHODS: dict[str, str] = {
    "hybrid": (
        "Hybrid: the intent classifier labels each customer turn and the flow's state machine "
        "(flow.yaml) picks the next stage. Scripted stages send their approved script; LLM "
        "stages draft a reply from a prompt holding that stage's goal, and the compliance filter "
        "maps the draft to the nearest approved script of that stage that may be said now "
        "(preconditions hold, a once-only script not said yet) above the stage's threshold, "
        "else sends the stage's fallback wording. A script with an `ends` effect ends the call "
        "with its outcome."
    ),
    "pure_llm": (
        "Pure LLM: every bot turn, the opening included, is an LLM draft from one "
        "prompt holding the whole flow as a playbook (persona and offer facts, every stage's "
        "goal in order, what must succeed before selling), the call so far and the customer's "
        "last words. No state machine chooses its goal or next stage. The compliance filter maps "
        "the draft to the nearest script of the whole approved library that may be said now, "
        "above the flow's `compliance.pure_llm` threshold, else sends its fallback (the universal "
        '"say that again"). The call ends when the bot sends a script with an `ends` effect, '
        "when the customer hangs up, or converts when the customer accepts at the closing "
        "question (the bot then says the converted stage's line)."
    ),
}

MEASUREMENT = (
    "Measured the same way in both arms: one ruler (engine/milestones.py), defined once from the "
    "flow, computes the stages a call reached from what was said: the stage of each script the "
    "bot sent and milestones from the customer's classified intents (e.g. identity passed, offer "
    "accepted). Its stage events are the funnel; a call converts when the customer accepts at "
    "the closing question. It also records process-order findings: a script sent before its "
    "precondition held (sent), or an LLM draft whose nearest approved script could not be said "
    "yet (attempted: the filter kept it back)."
)
