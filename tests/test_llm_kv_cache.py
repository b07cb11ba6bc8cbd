"""KV-cache reuse across turns: same replies, bounded memory, freed on session end."""

from __future__ import annotations

import torch

from engine.compliance import ComplianceFilter
from engine.compliance.embedders import CharNgramEmbedder
from engine.engine import Engine
from engine.flow.loader import load_flow
from engine.llm.hf.kv_cache import SessionKVCache, layers_nbytes
from engine.llm.tokens import common_prefix
from intents import load_or_train
from storage import Store
from tests.conftest import ROOT
from tests.test_llm_tiny import GREEDY, conversation, one_thread, tiny_backend  # noqa: F401


def kv(tokens: int, heads: int = 2, dim: int = 4, layers: int = 2):
    return tuple(
        (torch.randn(1, heads, tokens, dim), torch.randn(1, heads, tokens, dim))
        for _ in range(layers)
    )


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0 and common_prefix([9], [1]) == 0


def test_lookup_reuses_the_common_prefix_but_always_leaves_a_token_to_encode():
    cache = SessionKVCache(budget_mb=1)
    layers = kv(5)
    cache.store("s", [1, 2, 3, 4, 5], layers)
    reused, past = cache.lookup("s", [1, 2, 3, 9, 9, 9])
    assert reused == 3 and past[0][0].shape[2] == 3
    assert torch.equal(past[1][1], layers[1][1][:, :, :3])
    assert cache.lookup("s", [1, 2, 3, 4, 5])[0] == 4  # identical prompt: last token re-encoded
    assert cache.lookup("s", [7, 8])[0] == 0  # nothing in common: recompute
    assert cache.lookup("other", [1, 2, 3])[0] == 0
    assert cache.lookup(None, [1, 2, 3])[0] == 0


def test_lru_eviction_keeps_the_total_under_budget_and_counts_bytes_exactly():
    one = layers_nbytes(kv(100))
    cache = SessionKVCache(budget_mb=3.5 * one / (1 << 20))  # room for three entries
    for key in "abcd":
        cache.store(key, list(range(100)), kv(100))
        assert cache.nbytes <= cache.budget_bytes
    assert "a" not in cache and {"b", "c", "d"} <= set(cache._entries)
    cache.lookup("b", [0])  # touch b: c is now the least recently used
    cache.store("e", list(range(100)), kv(100))
    assert "c" not in cache and "b" in cache
    assert cache.nbytes == 3 * one and cache.stats.evictions == 2
    assert cache.release("b") and not cache.release("b")
    assert cache.nbytes == 2 * one


def test_an_entry_larger_than_the_budget_is_not_kept_and_zero_disables_reuse():
    cache = SessionKVCache(budget_mb=0.001)
    assert not cache.store("big", list(range(1000)), kv(1000)) and cache.nbytes == 0
    off = SessionKVCache(budget_mb=0)
    assert not off.enabled and not off.store("s", [1, 2], kv(2))


def test_greedy_reply_is_identical_with_and_without_cache_reuse():
    reuse, fresh = tiny_backend(cache_mb=64), tiny_backend(cache_mb=0)
    for turn in range(5):
        messages = conversation(turn)
        with_cache = reuse.generate(messages, GREEDY, seed=1, session_key="s")
        without = fresh.generate(messages, GREEDY, seed=1, session_key="s")
        assert with_cache.text == without.text and with_cache.text
        assert without.cached_tokens == 0
        if turn:
            # The previous turn's whole prompt was reused; only the new tokens were encoded.
            assert with_cache.cached_tokens == len(reuse.encode(conversation(turn - 1)))
    assert reuse.cache.stats.hits == 4 and fresh.cache_bytes == 0


def test_a_changed_prefix_is_recomputed_from_where_it_differs():
    backend, fresh = tiny_backend(), tiny_backend(cache_mb=0)
    backend.generate(conversation(3, name="Alex"), GREEDY, session_key="s")
    other = conversation(3, name="Alexandra")  # differs inside the system prompt
    out = backend.generate(other, GREEDY, session_key="s")
    shared = common_prefix(backend.encode(conversation(3, name="Alex")), backend.encode(other))
    assert out.cached_tokens == shared < 40
    assert out.text == fresh.generate(other, GREEDY).text


def test_memory_stays_under_the_budget_with_200_sessions():
    backend = tiny_backend(cache_mb=1.0)
    params = GREEDY.model_copy(update={"max_new_tokens": 2})
    for i in range(200):
        backend.generate(conversation(i % 4, name=f"caller {i}"), params, session_key=f"s{i}")
        assert backend.cache_bytes <= 1 << 20
    cache = backend.cache
    assert 0 < len(cache) < 200 and cache.stats.evictions == 200 - len(cache)
    held = sum(layers_nbytes(e.layers) for e in cache._entries.values())
    assert held == backend.cache_bytes > (1 << 20) * 0.5  # the accounting is the tensors' bytes
    assert "s199" in cache and "s0" not in cache  # the most recent stay, the oldest went


def test_the_engine_frees_a_sessions_cache_when_the_call_ends(tmp_path):
    flow = load_flow(ROOT / "tests" / "flows" / "mini")
    backend = tiny_backend()
    engine = Engine(
        flow,
        load_or_train({k: list(v) for k, v in flow.intents.items()}, language=flow.language),
        backend,
        ComplianceFilter(flow, CharNgramEmbedder()),
        Store(f"sqlite:///{tmp_path / 'kv.db'}"),
    )
    opening = engine.start("kv-1", {"customer_name": "Alex"})
    reply = engine.turn(opening.session_id, "yes that's me")
    assert reply.stage == "pitch" and reply.source in {"llm", "fallback", "universal"}
    assert opening.session_id in backend.cache and backend.cache_bytes > 0
    engine.end(opening.session_id)
    assert opening.session_id not in backend.cache and backend.cache_bytes == 0
