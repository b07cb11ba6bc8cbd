"""The README's commands are the ones CI runs."""

import re

from tests.conftest import ROOT


def readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.startswith("python3 -m venv .venv && ")]


def test_readme_has_exactly_two_setup_commands():
    commands = readme_commands()
    assert len(commands) == 2
    assert re.search(
        r"HF_HUB_OFFLINE=1 salesbot simulate flows/broadband_en --arms hybrid,pure_llm "
        r"--n \d+ --seed 7$",
        commands[0],
    )
    assert "pytest" in commands[1]


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert readme_commands()[1] in ci
