"""load_flow: the example flows load with the expected shape; every fault is located precisely."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from engine.errors import FlowProblem, FlowValidationError
from engine.flow.loader import load_flow
from tests.conftest import BROADBAND, INSURANCE
from tests.flow_faults import (
    FAULTS,
    MINI,
    Fault,
    apply_fault,
    copy_mini,
    malformed_placeholder_faults,
    matching,
)

HASH_RE = re.compile(r"^flow:v1:[0-9a-f]{64}$")


def problems_of(folder: Path) -> list[FlowProblem]:
    with pytest.raises(FlowValidationError) as info:
        load_flow(folder)
    assert info.value.problems, "FlowValidationError without problems"
    return info.value.problems


def describe(problems: list[FlowProblem]) -> str:
    return "\n".join(str(p) for p in problems)


# --- the example flows ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flow_dir", "min_intents", "min_examples", "min_scripts", "language"),
    [(BROADBAND, 15, 40, 60, "en"), (INSURANCE, 10, 30, 1, "zh")],
    ids=["broadband_en", "insurance_zh"],
)
def test_example_flow_loads_with_expected_shape(
    flow_dir, min_intents, min_examples, min_scripts, language
):
    flow = load_flow(flow_dir)

    assert flow.language == language
    assert flow.start in flow.stages
    assert flow.on_hangup in flow.stages and flow.stages[flow.on_hangup].is_end
    assert len(flow.intents) >= min_intents
    for intent, examples in flow.intents.items():
        assert len(examples) >= min_examples, intent
    assert len(flow.scripts) >= min_scripts

    assert flow.stages["pitch"].kind == "llm"
    assert flow.stages["objection"].kind == "llm"
    llm_stages = [s for s in flow.stages.values() if s.kind == "llm"]
    for stage in llm_stages:
        assert stage.goal, stage.name
        assert stage.generation is not None, stage.name
        candidates = stage.compliance.candidates
        assert candidates, f"llm stage {stage.name} has no candidate scripts"
        for script_id in candidates:
            script = flow.scripts[script_id]
            assert stage.name in script.stages or "*" in script.stages, script_id
        fallbacks = {sid for sid, _ in stage.compliance.fallback}
        fallbacks.add(stage.compliance.universal_fallback)
        assert not fallbacks & set(candidates), "fallback scripts must not be candidates"

    assert HASH_RE.match(flow.version), flow.version


FLOW_FILES = ["flow.yaml", "intents.yaml", "scripts.yaml"]


def one_edit_per_file(*edits: tuple[str, str]):
    """Parametrize (file, old, new) over FLOW_FILES: one (old, new) text edit per file, in order."""
    rows = [(file, old, new) for file, (old, new) in zip(FLOW_FILES, edits, strict=True)]
    return pytest.mark.parametrize(("file", "old", "new"), rows, ids=FLOW_FILES)


def test_content_hash_depends_on_content_not_location(tmp_path):
    original = load_flow(MINI)
    copy = load_flow(copy_mini(tmp_path))
    assert HASH_RE.match(original.version)
    assert copy.version == original.version


@one_edit_per_file(
    ("    goal: Offer the faster plan.\n", "    goal: Offer the fastest plan.\n"),
    ("    - nope\n", "    - nah\n"),
    ("    text: Goodbye.\n", "    text: Goodbye now.\n"),
)
def test_content_hash_changes_when_a_file_changes(tmp_path, file, old, new):
    folder = copy_mini(tmp_path)
    before = load_flow(folder).version
    path = folder / file
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1
    path.write_text(text.replace(old, new), encoding="utf-8")

    after = load_flow(folder).version

    assert HASH_RE.match(after)
    assert after != before


# --- one fault at a time ----------------------------------------------------------------------


@pytest.mark.parametrize("fault", list(FAULTS.values()), ids=list(FAULTS))
def test_fault_is_reported_with_file_line_and_field(tmp_path, fault: Fault):
    folder = copy_mini(tmp_path)
    line = apply_fault(folder, fault)

    problems = problems_of(folder)

    found = matching(problems, fault.problem_file, fault.field)
    assert found, f"no problem for {fault.problem_file} {fault.field!r} in:\n{describe(problems)}"
    assert any(p.line == line and fault.message in p.message for p in found), (
        f"expected {fault.problem_file}:{line}: {fault.field}: ...{fault.message}... "
        f"in:\n{describe(problems)}"
    )
    for p in found:
        assert Path(p.file) == folder / fault.problem_file


@pytest.mark.parametrize("file", FLOW_FILES)
def test_missing_file(tmp_path, file):
    folder = copy_mini(tmp_path)
    (folder / file).unlink()

    problems = problems_of(folder)

    assert [(Path(p.file), p.line, p.field) for p in problems] == [(folder / file, None, "")]
    assert "file is missing" in problems[0].message


def test_missing_folder(tmp_path):
    problems = problems_of(tmp_path / "does_not_exist")
    assert len(problems) == 1
    assert problems[0].file == str(tmp_path / "does_not_exist")
    assert "not a flow folder" in problems[0].message


@one_edit_per_file(
    ("    say: greeting.open\n", "    say: greeting.open: extra\n"),
    ("    - yes please\n", "    - yes: please: now\n"),
    ("    text: Goodbye.\n", "    text: Goodbye: now.\n"),
)
def test_yaml_syntax_error_names_file_and_line(tmp_path, file, old, new):
    folder = copy_mini(tmp_path)
    line = apply_fault(folder, Fault(file, old, new, "", ""))

    problems = problems_of(folder)

    assert len(problems) == 1, describe(problems)
    assert Path(problems[0].file) == folder / file
    assert problems[0].line == line
    assert problems[0].field == ""
    assert "YAML syntax error" in problems[0].message


def test_duplicate_key_is_reported_at_each_repeated_occurrence(tmp_path):
    """Three `agent_name:` keys: the second and the third occurrence are each a duplicate."""
    folder = copy_mini(tmp_path)
    third = apply_fault(
        folder,
        Fault(
            "flow.yaml",
            "  agent_name: Sam\n",
            "  agent_name: Sam\n  agent_name: Max\n  agent_name: Joe\n",
            "slots.agent_name",
            "duplicate key",
        ),
    )

    problems = matching(problems_of(folder), "flow.yaml", "slots.agent_name")

    assert sorted(p.line for p in problems) == [third - 1, third]


@malformed_placeholder_faults
def test_malformed_placeholder_is_a_problem_not_a_crash(tmp_path, fault):
    folder = copy_mini(tmp_path)
    line = apply_fault(folder, fault)

    problems = problems_of(folder)

    found = matching(problems, "scripts.yaml", fault.field)
    assert [p.line for p in found] == [line], describe(problems)
    assert found[0].message


# --- many faults at once ----------------------------------------------------------------------


def test_all_problems_are_reported_at_once(tmp_path):
    folder = copy_mini(tmp_path)
    faults = [
        FAULTS["unknown-stage-otherwise-then"],
        FAULTS["unknown-script-universal-fallback"],
        FAULTS["undeclared-placeholder"],
    ]
    expected = [(f, apply_fault(folder, f)) for f in faults]

    problems = problems_of(folder)

    assert len(problems) >= 3
    assert {Path(p.file).name for p in problems} >= {"flow.yaml", "scripts.yaml"}
    for fault, line in expected:
        found = matching(problems, fault.problem_file, fault.field)
        assert any(p.line == line and fault.message in p.message for p in found), (
            f"{fault.field} missing from:\n{describe(problems)}"
        )


def test_schema_problems_in_every_file_are_reported_together(tmp_path):
    folder = copy_mini(tmp_path)
    faults = [
        FAULTS["unknown-field-in-stage"],
        Fault(
            "intents.yaml",
            "    - bye\n    - goodbye\n    - I have to go now bye\n    - I'm hanging up\n",
            "    - bye\n",
            "intents.goodbye",
            "at least 2 items",
            at="  goodbye:",
        ),
        Fault("scripts.yaml", "    text: Goodbye.\n", "    text: Goodbye: now.\n", "", "YAML"),
    ]
    expected = [(f, apply_fault(folder, f)) for f in faults]

    problems = problems_of(folder)

    assert len(problems) == 3, describe(problems)
    for fault, line in expected:
        found = matching(problems, fault.problem_file, fault.field)
        assert [p.line for p in found] == [line], describe(problems)
        assert fault.message in found[0].message


def test_flow_references_are_checked_even_when_another_file_fails_its_schema(tmp_path):
    """An intents.yaml schema error must not hide flow.yaml's own broken stage references."""
    folder = copy_mini(tmp_path)
    short_intent = Fault(
        "intents.yaml",
        "    - bye\n    - goodbye\n    - I have to go now bye\n    - I'm hanging up\n",
        "    - bye\n",
        "intents.goodbye",
        "at least 2 items",
        at="  goodbye:",
    )
    faults = [short_intent, FAULTS["unknown-stage-otherwise-then"], FAULTS["unknown-stage-start"]]
    expected = [(f, apply_fault(folder, f)) for f in faults]

    problems = problems_of(folder)

    for fault, line in expected:
        found = matching(problems, fault.problem_file, fault.field)
        assert any(p.line == line and fault.message in p.message for p in found), (
            f"{fault.problem_file}:{line}: {fault.field} missing from:\n{describe(problems)}"
        )


