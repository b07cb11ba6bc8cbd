"""How much memory the in-process LLM needs: weights, KV cache, activations.

The estimate follows what :class:`engine.llm.hf.backend.TransformersBackend` really
allocates for a Llama-style decoder (the default SmolLM2 and most small chat models):

- weights: the parameter count from the config, times the bytes of the precision. int8 is
  dynamic quantisation of the decoder's linear layers: those weights take one byte (plus a
  4-byte column offset per output row in fbgemm's packed format); the embedding, the norms and
  the (tied) output head stay fp32.
- KV cache per token: ``2 (K and V) x layers x kv_heads x head_dim x bytes``; the keys and values
  are kept in the activation dtype (fp32 for fp32 and int8, bf16 for bf16).
- cached sessions: ``sessions x context x KV per token``, the session cache's budget (each live
  session keeps its prompt's KV between turns).
- working batch: the decode loop stacks the KV of the ``batch`` sessions it decodes together into
  one padded copy, so those sessions' KV is held twice while they decode.
- activations: the peak transient of prefilling ``batch`` prompts of ``context`` tokens. Inside a
  decoder layer the MLP is the peak: gate, up, act(gate) and their product (``4 x intermediate``
  values per token) plus about three hidden-size tensors (residual, normed input, output), and
  the boolean attention mask (``context`` bytes per token). Logits are computed for the last
  position only.

Not counted: the Python interpreter, torch and transformers themselves and the tokenizer (a
constant few hundred MB, measured separately as the baseline). Allocator slack is kept out by the
backend rather than estimated: it pins glibc's mmap threshold (:mod:`engine.llm.hf.allocator`),
without which glibc's heap kept ~10 MB of freed transients per cached session (the measured peak
was 818 MiB on a 2-core AVX2 EPYC and 944 MB on another machine against 731 MiB estimated; 729 MiB
measured once pinned). ``tests/test_capacity.py`` compares the estimate with the peak resident
memory measured in a fresh process serving SmolLM2 (see :func:`measure_peak`). The weights are
counted whether they are resident as anonymous memory or as the mmapped safetensors file's pages
(fp32 from the converted folder is served straight from the file's pages).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.errors import SalesbotError
from engine.llm.hf.precision import ALIASES

MODEL_ALIASES = {"smollm2-135m", "smollm2", "default"}
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 4}  # activation (and KV) bytes per value
MiB = 1 << 20


@dataclass(frozen=True)
class ModelShape:
    """The few numbers of a decoder-only transformer's config that memory depends on."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    max_positions: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        try:
            hidden = int(config["hidden_size"])
            heads = int(config["num_attention_heads"])
            return cls(
                layers=int(config["num_hidden_layers"]),
                hidden=hidden,
                intermediate=int(config["intermediate_size"]),
                heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                vocab=int(config["vocab_size"]),
                tied=bool(config.get("tie_word_embeddings", False)),
                max_positions=int(config.get("max_position_embeddings") or 0),
            )
        except KeyError as exc:
            raise SalesbotError(f"model config lacks {exc.args[0]!r}") from None

    def linear_params(self) -> int:
        """Parameters in the decoder layers' linear projections (what int8 quantises)."""
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attention + mlp)

    def linear_outputs(self) -> int:
        """Output rows of all decoder linear layers (int8 stores an offset per row)."""
        attention = self.head_dim * (self.heads + 2 * self.kv_heads) + self.hidden
        return self.layers * (attention + 2 * self.intermediate + self.hidden)

    def other_params(self) -> int:
        """Embedding, norms and an untied output head."""
        embed = self.vocab * self.hidden
        norms = (2 * self.layers + 1) * self.hidden
        return embed + norms + (0 if self.tied else embed)

    def params(self) -> int:
        return self.linear_params() + self.other_params()


