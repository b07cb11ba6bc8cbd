"""Saved classifiers: reused when the examples match, refused when the file cannot be trusted."""

from __future__ import annotations

import json

import pytest
import skops.io as sio

from intents import persistence
from intents.classifier import IntentClassifier
from intents.persistence import ModelIntegrityError

EXAMPLES = {"affirm": ["yes", "sure", "yep"], "deny": ["no", "nope", "no thanks"]}


class Payload:
    """A type no model file may contain (stands in for anything a crafted file could name)."""


def cached_files(cache_dir):
    return sorted(p for p in cache_dir.iterdir() if p.suffix == persistence.MODEL_SUFFIX)


def test_trains_once_then_loads_from_cache(tmp_path, monkeypatch):
    first = persistence.load_or_train(EXAMPLES, language="en", cache_dir=tmp_path)
    assert len(cached_files(tmp_path)) == 1

    def no_training(self, *args, **kwargs):
        raise AssertionError("retrained although a valid cache entry exists")

    monkeypatch.setattr(IntentClassifier, "fit", no_training)
    second = persistence.load_or_train(EXAMPLES, language="en", cache_dir=tmp_path)
    assert second.predict_one("yes").ranking == first.predict_one("yes").ranking
    assert second.temperature_ == first.temperature_ and second.rule_ == first.rule_


def test_changed_examples_or_settings_retrain(tmp_path):
    persistence.load_or_train(EXAMPLES, language="en", cache_dir=tmp_path)
    changed = {**EXAMPLES, "deny": [*EXAMPLES["deny"], "not at all"]}
    persistence.load_or_train(changed, language="en", cache_dir=tmp_path)
    persistence.load_or_train(changed, language="en", threshold=0.5, cache_dir=tmp_path)
    assert len(cached_files(tmp_path)) == 3


def test_tampered_model_file_is_refused_with_a_clear_error(tmp_path):
    model = IntentClassifier().fit(["yes", "sure", "no", "nope"], ["a", "a", "d", "d"])
    path = persistence.save(model, tmp_path / "m.skops")
    path.write_bytes(path.read_bytes() + b"evil")
    with pytest.raises(ModelIntegrityError, match=r"m\.skops: sha256 .* does not match"):
        persistence.load(path)
    persistence.manifest_path(path).unlink()
    with pytest.raises(ModelIntegrityError, match="no manifest"):
        persistence.load(path)


def test_untrusted_types_are_refused_even_with_a_matching_manifest(tmp_path):
    """An attacker who can rewrite the manifest still cannot make skops build their types."""
    path = tmp_path / "m.skops"
    path.write_bytes(sio.dumps({"payload": Payload()}))
    manifest = {"file": path.name, "sha256": persistence.file_sha256(path), "key": ""}
    persistence.manifest_path(path).write_text(json.dumps(manifest))
    with pytest.raises(ModelIntegrityError, match="not trusted: .*Payload"):
        persistence.load(path)


@pytest.mark.parametrize("damage", ["append", "manifest"])
def test_tampered_cache_entry_is_never_loaded(tmp_path, monkeypatch, damage):
    persistence.load_or_train(EXAMPLES, language="en", cache_dir=tmp_path)
    (path,) = cached_files(tmp_path)
    if damage == "append":
        path.write_bytes(path.read_bytes() + b"evil")
    else:
        persistence.manifest_path(path).write_text('{"key": "x"}')
    loaded = []
    monkeypatch.setattr(persistence.sio, "loads", lambda *a, **k: loaded.append(a))
    with pytest.warns(UserWarning, match="retraining"):
        model = persistence.load_or_train(EXAMPLES, language="en", cache_dir=tmp_path)
    assert loaded == [] and model.predict_one("yes").top_intent == "affirm"
    monkeypatch.undo()
    assert persistence.load(path).predict_one("no").top_intent == "deny"  # rewritten, valid
