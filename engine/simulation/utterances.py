"""Surface text for simulated customers: banks of utterances per intent, held out from training.

The customer decides *what* to say (an intent) in code; the bank only supplies *how* it is said.
The banks live in ``utterances.yaml`` beside the flow and must never repeat a classifier training
example (``intents.yaml``), or the simulation would measure the classifier on its own training
data. :func:`normalise_utterance` is the comparison used by that check.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class UtterancesFile(BaseModel):
    """``utterances.yaml``: what simulated customers say, per intent, plus noise and slots."""

    model_config = ConfigDict(extra="forbid")

    intents: dict[Name, list[Text]] = Field(
        description="Intent name -> held-out ways a customer says it (never in intents.yaml)."
    )
    noise: list[Text] = Field(
        default_factory=list,
        description="Things a caller says that carry no intent: a bad line, a half sentence.",
    )
    slots: dict[Name, list[Text]] = Field(
        default_factory=dict,
        description="Slot name -> values a simulated customer may have (e.g. customer_name).",
    )


@dataclass(frozen=True)
class UtteranceBank:
    """The validated banks; immutable, shared by every simulated customer of a run."""

    intents: MappingProxyType[str, tuple[str, ...]]
    noise: tuple[str, ...]
    slots: MappingProxyType[str, tuple[str, ...]]

    @classmethod
    def from_file(cls, parsed: UtterancesFile) -> UtteranceBank:
        return cls(
            intents=MappingProxyType({k: tuple(v) for k, v in parsed.intents.items()}),
            noise=tuple(parsed.noise),
            slots=MappingProxyType({k: tuple(v) for k, v in parsed.slots.items()}),
        )

    def texts(self, intent: str) -> tuple[str, ...]:
        return self.noise if intent == NOISE else self.intents[intent]


NOISE = "noise"  # the pseudo-intent of a noisy, meaningless utterance


def normalise_utterance(text: str) -> str:
    """Case, width, punctuation and spacing folded away: "Yes, speaking!" == "yesspeaking".

    NFKC folds full-width forms (common in Chinese text), and every punctuation, symbol and
    space character is dropped (Chinese is written without spaces, so "嗯，是我" and "嗯 是我"
    must compare equal), so the held-out check cannot be dodged by a comma or a "？".
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if unicodedata.category(ch)[0] not in "PSZ" and ch.strip())
