"""The in-process backend on a tiny random Llama: batching, streaming, deadlines, precision."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from engine.errors import SalesbotError
from engine.flow.generation import GenerationParams
from engine.llm import BackendError, BatchingBackend, DeadlineExceeded, LLMBackend, create_backend
from engine.llm.hf.backend import TransformersBackend
from engine.llm.hf.decoder import Decoder, DecodeRow
from engine.llm.hf.kv_cache import SessionKVCache
from tests.test_llm_tiny import (  # noqa: F401
    GREEDY,
    conversation,
    one_thread,
    tiny_backend,
    tiny_model,
    tiny_tokenizer,
)

SAMPLED = GenerationParams(max_new_tokens=16, temperature=0.9)


def test_a_padded_batch_gives_each_row_what_it_gives_alone():
    backend = tiny_backend(cache_mb=0)
    prompts = [conversation(t, name=n) for t, n in [(0, "A"), (4, "Bobby"), (1, "Cy"), (6, "D")]]
    alone = [backend.generate(m, GREEDY).text for m in prompts]
    batched = backend.generate_batch([(m, GREEDY, None) for m in prompts])
    assert [g.text for g in batched] == alone
    assert len({g.prompt_tokens for g in batched}) == 4  # really different lengths


def test_a_batch_mixes_rows_with_and_without_cached_prefixes():
    backend, fresh = tiny_backend(), tiny_backend(cache_mb=0)
    sessions = {"a": 0, "b": 3, "c": 1}
    backend.generate_batch([(conversation(t, k), GREEDY, None, k) for k, t in sessions.items()])
    items = [(conversation(t + 1, k), GREEDY, None, k) for k, t in sessions.items()]
    items.append((conversation(2, "new"), GREEDY, None, "new"))  # no cache yet
    out = backend.generate_batch(items)
    assert [g.cached_tokens > 0 for g in out] == [True, True, True, False]
    assert [g.text for g in out] == [fresh.generate(m, p).text for m, p, _, _ in items]


def test_seeded_sampling_draws_the_same_reply_alone_or_in_a_batch_with_other_params():
    backend = tiny_backend(cache_mb=0)
    alone = backend.generate(conversation(2), SAMPLED, seed=7).text
    again = backend.generate(conversation(2), SAMPLED, seed=7).text
    out = backend.generate_batch(
        [
            (conversation(2), SAMPLED, 7),
            (conversation(3), GREEDY, None),
            (conversation(1), SAMPLED, 8),
        ]
    )
    assert alone == again == out[0].text
    assert out[1].text == backend.generate(conversation(3), GREEDY).text
    assert len({backend.generate(conversation(2), SAMPLED, seed=s).text for s in range(4)}) > 1


def test_stream_joins_to_the_generated_text_and_closing_it_stops_generation():
    backend = tiny_backend()
    whole = backend.generate(conversation(2), GREEDY).text
    chunks = list(backend.stream(conversation(2), GREEDY))
    assert len(chunks) > 1 and "".join(chunks).strip() == whole
    stream = backend.stream(conversation(2), GREEDY.model_copy(update={"max_new_tokens": 200}))
    next(stream)
    stream.close()  # early stop: the lock is released and the model is free again
    assert backend._lock.acquire(blocking=False)
    backend._lock.release()


def test_stop_strings_end_the_draft():
    backend = tiny_backend(cache_mb=0)
    whole = backend.generate(conversation(2), GREEDY).text
    stop = whole[len(whole) // 2 : len(whole) // 2 + 1]
    cut = backend.generate(conversation(2), GREEDY.model_copy(update={"stop": (stop,)}))
    assert stop not in cut.text and whole.startswith(cut.text)
    assert cut.completion_tokens < len(backend.encode([{"role": "user", "content": whole}]))


def test_a_busy_model_fails_at_the_deadline_instead_of_queueing_forever():
    backend = tiny_backend()
    backend._lock.acquire()  # another caller holds the model
    try:
        with pytest.raises(DeadlineExceeded):
            backend.generate(conversation(1), GREEDY.model_copy(update={"deadline_s": 0.2}))
    finally:
        backend._lock.release()


def test_a_draft_cut_at_the_deadline_is_returned_for_the_filter_to_judge():
    backend = tiny_backend()
    ticks = iter(range(10_000))
    backend.clock = lambda: float(next(ticks))  # every reading of the clock is a second later
    long = GREEDY.model_copy(update={"max_new_tokens": 200, "deadline_s": 12})
    out = backend.generate(conversation(1), long)
    assert out.finish_reason == "deadline" and out.text and 0 < out.completion_tokens < 200
    streamed = "".join(backend.stream(conversation(1), long)).strip()  # a stream ends there
    backend.clock = time.perf_counter
    whole = backend.generate(conversation(1), long)
    assert whole.finish_reason != "deadline" and len(whole.text) > len(out.text)
    assert whole.text.startswith(out.text) and streamed and whole.text.startswith(streamed)


def test_batched_callers_get_their_cut_drafts_before_their_deadline():
    inner = tiny_backend()
    inner.model.register_forward_hook(lambda *args: time.sleep(0.05))  # a slow model
    batching = BatchingBackend(inner, max_wait_ms=20)
    slow = GREEDY.model_copy(update={"max_new_tokens": 1000, "deadline_s": 2.0})
    results, errors = run_threads(batching, [(conversation(i), slow, None) for i in range(3)])
    assert not errors
    assert all(r.finish_reason == "deadline" and 0 < r.completion_tokens < 1000 for r in results)
    batching.close()


def test_decoding_stops_a_row_at_its_deadline_and_keeps_the_others():
    tokenizer = tiny_tokenizer()
    ticks = iter(range(10_000))
    decoder = Decoder(
        tiny_model(len(tokenizer)),
        SessionKVCache(0),
        eos_ids=set(),  # never stop early: only length or the deadline end a row
        pad_id=0,
        device=torch.device("cpu"),
        clock=lambda: float(next(ticks)),
    )
    prompt = tokenizer.apply_chat_template(conversation(1), add_generation_prompt=True)
    params = GREEDY.model_copy(update={"max_new_tokens": 50})
    late, timely = DecodeRow(list(prompt), params, deadline=5), DecodeRow(list(prompt), params)
    for _ in decoder.steps([late, timely]):
        pass
    assert late.finish == "deadline" and 0 < len(late.generated) < 50
    assert timely.finish == "length" and len(timely.generated) == 50


def test_beam_search_goes_through_model_generate():
    backend = tiny_backend()
    out = backend.generate(conversation(1), GREEDY.model_copy(update={"num_beams": 2}))
    assert out.completion_tokens > 0 and out.cached_tokens == 0


def test_a_prompt_longer_than_the_model_fails_as_a_backend_error():
    backend = tiny_backend()
    long = [{"role": "user", "content": "x" * 5000}]
    with pytest.raises(BackendError, match="exceeds the model's 4096 positions"):
        backend.generate(long, GREEDY)


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_lower_precisions_generate_and_shrink_what_they_should(dtype):
    reference = tiny_backend()
    backend = tiny_backend(dtype=dtype)
    out = backend.generate(conversation(2), GREEDY, session_key="s")
    reference.generate(conversation(2), GREEDY, session_key="s")
    assert out.completion_tokens > 0
    if dtype == "bf16":
        assert backend.model.dtype == torch.bfloat16
        assert backend.cache_bytes * 2 == reference.cache_bytes  # bf16 KV: half the bytes
    else:
        quantized = torch.ao.nn.quantized.dynamic.Linear
        projections = [m for n, m in backend.model.named_modules() if n.endswith("_proj")]
        assert len(projections) == 2 * 7 and all(isinstance(m, quantized) for m in projections)
        assert type(backend.model.lm_head) is torch.nn.Linear  # the output head stays fp32
        assert backend.cache_bytes == reference.cache_bytes  # activations, hence KV, stay fp32


def test_registry_validates_options_and_wraps_in_batching():
    with pytest.raises(SalesbotError, match="unknown dtype 'fp64'"):
        create_backend("transformers", dtype="fp64")
    with pytest.raises(SalesbotError, match="fp16 is for CUDA"):
        create_backend("transformers", dtype="fp16", device="cpu")
    with pytest.raises(SalesbotError, match="unknown option.*cache_size"):
        create_backend("transformers", cache_size=3)
    wrapped = create_backend("transformers", dtype="bf16", batch=8, max_wait_ms=2)
    assert isinstance(wrapped, BatchingBackend) and wrapped.max_batch == 8
    assert isinstance(wrapped.inner, TransformersBackend) and wrapped.inner.dtype == "bf16"


# -- BatchingBackend: many threads, one forward pass ---------------------------------------------


class Recording(LLMBackend):
    """Delegates to a real backend and records the batches it was given."""

    name = "recording"
    can_batch = True

    def __init__(self, inner):
        self.inner = inner
        self.batches: list[list] = []

    def generate_batch(self, items):
        self.batches.append(list(items))
        return self.inner.generate_batch(items)

    def release(self, key):
        self.inner.release(key)


def run_threads(batching, jobs):
    results, errors = [None] * len(jobs), []
    barrier = threading.Barrier(len(jobs))

    def call(i, messages, params, key):
        barrier.wait()
        try:
            results[i] = batching.generate(messages, params, session_key=key)
        except BackendError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i, *job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


def test_concurrent_callers_are_batched_and_each_gets_its_own_reply():
    inner = tiny_backend()
    recording = Recording(inner)
    batching = BatchingBackend(recording, max_batch=32, max_wait_ms=300, mixed_params=True)
    jobs = [(conversation(i % 5, f"n{i}"), GREEDY, f"s{i}") for i in range(12)]
    results, errors = run_threads(batching, jobs)
    assert not errors
    fresh = tiny_backend(cache_mb=0)
    assert [r.text for r in results] == [fresh.generate(m, p).text for m, p, _ in jobs]
    assert len(recording.batches) < 12 and max(len(b) for b in recording.batches) > 1
    assert {item.session_key for b in recording.batches for item in b} == {
        f"s{i}" for i in range(12)
    }
    batching.release("s0")
    assert "s0" not in inner.cache and "s1" in inner.cache
    batching.close()


def test_without_mixed_params_batches_are_grouped_by_parameters():
    recording = Recording(tiny_backend(cache_mb=0))
    batching = BatchingBackend(recording, max_wait_ms=300, mixed_params=False)
    other = GREEDY.model_copy(update={"max_new_tokens": 5})
    jobs = [(conversation(1, f"n{i}"), GREEDY if i % 2 else other, None) for i in range(8)]
    results, errors = run_threads(batching, jobs)
    assert not errors and all(r is not None for r in results)
    for batch in recording.batches:
        assert len({item.params for item in batch}) == 1
    batching.close()


def test_a_caller_gets_deadline_exceeded_when_the_model_is_busy():
    inner = tiny_backend()
    batching = BatchingBackend(inner, max_wait_ms=1)
    inner._lock.acquire()
    try:
        _, errors = run_threads(
            batching, [(conversation(1), GREEDY.model_copy(update={"deadline_s": 0.3}), None)] * 3
        )
    finally:
        inner._lock.release()
    assert len(errors) == 3 and all(isinstance(e, DeadlineExceeded) for e in errors)
    assert batching.generate(conversation(1), GREEDY).text  # and it recovers
    batching.close()


# -- sampling ------------------------------------------------------------------------------------


def test_sampling_draws_from_the_same_distribution_as_transformers_warpers():
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from engine.llm.hf.sampling import RowSampler

    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3
    params = GenerationParams(temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.0)
    warpers = [TemperatureLogitsWarper(0.7), TopKLogitsWarper(50), TopPLogitsWarper(0.9)]
    reference = LogitsProcessorList(warpers)(torch.zeros((1, 0), dtype=torch.long), logits[None])
    expected = torch.softmax(reference[0], dim=-1)
    sampler = RowSampler(params, seed=1, device=torch.device("cpu"))
    counts = torch.bincount(
        torch.tensor([sampler.choose(logits, []) for _ in range(20_000)]), minlength=1000
    )
    observed = counts / counts.sum()
    assert set(observed.nonzero().flatten().tolist()) <= set(expected.nonzero().flatten().tolist())
    assert 0.5 * (expected - observed).abs().sum() < 0.03  # total variation distance


def test_penalties_apply_to_the_reply_not_the_prompt():
    from engine.llm.hf.sampling import RowSampler

    logits = torch.tensor([0.0, 5.0, 4.0, 3.0])
    greedy = GenerationParams(do_sample=False, repetition_penalty=2.0, no_repeat_ngram_size=2)
    sampler = RowSampler(greedy, seed=None, device=torch.device("cpu"))
    assert sampler.choose(logits, []) == 1  # nothing generated yet: no penalty
    assert sampler.choose(logits, [1]) == 2  # 5 / 2 < 4: token 1 was already said
    assert sampler.choose(logits, [2, 1, 2]) == 3  # (2, 1) would repeat a 2-gram; 4 / 2 < 3
