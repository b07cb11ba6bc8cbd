"""Scripts carry their consequences: effects and preconditions in scripts.yaml, compiled,
applied, and validated with file, line and field (`salesbot validate` exits 2)."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from engine import effects
from engine.cli import main
from engine.flow.loader import load_flow
from tests.conftest import BROADBAND, INSURANCE

FLOW = load_flow(BROADBAND)


def test_broadband_scripts_declare_their_effects():
    scripts = FLOW.scripts
    assert scripts["callback.agree"].ends == "callback"
    assert scripts["identity.refused"].ends == "refused"
    assert scripts["end.converted"].ends == "converted"
    assert scripts["end.converted"].requires == ("accepted",)
    assert scripts["pitch.intro"].requires == ("identity_passed",)
    assert scripts["pitch.intro"].sets == ("offered",)
    assert scripts["close.confirm"].requires == ("offered",)
    assert scripts["objection.last_ask"].once is True
    # every goodbye ends the call; nothing that is not a goodbye does
    assert {s.id for s in scripts.values() if s.act == "goodbye"} == {
        s.id for s in scripts.values() if s.ends
    }
    assert {m.name for m in FLOW.milestones} == {"identity_passed", "identity_refused", "accepted"}


def test_each_fallback_wording_has_the_act_it_performs():
    for flow in (FLOW, load_flow(INSURANCE)):
        for stage in flow.stages.values():
            if stage.compliance is None:
                continue
            for script_id, _ in stage.compliance.fallback:
                assert flow.scripts[script_id].act != "repair", script_id
        assert flow.scripts[flow.stages["pitch"].compliance.universal_fallback].act == "repair"


def test_a_script_is_a_candidate_only_when_its_preconditions_hold():
    pitch, last_ask = FLOW.scripts["pitch.intro"], FLOW.scripts["objection.last_ask"]
    assert effects.missing(pitch, ()) == ("identity_passed",)
    assert not effects.may_say(pitch, (), ())
    assert effects.may_say(pitch, {"identity_passed"}, ())
    assert effects.may_say(last_ask, {"identity_passed", "offered"}, ())
    assert not effects.may_say(last_ask, {"identity_passed", "offered"}, {"objection.last_ask"})
    ids = ["greeting.open", "pitch.intro", "objection.last_ask", "close.confirm"]
    assert effects.available(FLOW, ids, (), ()) == ("greeting.open",)
    assert effects.available(FLOW, ids, {"identity_passed"}, ()) == ("greeting.open", "pitch.intro")
    flags, said = effects.apply(pitch, {"identity_passed"}, ())
    assert flags == {"identity_passed", "offered"} and said == {"pitch.intro"}
    assert effects.available(FLOW, ids, flags, {"objection.last_ask"}) == (
        "greeting.open",
        "pitch.intro",
        "close.confirm",
    )


def _broken(tmp_path, file: str, old: str, new: str):
    folder = tmp_path / "flow"
    shutil.copytree(BROADBAND, folder)
    path = folder / file
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
    return folder, path


@pytest.mark.parametrize(
    ("file", "old", "new", "field", "message"),
    [
        (
            "scripts.yaml",
            "    ends: callback\n    text: \"No problem at all, I'll arrange",
            "    ends: call_back_later\n    text: \"No problem at all, I'll arrange",
            "scripts.{i}.ends",
            "unknown outcome 'call_back_later'",
        ),
        (
            "scripts.yaml",
            "    requires: [identity_passed]\n    text: \"Thank you, that's all confirmed.",
            "    requires: [identity_checked]\n    text: \"Thank you, that's all confirmed.",
            "scripts.{i}.requires.0",
            "flag 'identity_checked' is never set",
        ),
        (
            "flow.yaml",
            "  identity_refused: {stage: identity, intents: [refuse_identity]}\n",
            "  identity_refused: {stage: identity, intents: [refuse_identity], ends: gone}\n",
            "milestones.identity_refused.ends",
            "unknown outcome 'gone'",
        ),
        (
            "flow.yaml",
            "  identity_refused: {stage: identity, intents: [refuse_identity]}\n",
            "  identity_refused: {stage: identity, intents: [refuses]}\n",
            "milestones.identity_refused.intents.0",
            "intent 'refuses' is not in intents.yaml",
        ),
    ],
)
def test_broken_effects_exit_2_with_file_line_and_field(tmp_path, file, old, new, field, message):
    folder, path = _broken(tmp_path, file, old, new)
    text = path.read_text(encoding="utf-8")
    changed = next(
        line
        for line in new.splitlines()
        if line.strip().startswith(("ends", "requires", "identity_refused"))
    )
    line = text.splitlines().index(changed) + 1
    ids = [raw.split("id: ", 1)[1] for raw in text.splitlines() if raw.startswith("  - id: ")]
    index = {"call_back_later": "callback.agree", "identity_checked": "identity.thanks"}
    key = next((v for k, v in index.items() if k in new), None)
    field = field.format(i=ids.index(key) if key else "")

    result = CliRunner().invoke(main, ["validate", str(folder)])

    assert result.exit_code == 2, result.output
    assert f"{path}:{line}: {field}: " in result.output
    assert message in result.output
