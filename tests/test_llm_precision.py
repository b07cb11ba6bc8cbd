"""Precision names: validation, and what ``auto`` picks on which hardware."""

from __future__ import annotations

import pytest
import torch

from engine.errors import SalesbotError
from engine.llm.hf import precision
from engine.llm.hf.backend import TransformersBackend
from engine.llm.hf.hardware import cpu_has_native_bf16
from engine.llm.hf.precision import resolve_precision


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_is_bf16_only_where_the_cpu_runs_it_natively(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    chosen = resolve_precision("auto", "cpu")
    assert chosen.name == expected
    assert chosen.load_dtype == {"bf16": torch.bfloat16, "fp32": torch.float32}[expected]


def test_auto_matches_this_machine_and_is_the_backend_default():
    assert TransformersBackend().dtype == "auto"
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert resolve_precision("auto", "cpu").name == expected


@pytest.mark.parametrize(
    "dtype, device, message",
    [("fp8", "cpu", "unknown dtype 'fp8'"), ("fp16", "cpu", "fp16 is for CUDA")],
)
def test_bad_precisions_are_named(dtype, device, message):
    with pytest.raises(SalesbotError, match=message):
        resolve_precision(dtype, device)
