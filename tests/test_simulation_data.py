"""personas.yaml and utterances.yaml: validated like a flow; the banks are held out."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.errors import FlowValidationError
from engine.flow.loader import load_flow
from engine.simulation import load_population
from engine.simulation.personas import PERSONAS_FILE, UTTERANCES_FILE
from engine.simulation.utterances import normalise_utterance
from tests.conftest import BROADBAND, INSURANCE

FLOWS = [BROADBAND, INSURANCE]
MIN_PER_INTENT = 25


@pytest.fixture(scope="module", params=FLOWS, ids=lambda p: p.name)
def loaded(request):
    flow = load_flow(request.param)
    return flow, load_population(flow)


def test_normalisation_folds_case_punctuation_width_and_spaces():
    assert normalise_utterance("Yes, speaking!") == normalise_utterance("yes   speaking")
    assert normalise_utterance("嗯，是我？") == normalise_utterance("嗯 是我?")
    assert normalise_utterance("ＹＥＳ") == "yes"
    assert normalise_utterance("no") != normalise_utterance("yes")


def test_banks_share_nothing_with_the_classifier_training_examples(loaded):
    flow, population = loaded
    training = {normalise_utterance(t): intent for intent, ex in flow.intents.items() for t in ex}
    bank = population.bank
    said = [(k, t) for k, texts in bank.intents.items() for t in texts]
    said += [("noise", t) for t in bank.noise]
    overlap = [
        (k, t, training[normalise_utterance(t)])
        for k, t in said
        if normalise_utterance(t) in training
    ]
    assert overlap == []
    assert len({normalise_utterance(t) for _, t in said}) == len(said), "duplicates in the bank"


def test_every_intent_a_customer_says_has_a_realistic_bank(loaded):
    _, population = loaded
    bank = population.bank
    for intent in population.said_intents():
        assert len(bank.intents[intent]) >= MIN_PER_INTENT, intent
    assert len(bank.noise) >= MIN_PER_INTENT
    assert "off_topic" in population.said_intents()


def test_every_act_of_the_flow_has_a_role(loaded):
    flow, population = loaded
    for script in flow.scripts.values():
        assert population.act_roles[script.act]
    assert population.role_of("universal.fallback") == "repair"


def copy_flow(tmp_path: Path, personas: str | None = None, utterances: str | None = None) -> Path:
    folder = tmp_path / "flow"
    shutil.copytree(BROADBAND, folder)
    if personas is not None:
        (folder / PERSONAS_FILE).write_text(personas, encoding="utf-8")
    if utterances is not None:
        (folder / UTTERANCES_FILE).write_text(utterances, encoding="utf-8")
    return folder


def problems_of(folder: Path) -> list[str]:
    with pytest.raises(FlowValidationError) as info:
        load_population(load_flow(folder))
    return [str(p) for p in info.value.problems]


PERSONAS = """\
moves:
  price: {intent: price_objection, answered_by: [handle_price_objection]}
personas:
  a:
    weight: 0.5
    interest: 0.5
    patience: 0.8
    objections: {price: 0.5}
  b:
    weight: 0.5
    interest: 0.2
    patience: 0.9
"""


def test_a_minimal_personas_file_loads(tmp_path):
    population = load_population(load_flow(copy_flow(tmp_path, PERSONAS)))
    assert list(population.personas) == ["a", "b"] and population.max_turns == 30
    assert population.personas["b"].off_topic == 0.0


def test_errors_name_file_line_and_field(tmp_path):
    bad = (
        PERSONAS.replace("interest: 0.5", "interest: 1.5")
        .replace("weight: 0.5\n    interest: 0.2", "weight: 0.4\n    interest: 0.2")
        .replace("objections: {price: 0.5}", "objections: {price: 0.5, email: 0.2}")
        .replace("answered_by: [handle_price_objection]", "answered_by: [haggle]")
    )
    folder = copy_flow(tmp_path, bad)
    found = problems_of(folder)
    where = str(folder / PERSONAS_FILE)
    assert any(
        p.startswith(f"{where}:6: personas.a.interest:") and "less than or equal to 1" in p
        for p in found
    ), found
    # the schema error stops the cross-file checks; fix it and the others are all reported
    folder = copy_flow(tmp_path / "2", bad.replace("interest: 1.5", "interest: 0.5"))
    found = problems_of(folder)
    where = str(folder / PERSONAS_FILE)
    assert f"{where}:2: moves.price.answered_by.0: no script in the flow has act 'haggle'" in found
    assert f"{where}:3: personas: persona weights sum to 0.9, not 1" in found
    assert any(
        p.startswith(f"{where}:8: personas.a.objections.email: unknown move 'email'") for p in found
    )


def test_unknown_intents_acts_and_missing_banks_are_reported(tmp_path):
    personas = PERSONAS.replace(
        "moves:", "intents: {describe_needs: rambling}\nacts: {shout: sell}\nmoves:"
    )
    utterances = "intents:\n  affirm: [yes indeed]\n  grumble: [harrumph]\n"
    folder = copy_flow(tmp_path, personas, utterances)
    found = "\n".join(problems_of(folder))
    assert "intents.describe_needs: intent 'rambling' is not in intents.yaml" in found
    assert "acts.shout: no script in the flow has act 'shout'" in found
    assert "intents.grumble: intent 'grumble' is not in intents.yaml" in found
    assert "no utterances for intent 'price_objection', which customers say" in found
    assert "slot 'customer_name' has no default in flow.yaml: list values" in found


def test_missing_files_and_bad_yaml(tmp_path):
    folder = copy_flow(tmp_path)
    (folder / PERSONAS_FILE).unlink()
    (folder / UTTERANCES_FILE).write_text("intents: [unclosed\n", encoding="utf-8")
    found = problems_of(folder)
    assert f"{folder / PERSONAS_FILE}: file is missing" in found
    assert any(p.startswith(f"{folder / UTTERANCES_FILE}:") and "YAML syntax" in p for p in found)


def test_adjusted_population_changes_numbers_and_version(loaded):
    _, population = loaded
    impatient = population.adjusted(set_to={"patience": 0.2}, scale={"interest": 2.0})
    assert all(p.patience == 0.2 for p in impatient.personas.values())
    for name, persona in population.personas.items():
        assert impatient.personas[name].interest == min(1.0, persona.interest * 2)
    assert impatient.version != population.version
    with pytest.raises(ValueError):
        population.adjusted(set_to={"patience": 2.0})
