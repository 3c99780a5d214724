"""The flash-attention kernel (engine/kernels/flash_attention_triton.py) under the interpreter, against
`flash_attention_torch` (the same masks built densely, then SDPA).

Tolerances: fp32 1e-5 (abs and rel: only the summation order differs; measured <= 1.6e-6); bf16 2e-2 abs and rel
(outputs of magnitude ~1-3; measured <= 0.0156, one bf16 ulp: the kernel and SDPA round at different points).
Shapes are tiny, and the tiles small (16 queries, 16 keys) so that several key tiles, masked tails and skipped tiles
all occur; `test_head_dim_split` splits a head of 64 the way D=512 is split on the GPU.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from engine.kernels.flash_attention import (  # noqa: E402
    flash_attention, flash_attention_torch, visible_keys,
)
from engine.kernels.flash_attention_triton import flash_attention_triton  # noqa: E402

TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
SMALL_TILES = dict(block_m=16, block_n=16)
# B, KV, T, S, D
SHAPES = [(1, 1, 1, 7, 16), (2, 2, 5, 7, 16), (2, 2, 5, 33, 64), (1, 2, 16, 33, 16), (2, 1, 16, 33, 64)]
HEADS = 4


def tensors(batch, kv_heads, length, keys, dim, dtype, generator, heads=HEADS):
    q = torch.randn(batch, heads, length, dim, generator=generator)
    k = torch.randn(batch, kv_heads, keys, dim, generator=generator)
    v = torch.randn(batch, kv_heads, keys, dim, generator=generator)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def check(q, k, v, q_positions, k_positions, causal, window=None, prefix=None, **blocks):
    out = flash_attention_triton(q, k, v, q_positions, k_positions, causal, window, prefix, **blocks)
    reference = flash_attention_torch(q, k, v, q_positions, k_positions, causal, window, prefix)
    assert out.dtype == q.dtype and out.shape == q.shape
    torch.testing.assert_close(out, reference, **TOLERANCE[q.dtype])
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("window", [None, 3])
def test_encoder(dtype, shape, window):
    """Causal queries at the end of the keys (a prompt encoded after a cached part), one empty slot."""
    batch, kv_heads, length, keys, dim = shape
    generator = torch.Generator().manual_seed(sum(shape) + (window or 0))
    q, k, v = tensors(batch, kv_heads, length, keys, dim, dtype, generator)
    k_positions = torch.arange(keys)
    k_positions[keys // 3] = -1
    check(q, k, v, torch.arange(keys - length, keys), k_positions, True, window, **SMALL_TILES)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("window", [None, 6])
def test_decoder(dtype, shape, window):
    """Non-causal: every valid key, the window measured from the first query; the buffer's last slots are empty."""
    batch, kv_heads, length, keys, dim = shape
    generator = torch.Generator().manual_seed(sum(shape) + (window or 0) + 1)
    q, k, v = tensors(batch, kv_heads, length, keys, dim, dtype, generator)
    valid = keys - 2
    k_positions = torch.where(torch.arange(keys) < valid, torch.arange(keys), -1)
    check(q, k, v, torch.arange(valid - length, valid), k_positions, False, window, **SMALL_TILES)


