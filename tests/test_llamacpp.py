"""The llama.cpp backend: exact no-repeat n-grams, prefix reuse, budgets, clear errors."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest

from engine.errors import SalesbotError
from engine.flow.generation import GenerationParams
from engine.llm.base import BackendError
from engine.llm.llamacpp_backend import LlamaCppBackend, SessionStates, no_repeat_ngram_processor

MESSAGES = [
    {"role": "system", "content": "You are Sam, a polite phone sales agent for a broadband firm."},
    {"role": "user", "content": "I mostly stream films at home."},
]
GREEDY = GenerationParams(do_sample=False, max_new_tokens=12, deadline_s=120)


def test_no_repeat_ngram_bans_exactly_the_tokens_that_would_repeat_an_ngram():
    scores = np.zeros(10, dtype=np.float32)
    out = no_repeat_ngram_processor(3)(np.array([1, 2, 3, 1, 2]), scores)
    assert np.isneginf(out[3]) and np.isfinite(np.delete(out, 3)).all()
    untouched = no_repeat_ngram_processor(3)(np.array([1, 2, 3, 4]), scores)
    assert np.isfinite(untouched).all()


@dataclass
class FakeState:
    llama_state_size: int


def test_session_states_stay_within_budget_and_evict_least_recently_used():
    states = SessionStates(budget_bytes=250)
    for key in ("a", "b", "c"):
        states.put(key, FakeState(100))
    assert states.bytes <= 250 and len(states) == 2 and states.get("a") is None
    states.get("b")  # b is now the most recently used
    states.put("d", FakeState(100))
    assert states.get("b") is not None and states.get("c") is None
    states.release("b")
    assert states.get("b") is None


def test_missing_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(SalesbotError, match=r"pip install \"salesbot\[llamacpp\]\""):
        LlamaCppBackend()


@pytest.fixture(scope="module")
def backend():
    loaded = LlamaCppBackend(threads=2)
    loaded.load()
    return loaded


@pytest.mark.integration
def test_greedy_reply_is_identical_with_and_without_prefix_reuse(backend):
    first = backend.generate(MESSAGES, GREEDY, seed=1, session_key="s1")
    follow_up = [
        *MESSAGES,
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "How much does it cost?"},
    ]
    other = [{"role": "user", "content": "Tell me a fact about trains."}]
    backend.generate(other, GREEDY, seed=1, session_key="s2")  # s1 is parked meanwhile
    assert backend.cache_bytes > 0
    reused = backend.generate(follow_up, GREEDY, seed=1, session_key="s1")  # restored
    again = backend.generate(follow_up, GREEDY, seed=1, session_key="s1")  # still live
    fresh = LlamaCppBackend(threads=2, prefix_reuse=False)
    assert fresh.generate(follow_up, GREEDY, seed=1).text == reused.text == again.text
    assert fresh.cache_bytes == 0
    backend.release("s1")
    backend.release("s2")
    assert backend.cache_bytes == 0


@pytest.mark.integration
def test_a_sent_reply_is_encoded_ahead_and_changes_no_reply(backend):
    first = backend.generate(MESSAGES, GREEDY, seed=1, session_key="p1")
    sent = [*MESSAGES, {"role": "assistant", "content": first.text}]
    follow_up = [*sent, {"role": "user", "content": "How much does it cost?"}]
    backend.prefill(sent, "p1")  # in the background
    waited = time.monotonic()
    while "p1" in backend._pending and time.monotonic() - waited < 60:
        time.sleep(0.01)
    with backend._lock:  # the background pass is over once the lock is free
        held = list(backend._llm.input_ids[: backend._llm.n_tokens])
    prompt, _ = backend._prompt_tokens(follow_up)
    ahead = backend._next_turn_prefix(sent)
    # the context holds the whole next prompt but the customer's new line
    assert held == ahead == prompt[: len(ahead)]
    line = len(backend._llm.tokenize(follow_up[-1]["content"].encode(), add_bos=False))
    assert len(prompt) - len(ahead) <= line + 8  # the line, the template around it, one spare
    prefilled = backend.generate(follow_up, GREEDY, seed=1, session_key="p1")
    # the next call itself encodes a prefill the background had no time for, in the same batch
    backend.generate(MESSAGES, GREEDY, seed=1, session_key="p2")
    backend._pending["p2"] = sent
    settled_inline = backend.generate(follow_up, GREEDY, seed=1, session_key="p2")
    fresh = LlamaCppBackend(threads=2, prefix_reuse=False).generate(follow_up, GREEDY, seed=1)
    assert prefilled.text == settled_inline.text == fresh.text
    backend.release("p1")
    backend.release("p2")


@pytest.mark.integration
def test_stream_yields_the_same_text_as_generate(backend):
    streamed = "".join(backend.stream(MESSAGES, GREEDY, seed=1)).strip()
    assert streamed and streamed == backend.generate(MESSAGES, GREEDY, seed=1).text


@pytest.mark.integration
def test_beam_search_is_refused_not_ignored(backend):
    with pytest.raises(BackendError, match="beam"):
        backend.generate(MESSAGES, GenerationParams(num_beams=2, deadline_s=120))


def flow_with_llm_block(tmp_path, block: str):
    import shutil

    from tests.test_engine import MINI

    folder = tmp_path / "flow"
    shutil.copytree(MINI, folder)
    path = folder / "flow.yaml"
    text = path.read_text()
    path.write_text(text.replace("llm:\n", f"llm:\n{block}", 1))
    return folder


def test_the_flow_chooses_its_backend_and_a_deployment_may_override_it(tmp_path):
    from engine.engine import _flow_backend
    from engine.flow.loader import load_flow
    from engine.llm.hf.backend import TransformersBackend

    flow = load_flow(flow_with_llm_block(tmp_path, "  backend: llamacpp\n"))
    assert (flow.backend, isinstance(_flow_backend(flow, None, None), LlamaCppBackend)) == (
        "llamacpp",
        True,
    )
    assert isinstance(_flow_backend(flow, "transformers", None), TransformersBackend)


def test_unknown_backend_in_flow_is_a_validation_error(tmp_path):
    from engine.errors import FlowValidationError
    from engine.flow.loader import load_flow

    folder = flow_with_llm_block(tmp_path, "  backend: vllm_magic\n")
    with pytest.raises(FlowValidationError) as info:
        load_flow(folder)
    (problem,) = info.value.problems
    assert problem.field == "llm.backend" and "llamacpp" in problem.message
    assert (
        problem.line
        == (folder / "flow.yaml").read_text().splitlines().index("  backend: vllm_magic") + 1
    )