# --- how a problem reads ----------------------------------------------------------------------


def test_flow_problem_str_is_path_line_field_message():
    problem = FlowProblem("flows/x/flow.yaml", 12, "stages.pitch.on.affirm.to", "unknown stage")
    assert str(problem) == "flows/x/flow.yaml:12: stages.pitch.on.affirm.to: unknown stage"


def test_reported_problem_str_and_error_message(tmp_path):
    folder = copy_mini(tmp_path)
    fault = FAULTS["unknown-stage-on"]
    line = apply_fault(folder, fault)

    with pytest.raises(FlowValidationError) as info:
        load_flow(folder)

    (problem,) = matching(info.value.problems, "flow.yaml", fault.field)
    assert str(problem) == (
        f"{folder / 'flow.yaml'}:{line}: stages.greeting.on.affirm.to: {problem.message}"
    )
    assert problem.message.startswith("unknown stage 'pich'")
    message = str(info.value)
    assert message.startswith(f"{len(info.value.problems)} problem(s) in flow:")
    for p in info.value.problems:
        assert f"  {p}" in message.splitlines()


def test_problem_without_line_or_field_reads_path_message(tmp_path):
    folder = copy_mini(tmp_path)
    (folder / "scripts.yaml").unlink()

    (problem,) = problems_of(folder)

    assert str(problem) == f"{folder / 'scripts.yaml'}: file is missing"


def test_copy_of_mini_is_valid(tmp_path):
    """The fault tests start from a flow that loads; otherwise they would prove nothing."""
    folder = tmp_path / "copy"
    shutil.copytree(MINI, folder)
    flow = load_flow(folder)
    assert flow.name == "mini"
    assert set(flow.stages) == {"greeting", "pitch", "converted", "refused", "hung_up"}
