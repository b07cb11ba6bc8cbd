"""The `salesbot` command: validate, schema and the slot parsing of chat (no models loaded)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.flow.loader import load_flow
from tests.conftest import BROADBAND, INSURANCE, ROOT
from tests.flow_faults import (
    FAULTS,
    Fault,
    apply_fault,
    copy_mini,
    malformed_placeholder_faults,
)

CLI_FAULTS = [
    "unknown-stage-on",
    "unknown-script-fallback-pool",
    "intent-removed-from-intents-yaml",
    "top-p-1.5",
    "fallback-weights-not-1",
    "duplicate-script-id",
    "unknown-field-in-stage",
    "stage-without-way-out",
]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def squeeze(text: str) -> str:
    """Output without colour codes and whitespace, immune to terminal width and colour."""
    return "".join(ANSI.sub("", text).split())


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- validate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flow_dir", [BROADBAND, INSURANCE], ids=["broadband_en", "insurance_zh"])
def test_validate_example_flow_exits_0(flow_dir):
    flow = load_flow(flow_dir)

    result = invoke("validate", str(flow_dir))

    assert result.exit_code == 0, result.output
    out = squeeze(result.output)
    assert out.startswith("ok")
    assert f"{flow.name}({flow.language})" in out
    assert f"{len(flow.scripts)}scripts" in out
    assert f"version{flow.version}" in out


def test_validate_relative_path_from_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = invoke("validate", "flows/broadband_en")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("name", CLI_FAULTS)
def test_validate_broken_flow_exits_2_with_location(tmp_path, name):
    fault = FAULTS[name]
    folder = copy_mini(tmp_path)
    line = apply_fault(folder, fault)

    result = invoke("validate", str(folder))

    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert f"{folder / fault.problem_file}:{line}: {fault.field}: " in result.output
    assert fault.message in result.output
    assert result.stdout == ""  # the problems go to stderr


def test_validate_reports_every_problem(tmp_path):
    folder = copy_mini(tmp_path)
    faults = [FAULTS["unknown-stage-otherwise-then"], FAULTS["undeclared-placeholder"]]
    lines = [apply_fault(folder, f) for f in faults]

    result = invoke("validate", str(folder))

    assert result.exit_code == 2, result.output
    for fault, line in zip(faults, lines, strict=True):
        assert f"{folder / fault.problem_file}:{line}: {fault.field}: " in result.output


def test_validate_yaml_syntax_error_exits_2(tmp_path):
    folder = copy_mini(tmp_path)
    line = apply_fault(
        folder,
        Fault("scripts.yaml", "    text: Goodbye.\n", "    text: Goodbye: now.\n", "", ""),
    )

    result = invoke("validate", str(folder))

    assert result.exit_code == 2, result.output
    assert f"{folder / 'scripts.yaml'}:{line}: YAML syntax error" in result.output
    assert "Traceback" not in result.output


def test_validate_missing_file_exits_2(tmp_path):
    folder = copy_mini(tmp_path)
    (folder / "intents.yaml").unlink()

    result = invoke("validate", str(folder))

    assert result.exit_code == 2, result.output
    assert f"{folder / 'intents.yaml'}: file is missing" in result.output


def test_validate_nonexistent_folder_exits_2(tmp_path):
    missing = tmp_path / "no_such_flow"

    result = invoke("validate", str(missing))

    assert result.exit_code == 2, result.output
    assert f"{missing}: not a flow folder" in result.output
    assert "Traceback" not in result.output


def test_validate_subprocess_valid_flow():
    flow = load_flow(BROADBAND)

    proc = run_cli("validate", "flows/broadband_en")

    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert f"version{flow.version}" in squeeze(proc.stdout)


@pytest.mark.parametrize("name", ["unknown-stage-global", "temperature-0-with-sampling-stage"])
def test_validate_subprocess_broken_flow(tmp_path, name):
    fault = FAULTS[name]
    folder = copy_mini(tmp_path)
    line = apply_fault(folder, fault)

    proc = run_cli("validate", str(folder))

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{folder / fault.problem_file}:{line}: {fault.field}: " in proc.stderr
    assert fault.message in proc.stderr


@malformed_placeholder_faults
def test_validate_subprocess_malformed_placeholder_exits_2_without_traceback(tmp_path, fault):
    folder = copy_mini(tmp_path)
    line = apply_fault(folder, fault)

    proc = run_cli("validate", str(folder))

    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{folder / 'scripts.yaml'}:{line}: {fault.field}: " in proc.stderr


def test_console_script_entry_point_is_the_click_group():
    """`salesbot` (pyproject [project.scripts]) is installed and runs engine.cli.main."""
    (script,) = entry_points(group="console_scripts", name="salesbot")
    assert script.value == "engine.cli:main"
    assert script.load() is main


# --- schema -----------------------------------------------------------------------------------


def schema_of(*args: str) -> dict:
    result = invoke("schema", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _resolve(node: dict, root: dict) -> dict:
    ref = node.get("$ref")
    if ref is None:
        return node
    assert ref.startswith("#/$defs/"), ref
    return _resolve(root["$defs"][ref.removeprefix("#/$defs/")], root)


def _types(node: dict, root: dict) -> set[str]:
    """The JSON types a schema node accepts (following $ref and anyOf/oneOf)."""
    node = _resolve(node, root)
    types = set()
    if "type" in node:
        types |= {node["type"]} if isinstance(node["type"], str) else set(node["type"])
    for key in ("anyOf", "oneOf"):
        for branch in node.get(key, []):
            types |= _types(branch, root)
    return types


def _map_values(node: dict, root: dict) -> dict:
    """The schema of the values of a name -> value mapping."""
    node = _resolve(node, root)
    (value,) = node["patternProperties"].values()
    return value


def test_schema_default_is_flow_yaml():
    schema = schema_of()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["type"] == "object"
    assert {"flow", "start", "stages", "compliance", "global", "llm"} <= set(schema["properties"])
    assert {"flow", "start", "stages"} <= set(schema["required"])
    assert schema_of("flow.yaml") == schema


def test_schema_stage_definition_matches_the_format():
    schema = schema_of("flow.yaml")
    stage = _map_values(schema["properties"]["stages"], schema)
    stage = _resolve(stage, schema)
    assert stage["additionalProperties"] is False
    assert stage["properties"]["kind"]["enum"] == ["scripted", "llm", "end"]
    assert {"say", "goal", "on", "otherwise", "generation", "compliance", "outcome"} <= set(
        stage["properties"]
    )


@pytest.mark.parametrize("where", ["stage on", "global"])
def test_schema_accepts_the_transition_shorthand(where):
    """`affirm: pitch` (a bare stage name) is valid flow.yaml; an editor must not flag it."""
    schema = schema_of("flow.yaml")
    if where == "global":
        transitions = schema["properties"]["global"]
    else:
        stage = _resolve(_map_values(schema["properties"]["stages"], schema), schema)
        transitions = stage["properties"]["on"]
    value = _map_values(transitions, schema)
    assert {"string", "object"} <= _types(value, schema)


def test_schema_scripts_yaml():
    schema = schema_of("scripts.yaml")
    assert "scripts" in schema["properties"]
    assert schema["required"] == ["scripts"]
    assert schema["title"] == "salesbot scripts.yaml"
    item = _resolve(schema["properties"]["scripts"]["items"], schema)
    assert {"id", "stages", "act", "text"} <= set(item["properties"])


def test_schema_intents_yaml():
    schema = schema_of("intents.yaml")
    assert "intents" in schema["properties"]
    examples = _map_values(schema["properties"]["intents"], schema)
    assert examples["type"] == "array"
    assert examples["minItems"] == 2


def test_schema_unknown_file_exits_2():
    result = invoke("schema", "nope.yaml")
    assert result.exit_code == 2
    assert "nope.yaml" in result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""


# --- chat: the slot option is parsed before anything is loaded -------------------------------


def test_chat_slot_without_equals_is_a_usage_error(tmp_path):
    # the flow folder does not exist: getting the slot error proves nothing was loaded first
    result = invoke("chat", str(tmp_path / "no_such_flow"), "--slot", "customer_name")
    assert result.exit_code == 2, result.output
    assert "--slot expects NAME=VALUE, got 'customer_name'" in result.output
    assert "not a flow folder" not in result.output


def test_chat_slot_without_name_is_a_usage_error(tmp_path):
    result = invoke("chat", str(tmp_path / "no_such_flow"), "--slot", "=Alex")
    assert result.exit_code == 2, result.output
    assert "--slot expects NAME=VALUE, got '=Alex'" in result.output


def test_chat_session_id_outside_the_apis_pattern_is_a_usage_error(tmp_path):
    result = invoke("chat", str(tmp_path / "no_such_flow"), "--session", "a b")
    assert result.exit_code == 2, result.output
    assert "--session 'a b': 1 to 64 letters, digits" in result.output
    assert "not a flow folder" not in result.output


def test_chat_with_broken_flow_exits_2_before_loading_models(tmp_path):
    folder = copy_mini(tmp_path)
    line = apply_fault(folder, FAULTS["unknown-stage-start"])

    result = invoke("chat", str(folder), "--slot", "customer_name=Alex")

    assert result.exit_code == 2, result.output
    assert f"{folder / 'flow.yaml'}:{line}: start: unknown stage 'welcome'" in result.output


# -- demo: the caller's lines come from the flow ---------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("flow_dir", [BROADBAND, INSURANCE], ids=["broadband_en", "insurance_zh"])
def test_demo_speaks_the_flows_language_and_reaches_its_llm_stage(flow_dir, tmp_path):
    """The example flows' demos (their demo.yaml) reach the pitch stage; the stored transcript
    says so, and the insurance demo's caller speaks Chinese."""
    from sqlalchemy import select

    from engine.simulation.demo_lines import load_demo
    from storage import Store
    from storage.models import Conversation

    db = f"sqlite:///{tmp_path / 'demo.db'}"
    result = invoke("demo", str(flow_dir), "--db", db, "--backend", "script-sampler")
    assert result.exit_code == 0, result.output
    store = Store(db)
    with store.engine.connect() as conn:
        [session] = conn.execute(select(Conversation.id)).scalars().all()
    script = load_demo(load_flow(flow_dir))
    turns = store.turns(session)
    stages = [t.stage for t in turns]
    assert "pitch" in stages, stages
    said = [t.user_text for t in turns[1:]]
    assert said == list(script.lines[: len(said)])
    assert turns[0].reply_text and script.slots["customer_name"] in turns[0].reply_text
    if flow_dir == INSURANCE:
        assert all(re.search(r"[\u4e00-\u9fff]", line) for line in script.lines)


def test_bounded_int_option_shows_its_default_and_refuses_out_of_range():
    import click

    from engine.cli.common import bounded_int_option

    @click.command()
    @bounded_int_option("--wait", default=120, low=5, high=3600, help="Seconds to wait.")
    def command(wait: int) -> None:
        click.echo(f"wait={wait}")

    runner = CliRunner()
    assert runner.invoke(command, []).output == "wait=120\n"
    assert "[default: 120; 5<=x<=3600]" in runner.invoke(command, ["--help"]).output
    refused = runner.invoke(command, ["--wait", "4"])
    assert refused.exit_code == 2 and "'--wait': 4 is not in the range 5<=x<=3600" in refused.output
