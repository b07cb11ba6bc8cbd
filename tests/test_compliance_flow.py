"""The compliance fields of flow.yaml and scripts.yaml: compiled, and validated with lines."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.errors import FlowValidationError
from engine.flow.loader import load_flow
from tests.flow_faults import copy_mini

FLOW_RULES = (
    "  threshold: 0.5\n"
    "  margin: 0.05\n"
    "  forbidden:\n"
    "    phrases: [risk free, guaranteed]\n"
    "    patterns: ['\\d+\\s*%\\s*off']\n"
)
STAGE_COMPLIANCE = (
    "    compliance: {threshold: 0.5, fallback: {pitch.fallback_a: 0.5, pitch.fallback_b: 0.5}}\n"
)


def mutate(folder: Path, file: str, old: str, new: str) -> str:
    path = folder / file
    text = path.read_text()
    assert text.count(old) == 1, old
    text = text.replace(old, new)
    path.write_text(text)
    return text


def line_of(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


def problems(folder: Path):
    with pytest.raises(FlowValidationError) as caught:
        load_flow(folder)
    return caught.value.problems


def test_rules_and_margin_compile_into_each_stage_policy(tmp_path):
    folder = copy_mini(tmp_path)
    mutate(folder, "flow.yaml", "  threshold: 0.5\n", FLOW_RULES)
    mutate(
        folder,
        "flow.yaml",
        STAGE_COMPLIANCE,
        STAGE_COMPLIANCE.replace("}}\n", "},\n")
        + "                 margin: 0.2, forbidden: {phrases: [guaranteed, no catch]}}\n",
    )
    flow = load_flow(folder)
    pitch, greeting = flow.stages["pitch"].compliance, flow.stages["greeting"].compliance
    assert pitch.forbidden_phrases == ("risk free", "guaranteed", "no catch")
    assert pitch.forbidden_patterns == (r"\d+\s*%\s*off",)
    assert (pitch.margin, greeting.margin) == (0.2, 0.05)
    assert greeting.forbidden_phrases == ("risk free", "guaranteed")
    assert flow.early_stop == 2


@pytest.mark.parametrize(
    ("new", "fragment", "field", "message"),
    [
        (
            "  threshold: 0.5\n  forbidden: {patterns: ['(unclosed']}\n",
            "(unclosed",
            "compliance.forbidden.patterns.0",
            "invalid regular expression",
        ),
        (
            "  threshold: 0.5\n  forbidden: {patterns: [ok, 'x*']}\n",
            "x*",
            "compliance.forbidden.patterns.1",
            "matches the empty string",
        ),
        (
            "  threshold: 0.5\n  early_stop: 3\n  embedder: word2vec\n",
            "word2vec",
            "compliance.embedder",
            "unknown embedder 'word2vec' (known: minilm, tfidf-char)",
        ),
        (
            "  threshold: 0.5\n  forbidden: {phrases: [eight pounds]}\n",
            "eight pounds",
            "compliance.forbidden.phrases.0",
            "matches approved script 'pitch.speed' of stage 'pitch'",
        ),
        (
            "  threshold: 0.5\n  margin: 1.5\n",
            "margin: 1.5",
            "compliance.margin",
            "less than or equal to 1",
        ),
    ],
)
def test_bad_flow_level_rules_are_reported_with_line_and_field(
    tmp_path, new, fragment, field, message
):
    folder = copy_mini(tmp_path)
    mutate(folder, "flow.yaml", "  embedder: tfidf-char\n", "")
    text = mutate(folder, "flow.yaml", "  threshold: 0.5\n", new)
    [problem] = problems(folder)
    assert problem.file.endswith("flow.yaml") and problem.field == field
    assert message in problem.message and problem.line == line_of(text, fragment)


def test_bad_stage_pattern_names_the_stage(tmp_path):
    folder = copy_mini(tmp_path)
    new = (
        STAGE_COMPLIANCE.replace("}}\n", "},\n")
        + "                 forbidden: {patterns: ['[a-']}}\n"
    )
    text = mutate(folder, "flow.yaml", STAGE_COMPLIANCE, new)
    [problem] = problems(folder)
    assert problem.field == "stages.pitch.compliance.forbidden.patterns.0"
    assert problem.line == line_of(text, "[a-")


def test_a_flow_rule_that_only_clashes_in_another_stage_is_still_caught(tmp_path):
    folder = copy_mini(tmp_path)
    # "speaking with" is in the greeting scripts, which the pure-LLM arm matches drafts against.
    mutate(
        folder,
        "flow.yaml",
        "  threshold: 0.5\n",
        "  threshold: 0.5\n  forbidden: {phrases: [speaking with]}\n",
    )
    [problem] = problems(folder)
    assert "stage 'greeting'" in problem.message


def test_wordings_are_checked_like_script_texts(tmp_path):
    folder = copy_mini(tmp_path)
    anchor = "    text: Would you like me to upgrade you to the faster plan today?\n"
    text = mutate(
        folder,
        "scripts.yaml",
        anchor,
        anchor + "    wordings:\n      - Shall I upgrade you, {first_name}?\n      - 'Broken {'\n",
    )
    found = {(p.field, p.line): p.message for p in problems(folder)}
    assert found == {
        ("scripts.3.wordings.0", line_of(text, "{first_name}")): (
            "placeholder {first_name} is not a slot in flow.yaml"
        ),
        ("scripts.3.wordings.1", line_of(text, "Broken {")): found[
            ("scripts.3.wordings.1", line_of(text, "Broken {"))
        ],
    }
    assert "malformed placeholder" in found[("scripts.3.wordings.1", line_of(text, "Broken {"))]


def test_validate_cli_exits_2_on_a_bad_pattern(tmp_path):
    folder = copy_mini(tmp_path)
    mutate(
        folder,
        "flow.yaml",
        "  threshold: 0.5\n",
        "  threshold: 0.5\n  forbidden: {patterns: ['(']}\n",
    )
    result = CliRunner().invoke(main, ["validate", str(folder)])
    assert result.exit_code == 2 and "compliance.forbidden.patterns.0" in result.output
    assert "Traceback" not in result.output
