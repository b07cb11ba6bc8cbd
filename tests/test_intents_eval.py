"""`salesbot intents eval / train` and what they compute, on small data sets written here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from engine.cli import main
from intents import persistence
from intents.classifier import OUT_OF_SCOPE, IntentClassifier
from intents.datasets import DatasetError, load_dataset
from intents.evaluation import evaluate
from tests.conftest import INSURANCE, ROOT

AFFIRM = ["yes", "yes please", "sure", "yeah go on", "ok sure", "yep", "of course", "absolutely"]
DENY = ["no", "no thanks", "nope", "not really", "no way", "never", "not at all", "nah"]
PRICE = ["how much is it", "what does it cost", "what's the price", "how much per month",
         "is it expensive", "what's the monthly fee", "price please", "cost per month"]  # fmt: skip
OOS = ["what's the weather", "play some music", "tell me a joke", "who won the match",
       "set an alarm", "what time is it in tokyo", "book a taxi", "translate hello"]  # fmt: skip


def rows(texts, label):
    return [[t, label] for t in texts]


@pytest.fixture
def clinc_like(tmp_path):
    """A tiny data set in CLINC150's data_full.json layout."""
    data = {
        "train": rows(AFFIRM[:5], "affirm") + rows(DENY[:5], "deny") + rows(PRICE[:5], "price"),
        "val": rows(AFFIRM[5:7], "affirm") + rows(DENY[5:7], "deny") + rows(PRICE[5:7], "price"),
        "test": rows(AFFIRM[7:], "affirm") + rows(DENY[7:], "deny") + rows(PRICE[7:], "price"),
        "oos_train": rows(OOS[:4], "oos"),
        "oos_val": rows(OOS[4:6], "oos"),
        "oos_test": rows(OOS[6:], "oos"),
    }
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    return path


def test_clinc_layout_is_read_with_oos_splits(clinc_like):
    dataset = load_dataset(clinc_like)
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (19, 8, 5)
    assert (dataset.train.n_oos, dataset.val.n_oos, dataset.test.n_oos) == (4, 2, 2)
    assert OUT_OF_SCOPE in dataset.test.labels and "oos" not in dataset.test.labels


def test_csv_folder_without_validation_gets_a_carved_one(tmp_path):
    lines = ["text,category"] + [f"{t},affirm" for t in AFFIRM] + [f"{t},deny" for t in DENY]
    (tmp_path / "train.csv").write_text("\n".join(lines))
    (tmp_path / "test.csv").write_text("text,category\nyes sure,affirm\nno no,deny\n")
    dataset = load_dataset(tmp_path, val_fraction=0.25)
    assert len(dataset.val) == 4 and len(dataset.train) == 12 and "held out" in dataset.note
    assert set(dataset.val.labels) == {"affirm", "deny"}  # stratified


def test_nlu_evaluation_corpora_layout_splits_by_the_training_flag(tmp_path):
    sentences = [
        {"text": t, "intent": "affirm", "training": i % 2 == 0, "entities": []}
        for i, t in enumerate(AFFIRM)
    ]
    sentences += [{"text": t, "intent": "None", "training": True} for t in DENY]
    path = tmp_path / "ChatbotCorpus.json"
    path.write_text(json.dumps({"name": "Chatbot", "lang": "en", "sentences": sentences}))
    dataset = load_dataset(path, val_fraction=0.25)
    assert len(dataset.test) == len(AFFIRM) // 2 and set(dataset.test.labels) == {"affirm"}
    assert len(dataset.train) + len(dataset.val) == len(AFFIRM) - len(AFFIRM) // 2 + len(DENY)
    assert "None" in dataset.train.labels + dataset.val.labels  # a real class, not out of scope
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"sentences": [{"text": "hi", "intent": "greet"}]}))
    with pytest.raises(DatasetError, match=r"sentences\[0\]: expected text, intent and training"):
        load_dataset(broken)


def test_bad_data_sets_name_the_problem(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("words,tag\nhello,x\n")
    with pytest.raises(DatasetError, match="bad.csv: needs a text column"):
        load_dataset(bad)
    missing = tmp_path / "x.json"
    missing.write_text(json.dumps({"train": [["a", "b"]]}))
    with pytest.raises(DatasetError, match="no 'test' split"):
        load_dataset(missing)
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "nope.json")


def test_report_matches_a_count_by_hand(clinc_like):
    dataset = load_dataset(clinc_like)
    model = IntentClassifier(threshold=0.5, margin=0.0).fit(
        list(dataset.train.texts), list(dataset.train.labels)
    )
    report = evaluate(model, dataset.test.texts, dataset.test.labels)
    predicted = [p.intent for p in model.predict_many(dataset.test.texts)]
    truth = list(dataset.test.labels)
    inside = [i for i, t in enumerate(truth) if t != OUT_OF_SCOPE]
    outside = [i for i, t in enumerate(truth) if t == OUT_OF_SCOPE]
    assert report.in_scope_accuracy == pytest.approx(
        np.mean([predicted[i] == truth[i] for i in inside])
    )
    assert report.oos_recall == pytest.approx(
        np.mean([predicted[i] == OUT_OF_SCOPE for i in outside])
    )
    assert report.n_test == 5 and report.n_oos == 2
    assert [row.threshold for row in report.sweep][:3] == [0.0, 0.1, 0.2]
    assert report.sweep[0].rejection_rate <= report.sweep[-1].rejection_rate


def test_eval_command_on_a_data_set_writes_table_plot_and_json(clinc_like, tmp_path):
    plot, out = tmp_path / "sweep.png", tmp_path / "report.json"
    result = CliRunner().invoke(
        main,
        ["intents", "eval", "--data", str(clinc_like), "--plot", str(plot), "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "in-scope accuracy" in result.output and "Threshold sweep" in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(out.read_text())
    assert report["rule_source"] == "validation" and report["n_oos"] == 2
    assert {"oos_recall", "oos_precision", "macro_f1", "ece_raw", "ece_calibrated"} <= set(report)
    assert len(report["sweep"]) == 10


def test_eval_command_on_the_chinese_flow(tmp_path):
    """The zh flow's classifier on held-out intents.yaml examples, through the CLI."""
    out = tmp_path / "zh.json"
    result = CliRunner().invoke(
        main,
        ["intents", "eval", str(INSURANCE), "--plot", str(tmp_path / "zh.png"), "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["top1_accuracy"] > 0.7 and report["n_test"] > 100  # measured 0.79
    assert report["oos_recall"] is None  # the flow has no out-of-scope examples


def test_train_command_saves_a_loadable_model(tmp_path):
    target = tmp_path / "mini.skops"
    result = CliRunner().invoke(
        main, ["intents", "train", str(ROOT / "tests/flows/mini"), "-o", str(target)]
    )
    assert result.exit_code == 0, result.output
    assert "saved" in result.output and persistence.manifest_path(target).is_file()
    model = persistence.load(target)
    assert model.predict_one("are you a robot").intent == "ask_if_robot"


def test_cli_errors_exit_2_without_a_traceback(tmp_path):
    runner = CliRunner()
    neither = runner.invoke(main, ["intents", "eval"])
    assert neither.exit_code == 2 and "FLOW_DIR or --data" in neither.output
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    result = runner.invoke(main, ["intents", "eval", "--data", str(bad)])
    assert result.exit_code == 2 and "bad.json" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    wrong = runner.invoke(main, ["intents", "eval", "--data", str(bad), "--threshold", "x"])
    assert wrong.exit_code == 2 and "neither a number nor 'auto'" in wrong.output
