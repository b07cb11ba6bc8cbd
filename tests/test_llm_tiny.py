"""A tiny random-weight Llama and a byte-level tokenizer, built in memory for fast LLM tests.

The model has SmolLM2's architecture (grouped-query attention, tied embeddings, a chat template
with <|im_start|>/<|im_end|>) at a toy size, so the decoder, the KV cache and batching are
exercised for real in milliseconds. Its weights are drawn with a large spread so that its logits
are peaked: greedy choices are then far from ties and comparisons of token ids are meaningful.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from engine.flow.generation import GenerationParams
from engine.llm.hf.backend import TransformersBackend

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GREEDY = GenerationParams(do_sample=False, max_new_tokens=24, no_repeat_ngram_size=0)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Toy-sized matmuls gain nothing from a second thread, and on a loaded machine torch's
    spinning worker threads make them 20x slower; restored afterwards for other modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    byte_vocab = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(SPECIALS + sorted(byte_vocab))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIALS,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_model(vocab_size: int, seed: int = 0, layers: int = 2) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        initializer_range=0.5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def tiny_backend(**options) -> TransformersBackend:
    tokenizer = tiny_tokenizer()
    backend = TransformersBackend(**{"dtype": "fp32", "device": "cpu", **options})
    return backend.use_model(tiny_model(len(tokenizer)), tokenizer)


def conversation(turns: int, name: str = "Alex") -> list[dict[str, str]]:
    """A chat whose prompt grows turn by turn like the engine's: the prompt of turn k is the
    prompt of turn k-1 plus the reply sent and what the customer said next."""
    messages = [{"role": "system", "content": f"You are Sam. Offer {name} the faster plan."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} from {name}?"})
        messages.append({"role": "assistant", "content": f"approved answer {i}."})
    messages.append({"role": "user", "content": f"question {turns} from {name}?"})
    return messages


def test_tokenizer_round_trips_any_text_and_applies_the_chat_template():
    tokenizer = tiny_tokenizer()
    text = "Fibre 500 costs £8 more — ok?"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    ids = tokenizer.apply_chat_template(conversation(0), add_generation_prompt=True)
    rendered = tokenizer.decode(ids)
    assert rendered.startswith("<|im_start|>system\nYou are Sam.")
    assert rendered.endswith("<|im_start|>assistant\n")


def test_tiny_backend_generates_text_with_token_counts():
    backend = tiny_backend()
    out = backend.generate(conversation(1), GREEDY)
    assert out.prompt_tokens == len(backend.encode(conversation(1)))
    assert 0 < out.completion_tokens <= GREEDY.max_new_tokens
    assert out.finish_reason in {"stop", "length"}
