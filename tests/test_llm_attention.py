"""The decode-step attention path (one query position) computes what SDPA computes."""

from __future__ import annotations

import pytest
import torch

from engine.llm.hf.attention import sdpa_gqa_attention


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
def test_single_query_attention_matches_sdpa(dtype, tolerance, mask_kind):
    generator = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, length, dim = 4, 9, 3, 29, 64

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(dtype)

    query, key, value = (
        randn(batch, heads, 1, dim),
        randn(batch, kv_heads, length, dim),
        randn(batch, kv_heads, length, dim),
    )
    keep = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    keep[0, ..., :7] = False  # left padding of different widths
    keep[2, ..., :20] = False
    mask = {
        "bool": keep,
        "additive": torch.zeros(batch, 1, 1, length, dtype=dtype).masked_fill(~keep, -torch.inf),
        "none": None,
    }[mask_kind]
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=keep if mask is not None else None, enable_gqa=True
    ).transpose(1, 2)
    got, _ = sdpa_gqa_attention(torch.nn.Module(), query, key, value, mask, scaling=None)
    assert got.shape == (batch, 1, heads, dim) and got.dtype == dtype
    assert torch.allclose(got.float(), expected.float(), atol=tolerance, rtol=0)
