"""A PEFT adapter written as a GGUF LoRA makes llama.cpp compute what the merged transformers
model computes (integration: the real SmolLM2 GGUF, in both backends' own runtimes)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.tuning import gguf_lora
from engine.tuning.gguf_lora import GGUF_ADAPTER, permute_rows, write_gguf_lora
from engine.tuning.manifest import AdapterError
from engine.tuning.train import ALL_PROJECTIONS

PROMPT = "The customer says the upgrade is too expensive. The agent answers:"


def test_permute_rows_interleaves_the_rotary_halves_of_each_head():
    rows = np.arange(8).reshape(8, 1)  # 2 heads of 4 rows: halves (0,1|2,3) -> 0,2,1,3
    assert permute_rows(rows, 2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


# Random LoRAs, B scaled so the change is large but the model still speaks: the query/key pair
# (whose rows llama.cpp stores permuted) and the other five projections, separately. All seven
# at once compound Q4_1's noise through four layers, and the comparison then measures the noise
# (0.33 mean logit distance, three times the floor, with the right permutation or without).
ADAPTERS = {"qk": (("q_proj", "k_proj"), 3.0), "v-o-mlp": (ALL_PROJECTIONS[2:], 0.5)}


@pytest.fixture(scope="module")
def smollm2():
    from engine.llm.hf.models import default_model_path, load_tokenizer

    path = default_model_path()
    tokens = load_tokenizer(path).encode(PROMPT)
    return path, tokens, _llama_logits(path, tokens)


@pytest.fixture(scope="module", params=list(ADAPTERS))
def random_adapter(request, tmp_path_factory, smollm2):
    return _random_adapter(request.param, tmp_path_factory, smollm2)


@pytest.fixture(scope="module")
def qk_adapter(tmp_path_factory, smollm2):
    return _random_adapter("qk", tmp_path_factory, smollm2)


def _random_adapter(kind: str, tmp_path_factory, smollm2):
    """A random LoRA on the top four layers of SmolLM2 saved by PEFT, with the logits of the
    transformers model without it and with it merged."""
    import torch
    from peft import LoraConfig, get_peft_model

    from engine.llm.hf.models import load_model

    path, tokens, _ = smollm2
    modules, scale = ADAPTERS[kind]
    torch.manual_seed(0)
    model = load_model(path, torch.float32).eval()
    with torch.no_grad():
        base = model(torch.tensor([tokens])).logits[0, -1].double().numpy()
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=list(modules),
        layers_to_transform=list(range(26, 30)),
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(scale)
    folder = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(folder)
    merged = peft_model.merge_and_unload().eval()
    with torch.no_grad():
        expected = merged(torch.tensor([tokens])).logits[0, -1].double().numpy()
    return folder, base, expected


def _llama_logits(path, tokens, lora=None) -> np.ndarray:
    import llama_cpp

    kwargs = {"lora_path": str(lora)} if lora else {}
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=256, n_threads=2, verbose=False, logits_all=True, **kwargs
    )
    llm.eval(tokens)
    logits = np.array(llm.scores[len(tokens) - 1], dtype=np.float64)
    llm.close()
    return logits


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_gguf_lora_reproduces_the_merged_model_in_llama_cpp(random_adapter, smollm2):
    path, tokens, llama_base = smollm2
    folder, hf_base, expected = random_adapter
    out = write_gguf_lora(folder, path)
    assert out == folder / GGUF_ADAPTER
    tuned = _llama_logits(path, tokens, out)
    # The floor: the two runtimes disagree this much on the base model (Q4_1 matmuls with 8-bit
    # activations against dequantized fp32): 0.105 mean logit distance on an AVX2 CPU, 0.152 on
    # an AVX512-BF16 one (llama.cpp's kernels differ).
    floor = _distance(llama_base, hf_base)
    # With the adapter, llama.cpp is the merged model up to about that floor (the MLP adapter:
    # 0.243 = 1.6x on the AVX512-BF16 CPU; below 1.5x on AVX2), and the adapter moved the model
    # far beyond it (so it is applied, and applied right: a wrong q/k order lands above 4x, the
    # next test).
    assert _distance(tuned, expected) < 2 * floor
    assert _distance(llama_base, expected) > 4 * floor
    assert int(tuned.argmax()) == int(expected.argmax())


def test_without_the_qk_permutation_llama_cpp_would_compute_another_model(
    qk_adapter, smollm2, monkeypatch
):
    """The control: the same export with q/k rows left in transformers' order lands far from
    the merged model (0.82 against 0.11), so the test above notices a missing or wrong
    permutation."""
    path, tokens, llama_base = smollm2
    folder, hf_base, expected = qk_adapter
    monkeypatch.setattr(gguf_lora, "permute_rows", lambda weights, n_head: weights)
    wrong = _llama_logits(path, tokens, write_gguf_lora(folder, path))
    assert _distance(wrong, expected) > 4 * _distance(llama_base, hf_base)


def test_an_adapter_tensor_llama_cpp_cannot_take_is_refused(tmp_path):
    import json

    from safetensors.numpy import save_file

    (tmp_path / "adapter_config.json").write_text(json.dumps({"lora_alpha": 8}))
    save_file(
        {"base_model.model.lm_head.lora_A.weight": np.zeros((4, 8), np.float32)},
        str(tmp_path / "adapter_model.safetensors"),
    )
    from engine.llm.hf.models import default_model_path

    with pytest.raises(AdapterError, match="lm_head"):
        write_gguf_lora(tmp_path, default_model_path())
