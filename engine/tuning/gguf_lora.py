"""A PEFT LoRA adapter as a GGUF LoRA adapter, so the llamacpp backend serves the tuned model.

llama.cpp applies a LoRA adapter at run time (``Llama(lora_path=...)``): per adapted weight
``W`` it adds ``scale * B @ (A @ x)`` with ``scale = alpha / rank``, reading ``A`` and ``B`` from
tensors named ``<gguf weight>.lora_a`` / ``.lora_b`` in a GGUF file whose ``general.type`` is
``adapter``. This writes that file with the ``gguf`` library (the format llama.cpp's own
``convert_lora_to_gguf.py`` writes, without needing the base model's Hugging Face folder: the
head counts come from the base GGUF).

One subtlety: llama.cpp's converter stores the query and key projections of llama-family models
with their rows permuted (rotary halves interleaved), and transformers undoes that when it loads
a GGUF. The adapter was trained against the un-permuted rows, so ``B`` of ``q_proj`` and
``k_proj`` is permuted here the same way (``delta = B @ A``: permuting the rows of the delta is
permuting the rows of ``B``). tests/test_gguf_lora.py checks the result against the merged
transformers model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from engine.tuning.manifest import AdapterError

GGUF_ADAPTER = "adapter.gguf"
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
_GGUF_NAMES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}


def permute_rows(weights, n_head: int):
    """llama.cpp's q/k row order (``LlamaModel.permute`` in convert_hf_to_gguf.py)."""
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def base_shape(base_gguf: str | Path) -> tuple[str, int, int]:
    """(architecture, attention heads, key/value heads) of a base model GGUF."""
    import gguf

    reader = gguf.GGUFReader(str(base_gguf))

    def field(key: str):
        found = reader.fields.get(key)
        if found is None:
            raise AdapterError(f"{base_gguf}: no {key} in the GGUF metadata")
        return found.contents()

    arch = str(field("general.architecture"))
    heads = int(field(f"{arch}.attention.head_count"))
    kv_key = f"{arch}.attention.head_count_kv"
    kv_heads = int(field(kv_key)) if kv_key in reader.fields else heads
    return arch, heads, kv_heads


def write_gguf_lora(adapter_dir: str | Path, base_gguf: str | Path) -> Path:
    """Write ``adapter_dir/adapter.gguf`` from the PEFT files in ``adapter_dir`` (fp32)."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    folder = Path(adapter_dir)
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    arch, heads, kv_heads = base_shape(base_gguf)
    if arch not in ("llama",):
        raise AdapterError(f"{base_gguf}: GGUF LoRA export knows llama-family models, not {arch}")
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for name, tensor in load_file(str(folder / "adapter_model.safetensors")).items():
        found = _LAYER.search(name)
        if found is None or found.group(3) not in _GGUF_NAMES:
            raise AdapterError(f"{folder}: cannot export adapter tensor {name} to GGUF")
        layer, _, module, which = found.groups()
        weights = tensor.astype(np.float32)
        if which == "B" and module in ("q_proj", "k_proj"):
            weights = permute_rows(weights, heads if module == "q_proj" else kv_heads)
        target = f"blk.{layer}.{_GGUF_NAMES[module]}.weight"
        pairs.setdefault(target, {})["lora_a" if which == "A" else "lora_b"] = weights
    out = folder / GGUF_ADAPTER
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    for target, parts in sorted(pairs.items()):
        if set(parts) != {"lora_a", "lora_b"}:
            raise AdapterError(f"{folder}: {target} lacks its lora_A or lora_B tensor")
        for part in ("lora_a", "lora_b"):
            writer.add_tensor(f"{target}.{part}", np.ascontiguousarray(parts[part]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
