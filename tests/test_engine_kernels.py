"""The hot kernels against the reference's own formulas, bit for bit (fp32, CPU).

Seeded generation can only match transformers token for token if every kernel gives the reference's bits: on random
weights a one-ulp difference changes a sample within a few steps. These tests pin the formulations the engine uses
for speed (ATen's fused rms_norm, shared normalisations, a rolled RoPE, fused projections, SDPA's own head grouping)
to the straightforward ones the reference runs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.kernels import apply_rope, attention, rms_norm, scale_unit, unit_rms_norm
from engine.model import FusedLinear

EPS = 1e-6


def reference_rms_norm(x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    x32 = x.float()
    normed = x32 * torch.pow(x32.pow(2).mean(-1, keepdim=True) + EPS, -0.5)
    return (normed if weight is None else normed * weight.float()).type_as(x)


def reference_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def reference_attention(q, k, v, mask):
    group = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                                          attn_mask=mask, scale=1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 64), (1, 3, 256), (2, 32, 256), (1, 7, 4, 128)])
def test_rms_norm_and_shared_normalisation_match_the_reference(shape, dtype):
    generator = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1.0, 1e3):
        x = (torch.randn(shape, generator=generator) * scale).to(dtype)
        weight = torch.randn(shape[-1], generator=generator).to(dtype)
        assert torch.equal(rms_norm(x, weight, EPS), reference_rms_norm(x, weight))
        assert torch.equal(rms_norm(x, None, EPS), reference_rms_norm(x, None))
        unit = unit_rms_norm(x, EPS)  # one normalisation, several weights (the layer's shared norms)
        assert torch.equal(scale_unit(unit, weight, dtype), reference_rms_norm(x, weight))
        assert torch.equal(scale_unit(unit, None, dtype), reference_rms_norm(x, None))


def test_heads_normalised_together_match_separate_norms():
    generator = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 5, 4, 64, generator=generator), torch.randn(1, 5, 2, 64, generator=generator)
    unit = unit_rms_norm(torch.cat((q, k), dim=2), EPS)
    q_weight = torch.randn(64, generator=generator)
    assert torch.equal(scale_unit(unit[:, :, :4], q_weight, torch.float32), reference_rms_norm(q, q_weight))
    assert torch.equal(scale_unit(unit[:, :, 4:], None, torch.float32), reference_rms_norm(k, None))


def test_rolled_rope_with_signed_sine_matches_rotate_half():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 9, 32, generator=generator)
    angles = torch.rand(1, 1, 9, 16, generator=generator) * 6
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos(), angles.sin()
    signed_sin = torch.cat((-sin[..., :16], sin[..., 16:]), dim=-1)
    assert torch.equal(apply_rope(x, cos, signed_sin), reference_rope(x, cos, sin))


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 8, 32, 300])
def test_fused_projections_match_separate_ones(rows):
    torch.manual_seed(3)
    linears = [nn.Linear(256, out, bias=False) for out in (256, 128, 128)]
    x = torch.randn(1, rows, 256)
    separate = torch.cat([linear(x) for linear in linears], dim=-1)
    fused = FusedLinear(*linears)
    fused.fuse()
    with torch.no_grad():
        assert torch.equal(fused(x), separate)
    storage = fused.weight.untyped_storage().data_ptr()  # the layers keep views of the fused matrix
    assert all(linear.weight.untyped_storage().data_ptr() == storage for linear in linears)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "queries", "keys", "head_dim"),
    [(4, 2, 1, 1, 64), (4, 2, 3, 3, 64), (4, 1, 2, 40, 128), (4, 2, 8, 29, 16), (8, 2, 64, 64, 64)],
)
def test_grouped_attention_matches_repeated_kv_heads(heads, kv_heads, queries, keys, head_dim):
    generator = torch.Generator().manual_seed(4)
    q = torch.randn(2, heads, queries, head_dim, generator=generator)
    k = torch.randn(2, kv_heads, keys, head_dim, generator=generator)
    v = torch.randn(2, kv_heads, keys, head_dim, generator=generator)
    positions = torch.arange(keys - queries, keys)
    causal = torch.arange(keys)[None, :] <= positions[:, None]
    padding = torch.ones(2, keys, dtype=torch.bool)
    padding[1, 0] = False
    per_example = causal[None, None] & padding[:, None, None, :]
    for mask in (None, causal, per_example):
        assert torch.equal(attention(q, k, v, mask), reference_attention(q, k, v, mask))
