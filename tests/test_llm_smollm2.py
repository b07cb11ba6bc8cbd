"""KV-cache reuse with the real default model (SmolLM2-135M) on the engine's own prompts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from engine.flow.generation import GenerationParams
from engine.flow.loader import load_flow
from engine.llm.hf.backend import TransformersBackend
from engine.llm.prompt import build_messages
from tests.conftest import BROADBAND

pytestmark = pytest.mark.integration

SLOTS = {
    "customer_name": "Alex",
    "agent_name": "Sam",
    "company": "Brightline Broadband",
    "current_plan": "100 Mbps",
}


@pytest.fixture(scope="module")
def backend() -> Iterator[TransformersBackend]:
    """One thread: on a machine shared with other jobs, torch's second spinning worker thread
    makes decoding many times slower (see docs/benchmarks.md); restored afterwards."""
    before = torch.get_num_threads()
    backend = TransformersBackend(dtype="fp32", cache_mb=256, threads=1)
    backend.load()
    yield backend
    torch.set_num_threads(before)


def test_greedy_replies_are_identical_with_and_without_cache_reuse(backend):
    flow = load_flow(BROADBAND)
    stage = flow.stages["pitch"]
    greedy = GenerationParams(do_sample=False, max_new_tokens=12, deadline_s=120)
    said = [
        flow.intents["describe_usage"][0],
        flow.intents["ask_details"][0],
        flow.intents["price_objection"][0],
    ]
    history: list[tuple[str | None, str]] = []
    for turn, text in enumerate(said):
        messages = build_messages(flow, stage, history, SLOTS, text)
        reused = backend.generate(messages, greedy, session_key="call-1")
        fresh = backend.generate(messages, greedy)  # no session key: the whole prompt encoded
        assert reused.text == fresh.text and reused.text
        assert fresh.cached_tokens == 0
        if turn:
            assert reused.cached_tokens > reused.prompt_tokens // 2
        # The bot said an approved script, as strict compliance would send.
        history.append((text, flow.render("pitch.speed", SLOTS)))
    assert "call-1" in backend.cache
    backend.release("call-1")
    assert backend.cache_bytes == 0
