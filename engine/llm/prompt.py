"""Build the chat prompt for an LLM stage from the stage goal, the history and the slots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from engine.flow import Flow, Stage
from engine.llm.base import ChatMessage

HISTORY_TURNS = 6  # customer/bot exchanges kept in the prompt
MAX_MESSAGE_CHARS = 600  # a 10,000-character turn must not blow the context window


class _KeepUnknown(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def build_messages(
    flow: Flow,
    stage: Stage,
    history: Sequence[tuple[str | None, str]],
    slots: Mapping[str, str],
    customer_text: str | None,
) -> list[ChatMessage]:
    """``history`` is the earlier (customer text or None, bot reply) pairs, oldest first;
    ``customer_text`` is what the customer just said (None when the bot speaks first)."""
    persona = flow.persona.format_map(_KeepUnknown(slots))
    facts = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in sorted(slots.items()) if v)
    system = (
        f"{persona}\nYour task now: {stage.goal}\n"
        f"Known facts: {facts}.\n"
        "Reply to the customer in one or two short, polite sentences. Do not invent prices, "
        "discounts or promises."
    )
    messages: list[ChatMessage] = [{"role": "system", "content": system}]
    for user_text, bot_text in list(history)[-HISTORY_TURNS:]:
        if user_text:
            messages.append({"role": "user", "content": user_text[:MAX_MESSAGE_CHARS]})
        messages.append({"role": "assistant", "content": bot_text[:MAX_MESSAGE_CHARS]})
    if customer_text and customer_text.strip():
        messages.append({"role": "user", "content": customer_text[:MAX_MESSAGE_CHARS]})
    else:
        # Nothing usable was said (silence, noise): ask the model to carry the call on.
        messages.append({"role": "user", "content": "(The customer is listening. Go on.)"})
    return messages