def test_only_visible_key_is_itself():
    """A window of 1 leaves each causal query its own key: the output is that key's value."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = tensors(2, 2, 16, 16, 16, torch.float32, generator)
    positions = torch.arange(16)
    out = check(q, k, v, positions, positions, True, 1, **SMALL_TILES)
    torch.testing.assert_close(out, v.repeat_interleave(HEADS // 2, dim=1), atol=0, rtol=0)


@pytest.mark.parametrize("causal", [True, False])
def test_shuffled_slots_and_batched_positions(causal):
    """Positions in any slot order, a third of the slots empty, and different positions per batch row."""
    generator = torch.Generator().manual_seed(5)
    batch, keys, length = 2, 33, 5
    q, k, v = tensors(batch, 2, length, keys, 16, torch.float32, generator)
    k_positions = torch.stack([torch.randperm(keys, generator=generator) for _ in range(batch)])
    k_positions[torch.rand(batch, keys, generator=generator) < 1 / 3] = -1
    q_positions = torch.stack([torch.arange(20, 20 + length), torch.arange(25, 25 + length)])
    check(q, k, v, q_positions, k_positions, causal, 12, **SMALL_TILES)


def test_query_without_visible_keys_gets_zeros():
    generator = torch.Generator().manual_seed(6)
    q, k, v = tensors(1, 1, 5, 7, 16, torch.float32, generator)
    q_positions = torch.tensor([0, 1, 10, 11, 12])  # keys sit at 5..11: the first two queries see none
    out = check(q, k, v, q_positions, torch.arange(5, 12), True, **SMALL_TILES)
    assert torch.equal(out[:, :, :2], torch.zeros_like(out[:, :, :2]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("causal", "window"), [(False, None), (False, 10), (True, 10)])
def test_shared_prefix(dtype, causal, window):
    """A batch-1 prefix (the prompt cache, two empty slots at its end) attended with each row's own keys."""
    generator = torch.Generator().manual_seed(7 + (window or 0))
    batch, length, prefix_slots, own = 2, 5, 20, 7
    q, k, v = tensors(batch, 2, length, own, 16, dtype, generator)
    _, prefix_k, prefix_v = tensors(1, 2, 1, prefix_slots, 16, dtype, generator)
    prefix_positions = torch.where(torch.arange(prefix_slots) < 18, torch.arange(prefix_slots), -1)
    own_positions = 18 + torch.arange(own)
    check(q, k, v, own_positions[2:], own_positions, causal, window, (prefix_k, prefix_v, prefix_positions),
          **SMALL_TILES)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_head_dim_split(dtype):
    """QK over 4 chunks of 16 and the output over 2 programs of 32 columns: D=512's layout on the GPU."""
    generator = torch.Generator().manual_seed(8)
    q, k, v = tensors(2, 2, 5, 33, 64, dtype, generator)
    check(q, k, v, torch.arange(28, 33), torch.arange(33), True, 9, block_m=16, block_n=16, block_dk=16, block_dv=32)


@pytest.mark.parametrize(("dtype", "causal"), [(torch.float32, True), (torch.bfloat16, False)])
def test_head_dim_512(dtype, causal):
    """The released full layers' head size with the default tiles (QK in 8 chunks, the output in 2 programs)."""
    generator = torch.Generator().manual_seed(9)
    q, k, v = tensors(1, 1, 5, 33, 512, dtype, generator)
    q, k = q / 512**0.25, k / 512**0.25  # scores of unit scale, as after the QK norms of a 512-wide head
    check(q, k, v, torch.arange(28, 33), torch.arange(33), causal)


def test_strided_inputs():
    """q, k, v as the projections leave them: [B, T, heads, D] transposed, not contiguous."""
    generator = torch.Generator().manual_seed(10)
    q = torch.randn(2, 5, HEADS, 16, generator=generator).transpose(1, 2)
    k = torch.randn(2, 33, 2, 16, generator=generator).transpose(1, 2)
    v = torch.randn(2, 33, 2, 16, generator=generator).transpose(1, 2)
    check(q, k, v, torch.arange(28, 33), torch.arange(33), True, 6, **SMALL_TILES)


def test_cpu_dispatch_is_torch():
    generator = torch.Generator().manual_seed(11)
    q, k, v = tensors(1, 2, 5, 7, 16, torch.float32, generator)
    args = (q, k, v, torch.arange(2, 7), torch.arange(7), True, 3)
    assert torch.equal(flash_attention(*args), flash_attention_torch(*args))


def test_visible_keys():
    q_positions, k_positions = torch.tensor([3, 4]), torch.tensor([0, 1, 2, 3, 4, -1])
    causal = visible_keys(q_positions, k_positions, True, 2)
    assert causal.tolist() == [[False, False, True, True, False, False], [False, False, False, True, True, False]]
    decoder = visible_keys(q_positions, k_positions, False, 2)  # the window counts back from the first query
    assert decoder.tolist() == [[False, False, True, True, True, False]] * 2
