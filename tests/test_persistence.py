"""Cached classifiers: reused when the examples match, refused when the file was altered."""

from __future__ import annotations

import pytest

from intents import persistence
from intents.classifier import IntentClassifier

EXAMPLES = {"affirm": ["yes", "sure", "yep"], "deny": ["no", "nope", "no thanks"]}


def cached_files(cache_dir):
    return sorted(p for p in cache_dir.iterdir() if p.suffix == ".joblib")


def test_trains_once_then_loads_from_cache(tmp_path, monkeypatch):
    first = persistence.load_or_train(EXAMPLES, language="en", cache_dir=tmp_path)
    assert len(cached_files(tmp_path)) == 1

    def no_training(self, X, y):
        raise AssertionError("retrained although a valid cache entry exists")

    monkeypatch.setattr(IntentClassifier, "fit", no_training)
    second = persistence.load_or_train(EXAMPLES, language="en", cache_dir=tmp_path)
    assert second.predict_one("yes").ranking == first.predict_one("yes").ranking


def test_changed_examples_retrain(tmp_path):
    persistence.load_or_train(EXAMPLES, language="en", cache_dir=tmp_path)
    changed = {**EXAMPLES, "deny": [*EXAMPLES["deny"], "not at all"]}
    persistence.load_or_train(changed, language="en", cache_dir=tmp_path)
    assert len(cached_files(tmp_path)) == 2


@pytest.mark.parametrize("damage", ["append", "manifest"])
def test_tampered_cache_is_never_loaded(tmp_path, monkeypatch, damage):
    persistence.load_or_train(EXAMPLES, language="en", cache_dir=tmp_path)
    (path,) = cached_files(tmp_path)
    if damage == "append":
        path.write_bytes(path.read_bytes() + b"evil")
    else:
        path.with_suffix(".manifest.json").write_text('{"key": "x"}')
    loaded = []
    monkeypatch.setattr(persistence.joblib, "load", lambda p: loaded.append(p))
    model = persistence.load_or_train(EXAMPLES, language="en", cache_dir=tmp_path)
    assert loaded == [] and model.predict_one("yes").top_intent == "affirm"
