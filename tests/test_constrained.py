"""Constrained decoding: the draft is one of the candidate texts, chosen in as few tokens as the
prefix needs. A tiny random-weight model (tests/test_llm_tiny.py) drives the real decode loop."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from engine.compliance import ComplianceFilter
from engine.compliance.embedders import CharNgramEmbedder
from engine.engine import Engine
from engine.errors import FlowValidationError
from engine.flow.generation import GenerationParams
from engine.flow.loader import load_flow
from engine.llm.base import BackendError, BatchItem, DeadlineExceeded
from engine.llm.hf.constrained import TokenTrie
from intents import load_or_train
from storage import Store
from tests.fakes import FakeBackend
from tests.flow_faults import copy_mini
from tests.test_llm_tiny import tiny_backend

CHOICES = (
    "Fibre 500 is £38 a month.",
    "Fibre 500 comes with a free router.",
    "Thanks for your time, goodbye.",
    "Would you like to upgrade today?",
)
MESSAGES = [
    {"role": "system", "content": "You sell broadband."},
    {"role": "user", "content": "how much is it?"},
]
GREEDY = GenerationParams(
    do_sample=False, max_new_tokens=48, no_repeat_ngram_size=0, deadline_s=120
)
SAMPLED = GenerationParams(
    do_sample=True, temperature=0.7, top_p=0.9, repetition_penalty=1.2, max_new_tokens=48,
    no_repeat_ngram_size=6, deadline_s=120,
)  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def backend():
    return tiny_backend()


def test_trie_allowed_and_unique():
    trie = TokenTrie(["ab", "ac", "b", "abd"], [[1, 2], [1, 3], [2], [1, 2, 4]])
    assert sorted(trie.allowed([])[0]) == [1, 2]
    assert trie.unique([]) is None
    assert trie.unique([2]) == 2  # "b": named by its first token
    assert trie.unique([1]) is None
    assert trie.unique([1, 3]) == 1
    # "ab" is a prefix of "abd": both live after [1, 2]; the end is allowed there
    assert trie.unique([1, 2]) is None
    assert trie.allowed([1, 2]) == ([4], True)
    assert trie.allowed([9]) == ([], False)
    assert trie.first_consistent([1, 2]) == 0


def test_trie_refuses_empty_input():
    with pytest.raises(ValueError, match="at least one"):
        TokenTrie([], [])
    with pytest.raises(ValueError, match="no tokens"):
        TokenTrie(["x"], [[]])


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_reply_is_always_a_candidate(backend, params):
    for seed in range(12):
        generation = backend.generate(MESSAGES, params, seed=seed, choices=CHOICES)
        assert generation.text in CHOICES
        assert generation.finish_reason == "stop"


def test_sampling_explores_the_candidates(backend):
    # The tiny model's logits are peaked; a high temperature flattens them among the allowed.
    params = SAMPLED.model_copy(update={"temperature": 5.0, "top_p": 1.0})
    seen = {backend.generate(MESSAGES, params, seed=s, choices=CHOICES).text for s in range(16)}
    assert seen <= set(CHOICES) and len(seen) >= 3


def test_greedy_is_deterministic_and_matches_batch(backend):
    alone = backend.generate(MESSAGES, GREEDY, choices=CHOICES)
    other = [{"role": "user", "content": "tell me more about the router please"}]
    batch = backend.generate_batch(
        [
            BatchItem(MESSAGES, GREEDY, choices=CHOICES),
            BatchItem(other, GREEDY, choices=CHOICES),
            BatchItem(other, GREEDY),  # a free row in the same batch
        ]
    )
    assert batch[0].text == alone.text
    assert batch[1].text in CHOICES
    assert batch[2].text not in CHOICES  # the random model's free draft is byte soup


def test_stops_as_soon_as_the_prefix_is_unique(backend):
    tokenizer = backend.tokenizer
    trie = TokenTrie.from_tokenizer(tokenizer, CHOICES)
    generation = backend.generate(MESSAGES, GREEDY, choices=CHOICES)
    index = CHOICES.index(generation.text)
    ids = tokenizer.encode(generation.text, add_special_tokens=False)
    needed = next(n for n in range(1, len(ids) + 1) if trie.unique(ids[:n]) == index)
    assert generation.completion_tokens == needed
    assert generation.completion_tokens < len(ids)


def test_one_choice_takes_one_token(backend):
    generation = backend.generate(MESSAGES, SAMPLED, seed=3, choices=CHOICES[2:3])
    assert generation.text == CHOICES[2]
    assert generation.completion_tokens == 1


def test_stream_yields_the_whole_choice(backend):
    chunks = list(backend.stream(MESSAGES, GREEDY, choices=CHOICES))
    assert len(chunks) == 1 and chunks[0] in CHOICES


def test_deadline_is_respected(backend):
    ticks = iter(range(1000))
    backend.clock = lambda: float(next(ticks))  # every clock read is one second later
    try:
        params = GREEDY.model_copy(update={"deadline_s": 0.5})
        with pytest.raises(DeadlineExceeded):
            backend.generate(MESSAGES, params, choices=CHOICES)
    finally:
        import time

        backend.clock = time.perf_counter


def test_cut_short_returns_a_consistent_candidate(backend):
    # Two texts equal for their first 20 bytes; a limit of 3 tokens cuts before they differ.
    choices = ("Fibre 500 is great value at £38.", "Fibre 500 is great value and fast.")
    params = GREEDY.model_copy(update={"max_new_tokens": 3})
    generation = backend.generate(MESSAGES, params, choices=choices)
    assert generation.finish_reason == "length"
    assert generation.text == choices[0]


def test_empty_choices_are_an_error(backend):
    with pytest.raises(BackendError, match="at least one choice"):
        backend.generate(MESSAGES, GREEDY, choices=())


# -- llama.cpp: a token trie over the candidate texts, with the real SmolLM2 GGUF ----------------

EN_CHOICES = (
    "Fibre 500 is £38 a month, just £8 more than you pay now.",
    "Fibre 500 comes with a free router upgrade and free installation.",
    'You have a 14-day cooling-off period, so you can "change your mind".',
)
ZH_CHOICES = ("每月39元，保额200万。", "15天犹豫期内可以全额退保。")


def test_trie_processor_allows_only_continuations_and_the_end_of_a_whole_text():
    from engine.llm.llamacpp_backend import trie_processor

    trie = TokenTrie(["a b", "a", "c"], [[1, 2], [1], [3]])
    process = trie_processor(trie, prompt_length=2, eos=0)
    scores = np.arange(5, dtype=np.float32)
    first = process(np.array([7, 8]), scores.copy())  # nothing generated yet: 1 or 3
    assert np.isfinite(first).nonzero()[0].tolist() == [1, 3]
    after_a = process(np.array([7, 8, 1]), scores.copy())  # "a" may end, or go on to "a b"
    assert np.isfinite(after_a).nonzero()[0].tolist() == [0, 2]
    assert after_a[2] == scores[2]  # the allowed keep their scores


@pytest.fixture(scope="module")
def llama():
    from engine.llm.llamacpp_backend import LlamaCppBackend

    loaded = LlamaCppBackend(threads=2)
    loaded.load()
    return loaded


@pytest.mark.parametrize("choices", [EN_CHOICES, ZH_CHOICES], ids=["en", "zh"])
@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_llamacpp_grammar_returns_a_candidate_early(llama, choices, params):
    for seed in range(3):
        generation = llama.generate(MESSAGES, params, seed=seed, choices=choices)
        assert generation.text in choices
        # the first few tokens name the choice: far fewer than the text has
        whole = len(llama._llm.tokenize(generation.text.encode(), add_bos=False))
        assert 1 <= generation.completion_tokens < whole


def test_llamacpp_stream_with_choices_is_one_chunk(llama):
    chunks = list(llama.stream(MESSAGES, GREEDY, choices=EN_CHOICES))
    assert len(chunks) == 1 and chunks[0] in EN_CHOICES
    # the context is usable afterwards for free generation
    assert llama.generate(MESSAGES, GREEDY.model_copy(update={"max_new_tokens": 8})).text


def test_llamacpp_runs_the_model_only_where_the_choices_branch(llama, monkeypatch):
    shared = "Fibre 500 gives you 500 Mbps for"
    choices = (f"{shared} £38 a month.", f"{shared} £8 more than now.")
    passes = []
    generate = llama._llm.generate
    monkeypatch.setattr(
        llama._llm,
        "generate",
        lambda tokens, **kw: passes.append(len(tokens)) or generate(tokens, **kw),
    )
    prompt, _ = llama._prompt_tokens(MESSAGES)
    forced = len(llama._llm.tokenize(shared.encode(), add_bos=False)) - 1  # " £" may merge
    for params in (GREEDY, SAMPLED):
        passes.clear()
        generation = llama.generate(MESSAGES, params, seed=1, choices=choices)
        assert generation.text in choices
        # the shared words are taken without the model; it runs once, where the texts part
        assert len(passes) == 1 and passes[0] >= len(prompt) + forced
        assert generation.completion_tokens > forced


# -- the engine: compliance.decoding: constrained --------------------------------------------------


class Choosing(FakeBackend):
    """A backend that can constrain: answers the last choice offered, records the offers."""

    can_constrain = True

    def __init__(self):
        super().__init__(default="zzzz qqqq")
        self.offered: list[tuple[str, ...] | None] = []

    def generate(self, messages, params, seed=None, session_key=None, choices=None):
        self.offered.append(None if choices is None else tuple(choices))
        if choices:
            self.enqueue(choices[-1])
        return super().generate(messages, params, seed, session_key)


def constrained_engine(tmp_path, db_url, backend, decoding="constrained"):
    folder = copy_mini(tmp_path)
    flow_yaml = folder / "flow.yaml"
    text = flow_yaml.read_text(encoding="utf-8")
    old = "    compliance: {threshold: 0.5, fallback:"
    assert text.count(old) == 1
    flow_yaml.write_text(
        text.replace(old, f"    compliance: {{decoding: {decoding}, threshold: 0.5, fallback:"),
        encoding="utf-8",
    )
    flow = load_flow(folder)
    classifier = load_or_train({k: list(v) for k, v in flow.intents.items()}, language="en")
    compliance = ComplianceFilter(flow, CharNgramEmbedder())
    return Engine(flow, classifier, backend, compliance, Store(db_url)), compliance


def test_engine_offers_the_rendered_candidates_and_sends_the_choice(tmp_path, db_url):
    backend = Choosing()
    engine, compliance = constrained_engine(tmp_path, db_url, backend)
    opening = engine.start("cust-1", {"customer_name": "Alex"})
    pitch = engine.turn(opening.session_id, "yes that's me")
    policy = engine.flow.stages["pitch"].compliance
    assert policy.decoding == "constrained"
    offered = backend.offered[0]
    slots = {"customer_name": "Alex", "agent_name": "Sam"}
    # The candidates the engine may send at this moment: the stage's own scripts (a script of
    # every stage, such as the robot FAQ, is placed elsewhere by the ruler; engine/milestones.py).
    own = tuple(c for c in policy.candidates if "pitch" in engine.flow.scripts[c].stages)
    assert set(offered) < set(compliance.candidate_texts(policy, slots))
    assert offered == compliance.candidate_texts(dataclasses.replace(policy, candidates=own), slots)
    assert pitch.source == "llm" and pitch.text == offered[-1]
    assert (
        engine.flow.render(pitch.script_id, {"customer_name": "Alex", "agent_name": "Sam"})
        == offered[-1]
    )
    audit = engine.store.compliance_decisions(opening.session_id)
    assert audit[0].decision == "approved" and audit[0].top_k["scores"][0] == pytest.approx(1.0)


def test_engine_drafts_freely_when_the_backend_cannot_constrain(tmp_path, db_url):
    backend = FakeBackend(default="zzzz qqqq")
    engine, _ = constrained_engine(tmp_path, db_url, backend)
    opening = engine.start("cust-2", {"customer_name": "Alex"})
    assert engine.turn(opening.session_id, "yes that's me").source == "fallback"
    free = Choosing()
    engine, _ = constrained_engine(tmp_path / "free", db_url, free, decoding="free")
    engine.turn(engine.start("cust-3", {"customer_name": "Alex"}).session_id, "yes that's me")
    assert free.offered == [None]


def test_unknown_decoding_is_a_load_error_naming_the_field(tmp_path, db_url):
    with pytest.raises(
        FlowValidationError, match=r"flow\.yaml:\d+: stages\.pitch\.compliance\.decoding"
    ):
        constrained_engine(tmp_path, db_url, Choosing(), decoding="beam")
