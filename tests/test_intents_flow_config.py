"""The flow's `classifier:` block: model choice, `auto` rules and an explicit OOS class."""

from __future__ import annotations

import pytest

from engine.errors import FlowValidationError
from engine.flow.classifier import flow_classifier
from engine.flow.loader import load_flow
from intents import OUT_OF_SCOPE
from tests.flow_faults import copy_mini


def with_classifier(tmp_path, block: str, extra_intents: str = ""):
    folder = copy_mini(tmp_path)
    flow_yaml = folder / "flow.yaml"
    flow_yaml.write_text(flow_yaml.read_text() + "classifier:\n" + block)
    if extra_intents:
        intents = folder / "intents.yaml"
        intents.write_text(intents.read_text() + extra_intents)
    return folder


def test_classifier_block_compiles_into_the_flow(tmp_path):
    folder = with_classifier(
        tmp_path,
        "  model: tfidf+minilm\n  threshold: auto\n  margin: 0.05\n"
        "  calibrate: false\n  max_accuracy_drop: 0.02\n",
    )
    flow = load_flow(folder)
    assert flow.classifier_model == "tfidf+minilm"
    assert (flow.classifier_threshold, flow.classifier_margin) == ("auto", 0.05)
    assert flow.classifier_calibrate is False and flow.classifier_max_accuracy_drop == 0.02


@pytest.mark.parametrize(
    "block", ["  model: bert\n", "  threshold: high\n", "  margin: 1.5\n", "  calibrate: maybe\n"]
)
def test_bad_classifier_settings_name_file_line_and_field(tmp_path, block):
    with pytest.raises(FlowValidationError) as caught:
        load_flow(with_classifier(tmp_path, block))
    problems = caught.value.problems
    assert problems and all(p.file.endswith("flow.yaml") and p.line for p in problems)
    assert all(p.field.startswith("classifier.") for p in problems)


def test_out_of_scope_examples_in_intents_yaml_train_an_explicit_class(tmp_path):
    oos = "\n".join(
        f"    - {t}"
        for t in ["what's the weather", "play some music", "tell me a joke", "book a taxi"]
    )
    folder = with_classifier(tmp_path, "  threshold: 0.0\n  margin: 0.0\n",
                             f"  {OUT_OF_SCOPE}:\n{oos}\n")  # fmt: skip
    flow = load_flow(folder)
    model = flow_classifier(flow, cache_dir=tmp_path / "cache")
    assert model.has_oos_class_
    assert model.predict_one("what is the weather like").rejected_by == "oos_class"
    assert model.predict_one("yes please").intent == "affirm"
