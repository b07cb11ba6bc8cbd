"""The script index: cached on disk by content hash, never stale, exact top-k."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import pytest

from engine.compliance import ComplianceFilter
from engine.compliance.embedders import CharNgramEmbedder
from engine.compliance.index import IndexEntry, ScriptIndex, index_key
from engine.flow.loader import load_flow
from tests.flow_faults import copy_mini


class HashingEmbedder:
    """Deterministic bag-of-words vectors; counts how many texts it embedded."""

    name = "hashing"
    fits_corpus = False

    def __init__(self, version: str = "1", dim: int = 64):
        self.version = version
        self.dim = dim
        self.embedded = 0

    def fit(self, corpus: Sequence[str]) -> HashingEmbedder:
        return self

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        self.embedded += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.sha256(word.encode()).hexdigest(), 16) % self.dim] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


def build(flow, embedder, cache_dir):
    return ComplianceFilter(flow, embedder, cache_dir=cache_dir)


def test_second_build_loads_the_same_vectors_from_disk(tmp_path):
    flow = load_flow(copy_mini(tmp_path))
    first_embedder, second_embedder = HashingEmbedder(), HashingEmbedder()
    first = build(flow, first_embedder, tmp_path / "cache")
    second = build(flow, second_embedder, tmp_path / "cache")
    assert not first.index.from_cache and first_embedder.embedded == len(flow.scripts)
    assert second.index.from_cache and second_embedder.embedded == 0
    assert np.array_equal(first.index.matrix, second.index.matrix)
    assert first.index_key == second.index_key and first.index_key.startswith("index:v1:")


def test_library_edit_changes_the_hash_and_rebuilds(tmp_path):
    folder = copy_mini(tmp_path)
    cache = tmp_path / "cache"
    before = load_flow(folder)
    build(before, HashingEmbedder(), cache)
    scripts = folder / "scripts.yaml"
    scripts.write_text(scripts.read_text().replace("500 megabits", "600 megabits"))
    after = load_flow(folder)
    embedder = HashingEmbedder()
    rebuilt = build(after, embedder, cache)
    assert after.library_hash != before.library_hash
    assert not rebuilt.index.from_cache and embedder.embedded == len(after.scripts)
    row = rebuilt.index.position["pitch.speed"]
    expected = embedder.embed_batch(
        ["Our faster plan gives you 600 megabits for eight pounds more a month."]
    )
    assert np.allclose(rebuilt.index.matrix[row], expected[0])
    assert len(list(cache.glob("*.npz"))) == 2  # the old file is never looked up again


def test_another_embedder_version_never_reuses_the_cache(tmp_path):
    flow = load_flow(copy_mini(tmp_path))
    build(flow, HashingEmbedder(version="1"), tmp_path / "cache")
    embedder = HashingEmbedder(version="2")
    assert not build(flow, embedder, tmp_path / "cache").index.from_cache
    assert embedder.embedded == len(flow.scripts)


@pytest.mark.parametrize("damage", ["truncate", "manifest_key", "manifest_missing"])
def test_damaged_or_foreign_cache_files_are_rebuilt_not_used(tmp_path, damage):
    flow = load_flow(copy_mini(tmp_path))
    cache = tmp_path / "cache"
    good = build(flow, HashingEmbedder(), cache)
    [npz] = cache.glob("*.npz")
    manifest = npz.with_suffix(".manifest.json")
    if damage == "truncate":
        npz.write_bytes(npz.read_bytes()[:100])
    elif damage == "manifest_key":
        data = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**data, "key": "index:v1:" + "0" * 64}))
    else:
        manifest.unlink()
    embedder = HashingEmbedder()
    again = build(flow, embedder, cache)
    assert not again.index.from_cache and embedder.embedded == len(flow.scripts)
    assert np.array_equal(again.index.matrix, good.index.matrix)
    assert build(flow, HashingEmbedder(), cache).index.from_cache  # repaired


def test_corpus_fitted_embedders_are_rebuilt_and_write_no_cache(tmp_path):
    flow = load_flow(copy_mini(tmp_path))
    flt = build(flow, CharNgramEmbedder(), tmp_path / "cache")
    assert not flt.index.from_cache and not (tmp_path / "cache").exists()


def test_unwritable_cache_only_costs_a_rebuild(tmp_path):
    flow = load_flow(copy_mini(tmp_path))
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    flt = build(flow, HashingEmbedder(), blocker)
    draft = "Would a faster plan for eight pounds more help you?"
    policy = flow.stages["pitch"].compliance
    result = flt.check(draft, "pitch", policy, "s", {"customer_name": "Alex", "agent_name": "Sam"})
    assert not flt.index.from_cache and not blocker.is_dir()
    # The rebuilt index ranks exactly as brute force over the pitch candidates does.
    embedder = HashingEmbedder()
    query = embedder.embed_batch([draft])[0]
    scores = {
        c: float(embedder.embed_batch([flow.scripts[c].text])[0] @ query) for c in policy.candidates
    }
    expected = sorted(scores.items(), key=lambda kv: -kv[1])[:3]
    assert [i for i, _ in result.top_k] == [i for i, _ in expected]
    assert [v for _, v in result.top_k] == pytest.approx([v for _, v in expected], abs=1e-6)
    assert [i for i, _ in result.top_k][:1] == ["pitch.speed"]


def test_top_k_is_exact_and_takes_the_best_wording_per_script():
    rng = np.random.default_rng(0)
    entries = [
        IndexEntry(f"s{i}", f"act{i % 3}", tuple(f"t{i}-{j}" for j in range(1 + i % 3)))
        for i in range(40)
    ]
    rows = sum(len(e.texts) for e in entries)
    matrix = rng.normal(size=(rows, 16)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    index = ScriptIndex(entries, matrix, key="test")
    ids = [e.script_id for e in entries[5:]]
    view = index.view(ids)
    query = rng.normal(size=16).astype(np.float32)
    query /= np.linalg.norm(query)
    eligible = np.ones(len(ids), dtype=bool)
    eligible[3] = False
    top, margin = view.top(query, eligible, 3)
    # Brute force over every wording of every eligible script.
    owner = [e.script_id for e in entries for _ in e.texts]
    best: dict[str, float] = {}
    for row, script in enumerate(owner):
        if script in ids and script != ids[3]:
            best[script] = max(best.get(script, -2.0), float(matrix[row] @ query))
    expected = sorted(best.items(), key=lambda kv: -kv[1])[:3]
    assert [s for s, _ in top] == [s for s, _ in expected]
    assert [v for _, v in top] == pytest.approx([v for _, v in expected], abs=1e-6)
    act = {e.script_id: e.act for e in entries}
    rival = max(v for s, v in best.items() if act[s] != act[top[0][0]])
    assert margin == pytest.approx(top[0][1] - rival, abs=1e-6)


def test_index_key_covers_texts_library_and_embedder():
    entries = [IndexEntry("a", "x", ("hello",))]
    base = index_key(entries, HashingEmbedder(), "scripts:v1:abc")
    assert base != index_key(
        [IndexEntry("a", "x", ("hullo",))], HashingEmbedder(), "scripts:v1:abc"
    )
    assert base != index_key(entries, HashingEmbedder(), "scripts:v1:abd")
    assert base != index_key(entries, HashingEmbedder(version="2"), "scripts:v1:abc")


def test_an_entry_point_embedder_is_found_by_name_and_validated_in_flows(tmp_path, monkeypatch):
    from importlib.metadata import EntryPoint

    from engine.compliance import embedders

    plugin = EntryPoint(
        name="hashing",
        value="tests.test_compliance_index:HashingEmbedder",
        group=embedders.ENTRY_POINT_GROUP,
    )
    folder = copy_mini(tmp_path)
    flow_yaml = folder / "flow.yaml"
    flow_yaml.write_text(flow_yaml.read_text().replace("embedder: tfidf-char", "embedder: hashing"))
    from engine.errors import FlowValidationError

    with pytest.raises(FlowValidationError, match="unknown embedder 'hashing'"):
        load_flow(folder)
    monkeypatch.setattr(
        embedders.importlib.metadata,
        "entry_points",
        lambda group: [plugin] if group == embedders.ENTRY_POINT_GROUP else [],
    )
    monkeypatch.setattr(embedders, "_FACTORIES", dict(embedders._FACTORIES))
    flow = load_flow(folder)
    assert "hashing" in embedders.available_embedders()
    embedder = embedders.create_embedder(flow.embedder)
    assert isinstance(embedder, HashingEmbedder)
    flt = ComplianceFilter(flow, embedder, cache_dir=tmp_path / "cache")
    assert flt.embedder_name == "hashing" and flt.index.matrix.shape[1] == embedder.dim
