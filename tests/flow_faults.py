"""Broken variants of tests/flows/mini, shared by the loader and CLI tests.

Each :class:`Fault` replaces exact whole lines of one file of a copy of the mini flow and says
which problem the loader must report: the file, the field path and a message fragment. The
expected line is computed from the mutated text, never written down as a number.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from engine.errors import FlowProblem
from tests.conftest import ROOT

MINI = ROOT / "tests" / "flows" / "mini"

# index of each script in the mini scripts.yaml, for field paths such as "scripts.3.id"
SCRIPT_INDEX = {
    s["id"]: i
    for i, s in enumerate(
        yaml.safe_load((MINI / "scripts.yaml").read_text(encoding="utf-8"))["scripts"]
    )
}

FLOW_GENERATION = "  generation: {temperature: 0.7, top_p: 0.9, max_new_tokens: 16}\n"
PITCH_GENERATION = "    generation: {max_new_tokens: 24}\n"
PITCH_COMPLIANCE = (
    "    compliance: {threshold: 0.5, fallback: {pitch.fallback_a: 0.5, pitch.fallback_b: 0.5}}\n"
)
PITCH_EXITS = (
    "    on:\n"
    "      affirm: converted\n"
    "      deny: refused\n"
    "    otherwise: {max: 2, then: refused}\n"
)


@dataclass(frozen=True)
class Fault:
    file: str  # the file of the flow folder that is mutated
    old: str  # exact whole lines (ending in a newline), present exactly once in that file
    new: str  # their replacement
    field: str  # expected FlowProblem.field
    message: str  # expected fragment of FlowProblem.message
    at: str | None = None  # the line the problem points at; default: the last line of `new`
    reported_in: str | None = None  # file the problem names; default: `file`

    @property
    def problem_file(self) -> str:
        return self.reported_in or self.file


def copy_mini(tmp_path: Path) -> Path:
    folder = tmp_path / "flow"
    shutil.copytree(MINI, folder)
    return folder


def apply_fault(folder: Path, fault: Fault) -> int:
    """Mutate ``folder`` as ``fault`` says; return the 1-based line the problem must name."""
    path = folder / fault.file
    text = path.read_text(encoding="utf-8")
    assert fault.old.endswith("\n"), fault.old
    assert text.count(fault.old) == 1, f"{fault.old!r} is not exactly once in {fault.file}"
    start = text.index(fault.old)
    assert start == 0 or text[start - 1] == "\n", f"{fault.old!r} does not start a line"
    mutated = text[:start] + fault.new + text[start + len(fault.old) :]
    path.write_text(mutated, encoding="utf-8")

    new_lines = fault.new.splitlines()
    target = fault.at if fault.at is not None else new_lines[-1]
    if fault.problem_file == fault.file and target in new_lines:
        return text[:start].count("\n") + 1 + new_lines.index(target)
    lines = (folder / fault.problem_file).read_text(encoding="utf-8").splitlines()
    assert lines.count(target) == 1, f"{target!r} is not exactly once in {fault.problem_file}"
    return lines.index(target) + 1


def matching(problems: list[FlowProblem], file: str, field: str) -> list[FlowProblem]:
    return [p for p in problems if p.file.endswith(file) and p.field == field]


def pitch_generation(*lines: str) -> str:
    """The pitch stage's generation block in block style, one key per line."""
    return "    generation:\n" + "".join(f"      {line}\n" for line in lines)


def pitch_fallback(weights: dict[str, str]) -> str:
    """The pitch stage's compliance block in block style, one fallback script per line."""
    body = "".join(f"        {sid}: {w}\n" for sid, w in weights.items())
    return "    compliance:\n      threshold: 0.5\n      fallback:\n" + body


