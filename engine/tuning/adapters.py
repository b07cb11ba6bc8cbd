"""Put a trained LoRA adapter onto a base model for serving: verified, then merged.

Merging (``merge_and_unload``) folds ``B @ A * alpha / r`` into each target weight once at load,
so the served model is a plain transformers model again: the decoder's KV reuse, batching,
precision handling and int8 path run unchanged, and a tuned model decodes exactly as fast as
the base one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from engine.hashing import file_sha256
from engine.tuning.manifest import check_base, verify_adapter

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


def base_file_sha256(path: str | Path) -> str:
    """What the manifest calls the base model's file hash: a GGUF's sha256, or for a Hugging
    Face folder the sha256 over its config and weight files."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.name == "config.json" or file.suffix in WEIGHT_SUFFIXES:
            digest.update(file.name.encode() + b"\0" + file_sha256(file).encode() + b"\n")
    return digest.hexdigest()


def weights_fingerprint(model) -> str:
    """sha256 of the model's weights as fp32, by parameter name: identifies a base model that
    exists only in memory (tests build tiny ones)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + b"\0")
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def merge_adapter(
    model, folder: str | Path, base_sha256: str | None = None
) -> tuple[Any, dict[str, Any]]:
    """``model`` with the adapter in ``folder`` merged into its weights, and the manifest.

    Raises :class:`engine.tuning.manifest.AdapterError` for a missing or tampered adapter, or
    one trained on another base model.
    """
    from peft import PeftModel

    folder = Path(folder)
    manifest = verify_adapter(folder)
    check_base(manifest, folder, base_sha256, lambda: weights_fingerprint(model))
    merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    return merged.eval(), manifest
