"""The README's commands are the ones CI runs."""

import re

from tests.conftest import ROOT

SETUP = "python3 -m venv .venv && "
CHROMIUM = (
    "command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) && "
)


def readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if SETUP in line and not line.startswith(("#", "`"))]


def test_readme_has_exactly_two_setup_commands():
    commands = readme_commands()
    assert len(commands) == 2
    assert re.search(
        r"HF_HUB_OFFLINE=1 salesbot simulate flows/broadband_en --arms hybrid,pure_llm "
        r"--n \d+ --seed 7$",
        commands[0],
    )
    assert commands[0].startswith(SETUP)
    # The test command installs what the tests need beyond pip, headless Chromium included.
    assert commands[1].startswith(CHROMIUM + SETUP)
    assert commands[1].endswith("HF_HUB_OFFLINE=1 python -m pytest -q")


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").rstrip("\n").splitlines()
    assert ci[-1] == readme_commands()[1]
