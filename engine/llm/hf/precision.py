"""Numeric precision and device for the in-process backend.

- ``fp32``: the reference.
- ``bf16``: half the weight and KV-cache memory. On CPUs with AVX512-BF16/AMX (Sapphire Rapids
  and later) oneDNN runs bf16 matmuls natively; on older CPUs torch emulates them and bf16 can be
  slower than fp32: measure (``benchmarks/llm_bench.py``) before choosing it.
- ``int8``: dynamic quantisation of the decoder's linear layers (int8 weights, activations
  quantised per call; ``torch.ao.quantization.quantize_dynamic``). CPU only. The embedding and
  the tied output head stay fp32 by default: quantising the 49k-row head is where most of the
  damage to a small model's word choice comes from, and it is a single matmul per token.
- ``fp16``: CUDA only (CPU fp16 matmuls are slow).
- ``auto`` (the default): bf16 where it runs natively (a CPU with AVX512-BF16 or AMX; a CUDA
  device that supports bf16), else fp32 on a CPU and fp16 on CUDA. Measured on the 2-core Xeon
  with AMX: SmolLM2-135M decodes ~19 tokens/s in bf16 against ~14 in fp32
  (``benchmarks/llm_bench.py``; agreement of the compliance decisions there too).

On CUDA, bf16 and fp16 run natively; int8 dynamic quantisation is not available there.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch

from engine.errors import SalesbotError
from engine.llm.hf.hardware import cpu_has_native_bf16

ALIASES = {
    "fp32": "fp32",
    "float32": "fp32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
    "int8": "int8",
    "qint8": "int8",
    "auto": "auto",
}
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16 | fp16 | int8
    device: torch.device

    @property
    def load_dtype(self) -> torch.dtype:
        """The dtype weights are loaded in (int8 quantises an fp32 model after loading)."""
        return TORCH_DTYPES.get(self.name, torch.float32)


def auto_precision_name(device: torch.device) -> str:
    """The fastest precision that keeps the model's quality on this device."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def resolve_precision(dtype: str, device: str = "auto") -> Precision:
    """Validate a precision name for a device ("auto": CUDA when present, else CPU)."""
    name = ALIASES.get(str(dtype).lower())
    if name is None:
        raise SalesbotError(f"unknown dtype {dtype!r} (known: auto, fp32, bf16, fp16, int8)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        target = torch.device(device)
    except RuntimeError as exc:
        raise SalesbotError(f"unknown device {device!r}: {exc}") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise SalesbotError("device cuda was asked for but torch sees no CUDA device")
    if name == "auto":
        name = auto_precision_name(target)
    if name == "int8" and target.type != "cpu":
        raise SalesbotError("int8 is dynamic quantisation for CPUs; use bf16 or fp16 on CUDA")
    if name == "fp16" and target.type == "cpu":
        raise SalesbotError("fp16 is for CUDA; on a CPU use bf16 (or fp32)")
    return Precision(name, target)


def quantize_int8(model: torch.nn.Module, *, include_head: bool = False) -> torch.nn.Module:
    """Dynamic int8 quantisation of the decoder's ``nn.Linear`` layers (in place)."""
    from torch.ao.quantization import quantize_dynamic

    names = {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and (include_head or name != "lm_head")
    }
    # transformers maps fp32 safetensors weights straight from the file; a kept view (the
    # embedding) would keep the whole mapping, quantised-away weights included, resident. Own
    # copies of what stays fp32 let the file mapping go once the linears are quantised.
    for name, module in model.named_modules():
        if name not in names:
            for param in module.parameters(recurse=False):
                param.data = param.data.clone()
    with warnings.catch_warnings():  # torch.ao is deprecated in favour of torchao, still works
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, names, dtype=torch.qint8, inplace=True)


def prepare_model(model: torch.nn.Module, precision: Precision) -> torch.nn.Module:
    """Put a loaded model in eval mode on its device, quantised when asked for."""
    model.eval()
    if precision.name == "int8":
        model = quantize_int8(model.float())
        _trim_heap()  # quantising freed ~2 bytes per weight in small chunks: give them back
        return model
    return model.to(device=precision.device, dtype=precision.load_dtype)


def _trim_heap() -> None:
    """Return freed heap memory to the OS (glibc keeps it otherwise); a no-op elsewhere."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(name).malloc_trim(0)