FAULTS: dict[str, Fault] = {
    # unknown target stage
    "unknown-stage-on": Fault(
        "flow.yaml",
        "      affirm: pitch\n",
        "      affirm: pich\n",
        "stages.greeting.on.affirm.to",
        "unknown stage 'pich'",
    ),
    "unknown-stage-otherwise-then": Fault(
        "flow.yaml",
        "    otherwise: {say: greeting.reprompt, max: 1, then: refused}\n",
        "    otherwise: {say: greeting.reprompt, max: 1, then: nowhere}\n",
        "stages.greeting.otherwise.then",
        "unknown stage 'nowhere'",
    ),
    "unknown-stage-global": Fault(
        "flow.yaml",
        "  goodbye: hung_up\n",
        "  goodbye: hang_up\n",
        "global.goodbye.to",
        "unknown stage 'hang_up'",
    ),
    "unknown-stage-start": Fault(
        "flow.yaml",
        "start: greeting\n",
        "start: welcome\n",
        "start",
        "unknown stage 'welcome'",
    ),
    "unknown-stage-on-hangup": Fault(
        "flow.yaml",
        "on_hangup: hung_up\n",
        "on_hangup: hangup\n",
        "on_hangup",
        "unknown stage 'hangup'",
    ),
    "unreachable-stage": Fault(
        "flow.yaml",
        "      affirm: converted\n",
        "      affirm: refused\n",
        "stages.converted",
        "stage 'converted' is unreachable from start",
        at="  converted:",
    ),
    # script id not in the library
    "unknown-script-stage-say": Fault(
        "flow.yaml",
        "    say: greeting.open\n",
        "    say: greeting.opening\n",
        "stages.greeting.say",
        "script id 'greeting.opening' is not in scripts.yaml",
    ),
    "unknown-script-transition-say": Fault(
        "flow.yaml",
        "      affirm: pitch\n",
        "      affirm: {to: pitch, say: pitch.nope}\n",
        "stages.greeting.on.affirm.say",
        "script id 'pitch.nope' is not in scripts.yaml",
    ),
    "unknown-script-global-say": Fault(
        "flow.yaml",
        "  ask_if_robot: {say: faq.robot}\n",
        "  ask_if_robot: {say: faq.bot}\n",
        "global.ask_if_robot.say",
        "script id 'faq.bot' is not in scripts.yaml",
    ),
    "unknown-script-otherwise-say": Fault(
        "flow.yaml",
        "    otherwise: {say: greeting.reprompt, max: 1, then: refused}\n",
        "    otherwise: {say: greeting.again, max: 1, then: refused}\n",
        "stages.greeting.otherwise.say",
        "script id 'greeting.again' is not in scripts.yaml",
    ),
    "unknown-script-fallback-pool": Fault(
        "flow.yaml",
        PITCH_COMPLIANCE,
        pitch_fallback({"pitch.fallback_a": "0.5", "pitch.fallback_x": "0.5"}),
        "stages.pitch.compliance.fallback.pitch.fallback_x",
        "script id 'pitch.fallback_x' is not in scripts.yaml",
    ),
    "unknown-script-universal-fallback": Fault(
        "flow.yaml",
        "  universal_fallback: universal.fallback\n",
        "  universal_fallback: universal.fallbak\n",
        "compliance.universal_fallback",
        "script id 'universal.fallbak' is not in scripts.yaml",
    ),
    # intents
    "undefined-intent-on": Fault(
        "flow.yaml",
        "      affirm: pitch\n",
        "      agree: pitch\n",
        "stages.greeting.on.agree",
        "intent 'agree' is not defined in intents.yaml",
    ),
    "undefined-intent-global": Fault(
        "flow.yaml",
        "  ask_if_robot: {say: faq.robot}\n",
        "  ask_if_bot: {say: faq.robot}\n",
        "global.ask_if_bot",
        "intent 'ask_if_bot' is not defined in intents.yaml",
    ),
    "intent-removed-from-intents-yaml": Fault(
        "intents.yaml",
        "  goodbye:\n    - bye\n    - goodbye\n    - I have to go now bye\n    - I'm hanging up\n",
        "",
        "global.goodbye",
        "intent 'goodbye' is not defined in intents.yaml",
        at="  goodbye: hung_up",
        reported_in="flow.yaml",
    ),
    # generation parameters
    "temperature-0-with-sampling-stage": Fault(
        "flow.yaml",
        PITCH_GENERATION,
        pitch_generation("max_new_tokens: 24", "temperature: 0", "do_sample: true"),
        "stages.pitch.generation",
        "temperature must be > 0 when do_sample is true",
        at="    generation:",
    ),
    "temperature-0-with-sampling-flow": Fault(
        "flow.yaml",
        FLOW_GENERATION,
        "  generation: {temperature: 0, do_sample: true, top_p: 0.9, max_new_tokens: 16}\n",
        "llm.generation",
        "temperature must be > 0 when do_sample is true",
    ),
    "top-p-0": Fault(
        "flow.yaml",
        PITCH_GENERATION,
        pitch_generation("max_new_tokens: 24", "top_p: 0"),
        "stages.pitch.generation.top_p",
        "greater than 0",
    ),
    "top-p-1.5": Fault(
        "flow.yaml",
        FLOW_GENERATION,
        "  generation: {temperature: 0.7, top_p: 1.5, max_new_tokens: 16}\n",
        "llm.generation.top_p",
        "less than or equal to 1",
    ),
    "repetition-penalty-0.9": Fault(
        "flow.yaml",
        PITCH_GENERATION,
        pitch_generation("repetition_penalty: 0.9", "max_new_tokens: 24"),
        "stages.pitch.generation.repetition_penalty",
        "greater than or equal to 1",
        at="      repetition_penalty: 0.9",
    ),
    "no-repeat-ngram-size-negative": Fault(
        "flow.yaml",
        PITCH_GENERATION,
        pitch_generation("max_new_tokens: 24", "no_repeat_ngram_size: -1"),
        "stages.pitch.generation.no_repeat_ngram_size",
        "greater than or equal to 0",
    ),
    "max-new-tokens-0": Fault(
        "flow.yaml",
        PITCH_GENERATION,
        pitch_generation("max_new_tokens: 0"),
        "stages.pitch.generation.max_new_tokens",
        "greater than or equal to 1",
    ),
    "fallback-weights-not-1": Fault(
        "flow.yaml",
        PITCH_COMPLIANCE,
        pitch_fallback({"pitch.fallback_a": "0.5", "pitch.fallback_b": "0.4"}),
        "stages.pitch.compliance.fallback",
        "weights sum to 0.9, not 1",
        at="      fallback:",
    ),
    # duplicates
    "duplicate-key-slot": Fault(
        "flow.yaml",
        "  agent_name: Sam\n",
        "  agent_name: Sam\n  agent_name: Max\n",
        "slots.agent_name",
        "duplicate key",
    ),
    "duplicate-key-stage": Fault(
        "flow.yaml",
        "    say: end.bye\n",
        "    say: end.bye\n  refused:\n    kind: end\n    outcome: refused\n    say: end.refused\n",
        "stages.refused",
        "duplicate key",
        at="  refused:",
    ),
    "duplicate-script-id": Fault(
        "scripts.yaml",
        "  - id: pitch.ask\n",
        "  - id: pitch.speed\n",
        f"scripts.{SCRIPT_INDEX['pitch.ask']}.id",
        "duplicate script id 'pitch.speed'",
    ),
    # per-file schema
    "unknown-field-in-stage": Fault(
        "flow.yaml",
        "    kind: llm\n",
        "    kind: llm\n    temprature: 0.5\n",
        "stages.pitch.temprature",
        "Extra inputs are not permitted",
    ),
    "undeclared-placeholder": Fault(
        "scripts.yaml",
        "    text: Goodbye.\n",
        "    text: Goodbye, {nickname}.\n",
        f"scripts.{SCRIPT_INDEX['end.bye']}.text",
        "placeholder {nickname} is not a slot in flow.yaml",
    ),
    # stage kinds
    "end-stage-without-outcome": Fault(
        "flow.yaml",
        "    outcome: converted\n",
        "",
        "stages.converted.outcome",
        "end stages need an outcome",
        at="  converted:",
    ),
    "llm-stage-without-goal": Fault(
        "flow.yaml",
        "    goal: Offer the faster plan.\n",
        "",
        "stages.pitch.goal",
        "llm stages need a goal",
        at="  pitch:",
    ),
    "scripted-stage-without-say": Fault(
        "flow.yaml",
        "    say: greeting.open\n",
        "",
        "stages.greeting.say",
        "scripted stages need a `say` script",
        at="  greeting:",
    ),
    "stage-without-way-out": Fault(
        "flow.yaml",
        PITCH_EXITS,
        "",
        "stages.pitch",
        "the stage has no way out",
        at="  pitch:",
    ),
}

# Script texts that ``str.format_map`` cannot render: the loader must report them, not crash on
# them at load time or let them crash a live call at render time.
MALFORMED_PLACEHOLDERS = {
    "unclosed-brace": "    text: Goodbye {customer_name.\n",
    "lone-closing-brace": '    text: "Goodbye }"\n',
    "positional-field": '    text: "Goodbye {}"\n',
    "bad-conversion": '    text: "Goodbye {customer_name!x}"\n',
}
MALFORMED_FAULTS = {
    name: Fault(
        "scripts.yaml", "    text: Goodbye.\n", text, f"scripts.{SCRIPT_INDEX['end.bye']}.text", ""
    )
    for name, text in MALFORMED_PLACEHOLDERS.items()
}
# A test parametrised with ``fault``: each malformed text in place of end.bye's text.
malformed_placeholder_faults = pytest.mark.parametrize(
    "fault", list(MALFORMED_FAULTS.values()), ids=list(MALFORMED_FAULTS)
)
