"""What the caller says in ``salesbot demo``: the flow's own lines, in the flow's language.

A demo that talks English to a Chinese flow ends in ``no_contact`` before the LLM stage is ever
reached, so the caller's lines come from the flow folder:

1. ``demo.yaml`` beside the flow, when present: a ``demo:`` list of caller lines in order, and
   optionally ``slots:`` (slot name -> value) for the call's start. Validated; problems name the
   file, line and field like every other flow file.
2. Otherwise the flow's utterance bank (``utterances.yaml``): the shortest path of stage
   transitions from the start stage to the first ``llm`` stage, then on to a ``converted`` end if
   one is reachable, each step said with the bank's first utterance of that intent. Slots without
   a default take the bank's first value.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from engine.errors import FlowProblem, FlowValidationError
from engine.flow.model import Flow
from engine.flow.problems import Problems

DEMO_FILE = "demo.yaml"
Line = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class DemoFile(BaseModel):
    """``demo.yaml``: the scripted caller of ``salesbot demo``."""

    model_config = ConfigDict(extra="forbid")

    demo: list[Line] = Field(min_length=1, description="What the caller says, turn by turn.")
    slots: dict[str, Line] = Field(
        default_factory=dict, description="Slot values for the call's start (e.g. customer_name)."
    )


@dataclass(frozen=True)
class DemoScript:
    """The caller's lines and the slots the call starts with; ``source`` says where from."""

    lines: tuple[str, ...]
    slots: dict[str, str]
    source: str


def load_demo(flow: Flow) -> DemoScript:
    """The demo caller for ``flow``: its ``demo.yaml``, else lines from its utterance bank.

    Raises :class:`FlowValidationError` (file, line, field) for a broken ``demo.yaml`` or when
    neither file gives the demo anything to say.
    """
    path = Path(flow.folder) / DEMO_FILE
    if path.is_file():
        return _from_file(flow, path)
    return _from_bank(flow)


def _problem(path: Path, line: int | None, field: str, message: str) -> FlowValidationError:
    return FlowValidationError([FlowProblem(str(path), line, field, message)])


def _from_file(flow: Flow, path: Path) -> DemoScript:
    problems = Problems(path.parent)
    parsed = problems.read(path.name, DemoFile)
    if parsed is not None:
        for name in parsed.slots:
            if name not in flow.slot_defaults:
                known = ", ".join(sorted(flow.slot_defaults)) or "none"
                problems.add(path.name, ("slots", name), f"not a slot in flow.yaml ({known})")
    if problems.items or parsed is None:
        raise FlowValidationError(problems.items)
    slots = {**_bank_slots(flow), **parsed.slots}
    return DemoScript(tuple(parsed.demo), slots, str(path))


def _bank(flow: Flow):
    from engine.simulation.personas import UTTERANCES_FILE
    from engine.simulation.utterances import UtteranceBank, UtterancesFile

    problems = Problems(Path(flow.folder))
    parsed = problems.read(UTTERANCES_FILE, UtterancesFile)
    if parsed is None:
        return None, problems.items
    return UtteranceBank.from_file(parsed), problems.items


def _bank_slots(flow: Flow) -> dict[str, str]:
    """Slots without a default in flow.yaml take the bank's first value (if there is a bank)."""
    needed = [name for name, default in flow.slot_defaults.items() if default is None]
    if not needed or not (Path(flow.folder) / "utterances.yaml").is_file():
        return {}
    bank, _ = _bank(flow)
    if bank is None:
        return {}
    return {name: bank.slots[name][0] for name in needed if bank.slots.get(name)}


def _path(flow: Flow, start: str, goal, sayable: set[str]) -> list[str] | None:
    """Intents of the shortest transition path from ``start`` to a stage where ``goal`` holds."""
    seen = {start}
    queue: deque[tuple[str, list[str]]] = deque([(start, [])])
    while queue:
        name, intents = queue.popleft()
        if goal(flow.stages[name]) and intents:
            return intents
        stage = flow.stages[name]
        if stage.is_end:
            continue
        for intent in sorted(sayable):
            transition = flow.transition_for(stage, intent)
            if transition is None or transition.to is None or transition.to in seen:
                continue
            seen.add(transition.to)
            queue.append((transition.to, [*intents, intent]))
    return None


def _from_bank(flow: Flow) -> DemoScript:
    folder = Path(flow.folder)
    bank, problems = _bank(flow)
    if bank is None:
        raise FlowValidationError(
            [
                FlowProblem(
                    str(folder / DEMO_FILE), None, "", "no demo.yaml and no usable utterances.yaml"
                ),
                *problems,
            ]
        )
    sayable = {intent for intent, texts in bank.intents.items() if texts}
    to_llm = _path(flow, flow.start, lambda s: s.kind == "llm", sayable)
    if to_llm is None:
        raise _problem(
            folder / DEMO_FILE,
            None,
            "",
            "no demo.yaml, and utterances.yaml has no intents that lead from the start stage "
            "to an llm stage: write a demo: list",
        )
    stage = flow.start
    for intent in to_llm:
        stage = flow.transition_for(flow.stages[stage], intent).to  # type: ignore[union-attr]
    onward = _path(flow, stage, lambda s: s.outcome == "converted", sayable) or []
    lines = tuple(bank.intents[intent][0] for intent in (*to_llm, *onward))
    return DemoScript(lines, _bank_slots(flow), str(folder / "utterances.yaml"))
