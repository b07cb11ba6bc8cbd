"""The demo caller's lines: a flow's demo.yaml (validated, located errors) or its utterance bank."""

from __future__ import annotations

import shutil

import pytest

from engine.errors import FlowValidationError
from engine.flow.loader import load_flow
from engine.simulation.demo_lines import load_demo
from tests.conftest import BROADBAND, INSURANCE
from tests.test_cli import invoke


def copy_flow(src, tmp_path, demo: str | None):
    folder = tmp_path / src.name
    shutil.copytree(src, folder)
    if demo is None:
        (folder / "demo.yaml").unlink()
    else:
        (folder / "demo.yaml").write_text(demo, encoding="utf-8")
    return folder


def test_demo_yaml_gives_the_lines_and_slots_in_order():
    script = load_demo(load_flow(INSURANCE))
    assert script.source.endswith("insurance_zh/demo.yaml")
    assert script.lines[0] == "对，我就是张伟" and len(script.lines) == 7
    assert script.slots == {"customer_name": "张伟"}


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ("demo:\n  - yes\n  - ''\n", 3, "demo.1", "at least 1 character"),
        ("demo: []\n", 1, "demo", "at least 1 item"),
        ("demo: [yes]\nslots:\n  nickname: Al\n", 3, "slots.nickname", "not a slot in flow.yaml"),
        ("demo: [yes]\ncaller: Bob\n", 2, "caller", "Extra inputs are not permitted"),
        ("demo: [yes\n", 2, "", "YAML syntax error"),
    ],
)
def test_a_broken_demo_yaml_names_file_line_and_field(tmp_path, text, line, field, message):
    flow = load_flow(copy_flow(BROADBAND, tmp_path, text))
    with pytest.raises(FlowValidationError) as caught:
        load_demo(flow)
    [problem] = caught.value.problems
    assert problem.file.endswith("demo.yaml") and problem.line == line
    assert problem.field == field and message in problem.message


def test_the_cli_exits_2_on_a_broken_demo_yaml_before_loading_models(tmp_path):
    folder = copy_flow(BROADBAND, tmp_path, "demo:\n  - yes\n  - 3\n")
    result = invoke("demo", str(folder), "--db", f"sqlite:///{tmp_path / 'x.db'}")
    assert result.exit_code == 2
    assert "demo.yaml:3: demo.1: Input should be a valid string" in result.output


@pytest.mark.parametrize("src", [BROADBAND, INSURANCE], ids=["broadband_en", "insurance_zh"])
def test_without_demo_yaml_the_bank_walks_to_the_llm_stage(tmp_path, src):
    """The bank's first utterance of each intent on the shortest path from the start stage to
    the first llm stage, then on to a converted end."""
    flow = load_flow(copy_flow(src, tmp_path, None))
    script = load_demo(flow)
    assert script.source.endswith("utterances.yaml")
    from engine.simulation.personas import load_population

    bank = load_population(flow).bank
    stage, reached = flow.start, []
    for text in script.lines:
        [intent] = [i for i, texts in bank.intents.items() if texts and texts[0] == text]
        stage = flow.transition_for(flow.stages[stage], intent).to
        reached.append(stage)
    assert "pitch" in reached and reached[-1] == "converted"
    assert flow.stages[reached[reached.index("pitch")]].kind == "llm"
    assert script.slots["customer_name"] == bank.slots["customer_name"][0]
