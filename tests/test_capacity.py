"""The capacity planner: exact parameter and KV counts, and the estimate against measured memory."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.errors import SalesbotError
from engine.llm.hf.capacity import ModelShape, estimate, load_shape, measure_peak
from tests.test_llm_tiny import GREEDY, conversation, one_thread, tiny_backend  # noqa: F401


def test_parameter_count_matches_real_models_tied_and_untied():
    from transformers import LlamaConfig, LlamaForCausalLM

    for tied in (True, False):
        config = LlamaConfig(
            vocab_size=300,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=tied,
        )
        model = LlamaForCausalLM(config)
        real = sum(p.numel() for p in model.parameters())  # shared tensors count once
        assert ModelShape.from_config(config.to_dict()).params() == real


def test_the_default_model_is_smollm2_135m():
    shape, label = load_shape("smollm2-135m")
    assert label == "SmolLM2-135M-Instruct" and shape.params() == 134_515_008
    kv = estimate(shape, dtype="fp32", context=2000).kv_per_token_bytes
    assert kv == 30 * 3 * 64 * 2 * 4  # 45 KiB per token in fp32, as measured on this model


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_kv_per_token_is_what_the_backend_really_caches(dtype):
    backend = tiny_backend(dtype=dtype)
    backend.generate(conversation(2), GREEDY, session_key="s")
    shape = ModelShape.from_config(backend.model.config.to_dict())
    tokens = len(backend.encode(conversation(2)))
    assert backend.cache_bytes == tokens * estimate(shape, dtype=dtype).kv_per_token_bytes


def test_estimate_validates_its_inputs():
    shape, _ = load_shape(None)
    with pytest.raises(SalesbotError, match="unknown dtype"):
        estimate(shape, dtype="fp8")
    with pytest.raises(SalesbotError, match="exceeds the model's 8192"):
        estimate(shape, context=10_000)
    with pytest.raises(SalesbotError, match="sessions must be >= 1"):
        estimate(shape, sessions=0)


def test_cli_prints_the_estimate_and_rejects_a_bad_model(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "hidden_size": 576,
                "intermediate_size": 1536,
                "num_hidden_layers": 30,
                "num_attention_heads": 9,
                "num_key_value_heads": 3,
                "vocab_size": 49152,
                "tie_word_embeddings": True,
            }
        )
    )
    runner = CliRunner()
    args = ["capacity", "--model", str(config), "--dtype", "bf16", "--context", "2048"]
    result = runner.invoke(main, [*args, "--sessions", "32", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["kv_per_token_bytes"] == 30 * 3 * 64 * 2 * 2
    assert out["kv_per_session_bytes"] == 2048 * out["kv_per_token_bytes"]
    assert out["kv_cached_bytes"] == 32 * out["kv_per_session_bytes"]
    assert out["weights_bytes"] == 2 * 134_515_008
    assert out["total_bytes"] == sum(
        out[k] for k in ("weights_bytes", "kv_cached_bytes", "kv_working_bytes", "activation_bytes")
    )
    table = runner.invoke(main, [*args, "--sessions", "32"])
    assert table.exit_code == 0 and "KV cache per session" in table.output
    bad = runner.invoke(main, ["capacity", "--model", str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "not a model folder" in bad.output
    (tmp_path / "broken.json").write_text("{")
    broken = runner.invoke(main, ["capacity", "--model", str(tmp_path / "broken.json")])
    assert broken.exit_code == 2 and "not valid JSON" in broken.output


@pytest.mark.integration
def test_estimate_is_within_20_percent_of_measured_peak_memory_for_smollm2():
    """SmolLM2 served in a fresh process: 8 sessions with 512-token prompts cached (fp32)."""
    shape, _ = load_shape(None)
    predicted = estimate(shape, dtype="fp32", context=512, sessions=8)
    measured = measure_peak("fp32", context=512, sessions=8, threads=1)
    assert measured["cache_bytes"] == predicted.kv_cached_bytes  # exact, not approximate
    peak = measured["peak"] - measured["base"]
    assert abs(peak / predicted.total_bytes - 1) <= 0.20, (peak, predicted.as_dict())