@dataclass(frozen=True)
class CapacityEstimate:
    model: str
    dtype: str
    context: int
    sessions: int
    batch: int
    params: int
    weights_bytes: int
    kv_per_token_bytes: int
    kv_per_session_bytes: int
    kv_cached_bytes: int
    kv_working_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return (
            self.weights_bytes
            + self.kv_cached_bytes
            + self.kv_working_bytes
            + self.activation_bytes
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_bytes": self.total_bytes}


def estimate(
    shape: ModelShape,
    *,
    dtype: str = "fp32",
    context: int = 2048,
    sessions: int = 1,
    batch: int = 1,
    model: str = "",
) -> CapacityEstimate:
    """Memory for ``sessions`` cached sessions of ``context`` tokens, ``batch`` decoded at once."""
    name = ALIASES.get(dtype.lower())
    if name is None:
        raise SalesbotError(f"unknown dtype {dtype!r} (known: fp32, bf16, fp16, int8)")
    for label, value in (("context", context), ("sessions", sessions), ("batch", batch)):
        if value < 1:
            raise SalesbotError(f"{label} must be >= 1, got {value}")
    if shape.max_positions and context > shape.max_positions:
        raise SalesbotError(f"context {context} exceeds the model's {shape.max_positions}")
    batch = min(batch, sessions)
    value = BYTES[name]
    if name == "int8":
        weights = shape.linear_params() + 4 * shape.linear_outputs() + 4 * shape.other_params()
    else:
        weights = value * shape.params()
    kv_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * value
    kv_session = kv_token * context
    per_token = (4 * shape.intermediate + 3 * shape.hidden) * value + context  # + bool mask
    activations = batch * context * per_token + batch * shape.vocab * 4
    return CapacityEstimate(
        model=model,
        dtype=name,
        context=context,
        sessions=sessions,
        batch=batch,
        params=shape.params(),
        weights_bytes=weights,
        kv_per_token_bytes=kv_token,
        kv_per_session_bytes=kv_session,
        kv_cached_bytes=sessions * kv_session,
        kv_working_bytes=batch * kv_session,
        activation_bytes=activations,
    )


def load_shape(model: str | None) -> tuple[ModelShape, str]:
    """A model's shape from a name (``smollm2-135m``), a folder, a config.json or a GGUF."""
    from engine.llm.hf.models import converted_dir, default_model_path

    if model is None or model.lower() in MODEL_ALIASES:
        path, label = default_model_path(), "SmolLM2-135M-Instruct"
    else:
        path, label = Path(model), model
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".gguf":
        cached = converted_dir(path) / "config.json"
        if cached.is_file():
            return ModelShape.from_config(json.loads(cached.read_text())), label
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        return ModelShape.from_config(config.to_dict()), label
    if not path.is_file():
        raise SalesbotError(
            f"{model}: not a model folder, config.json, .gguf file or known name "
            f"({', '.join(sorted(MODEL_ALIASES))})"
        )
    try:
        return ModelShape.from_config(json.loads(path.read_text())), label
    except json.JSONDecodeError as exc:
        raise SalesbotError(f"{path}: not valid JSON ({exc})") from None


# -- measurement -----------------------------------------------------------------------------------

_CONVERT = (
    "from engine.llm.hf.models import default_model_path, model_dir; "
    "model_dir(default_model_path())"
)
_MEASURE = r"""
import gc, json, sys
import torch
from engine.llm.hf.decoder import DecodeRow
from engine.llm.hf.backend import TransformersBackend
from engine.flow.generation import GenerationParams
from engine.llm.hf.measure import reset_peak, status

dtype = sys.argv[1]
context, sessions, threads = (int(a) for a in sys.argv[2:5])
from engine.llm.hf import models
from engine.llm.hf.precision import resolve_precision
path = models.model_dir(models.default_model_path())  # converted once, before measuring
tokenizer = models.load_tokenizer(path)
import transformers.models.llama.modeling_llama  # code, not weights: part of the baseline
gc.collect()
base = status("VmRSS")
backend = TransformersBackend(dtype=dtype, cache_mb=1 << 20, threads=threads)
backend.use_model(models.load_model(path, resolve_precision(dtype).load_dtype), tokenizer)
gc.collect()
loaded = status("VmRSS")
reset_peak()  # the load's transient copy is not serving
params = GenerationParams(do_sample=False, max_new_tokens=1, deadline_s=120)
generator = torch.Generator().manual_seed(0)
for i in range(sessions):
    prompt = torch.randint(10, 40000, (context,), generator=generator).tolist()
    for _ in backend._decoder.steps([DecodeRow(prompt, params, session_key=f"s{i}")]):
        pass
gc.collect()
print(json.dumps({"base": base, "loaded": loaded, "peak": status("VmHWM"),
                  "end": status("VmRSS"), "cache_bytes": backend.cache_bytes}))
"""


def measure_peak(dtype: str, context: int, sessions: int, threads: int = 0) -> dict[str, int]:
    """Serve ``sessions`` prompts of ``context`` tokens (batch 1) with the default model in a
    fresh process and report resident memory (bytes).

    Why RSS and why a fresh process: torch's CPU allocator keeps no statistics (unlike CUDA's),
    and tracemalloc does not see tensor memory, so the honest number is what the OS charges the
    process. A fresh process has nothing else allocated. ``base`` is the resident size with
    torch, transformers and the tokenizer imported but no weights; ``loaded`` after the weights;
    ``peak`` the high-water mark while serving, reset after loading (``/proc/self/clear_refs``),
    so the transient copy transformers makes while loading does not count as serving memory.
    """
    import subprocess
    import sys

    from engine.llm.hf.measure import run_script
    from engine.llm.hf.models import converted_dir, default_model_path

    if not (converted_dir(default_model_path()) / "config.json").is_file():
        # Convert the GGUF in a process of its own: converting frees ~1 GB that the allocator
        # would then hand back to the measured allocations, hiding them from RSS.
        subprocess.run(
            [sys.executable, "-c", _CONVERT], capture_output=True, text=True, check=False
        )
    return run_script(_MEASURE, [dtype, str(context), str(sessions), str(threads)])
