"""The fused head + sampler kernel (engine/kernels/head_sampler_triton.py) under the interpreter, against
`head_sample_torch`, which builds the full [N, V] logits.

Tolerances: entropy 1e-5 absolute (fp32 and bf16; in bf16 both round the logits to bf16 to nearest even, so only
the summation order differs; measured <= 8.4e-7); argmax and sample identical (the torch Philox port draws the
kernel's noise bit for bit); the self-conditioning signal 1e-5 in fp32, and in bf16 2e-3 absolute + 1e-2 relative
(measured <= 7.1e-4): the kernel rounds each (unnormalised) probability to bf16 before the product with E, as the
model's soft embedding does, while the reference keeps fp32 probabilities.
Shapes are tiny, and the blocks small so that rows and tokens have masked tails and the hidden width runs in
several chunks (with a tail in `test_default_blocks`).
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed")
import triton.language as tl  # noqa: E402

from engine.kernels.head_sampler import (  # noqa: E402
    HeadSample, fused_head_sample, head_sample_torch, philox_uniform,
)
from engine.kernels.head_sampler_triton import fused_head_sample_triton  # noqa: E402

SOFTCAP = 30.0
SMALL_BLOCKS = dict(block_n=16, block_v=16, block_h=16)
SIGNAL_TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-3, rtol=1e-2)}


def head(rows, width, vocab, dtype, generator, scale=1.0):
    """Hidden states of unit RMS (as after the final norm) and an embedding whose logits spread over a few units."""
    hidden = torch.randn(rows, width, generator=generator) * scale
    embedding = torch.randn(vocab, width, generator=generator) * (2.0 / width**0.5)
    return hidden.to(dtype), embedding.to(dtype)


def check(out, reference, dtype):
    torch.testing.assert_close(out.entropy, reference.entropy, atol=1e-5, rtol=0)
    assert torch.equal(out.argmax, reference.argmax)
    assert torch.equal(out.sample, reference.sample)
    torch.testing.assert_close(out.self_conditioning, reference.self_conditioning, **SIGNAL_TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, 5])
@pytest.mark.parametrize(("width", "vocab"), [(16, 50), (32, 257)])
def test_matches_torch(dtype, rows, width, vocab):
    generator = torch.Generator().manual_seed(rows * 1000 + vocab)
    hidden, embedding = head(rows, width, vocab, dtype, generator)
    temperature, seed = torch.tensor(0.7), torch.tensor(rows + vocab)
    # three splits of several 16-token tiles: the online rescaling within a split and the merge across splits
    out = fused_head_sample_triton(hidden, embedding, SOFTCAP, temperature, seed, splits=3, **SMALL_BLOCKS)
    check(out, head_sample_torch(hidden, embedding, SOFTCAP, temperature, seed), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_default_blocks(dtype):
    generator = torch.Generator().manual_seed(7)
    hidden, embedding = head(3, 80, 300, dtype, generator)  # 300 = 2 tiles of 128 and a tail; 80 = 2·32 + 16
    out = fused_head_sample_triton(hidden, embedding, SOFTCAP, 0.408, 11)
    check(out, head_sample_torch(hidden, embedding, SOFTCAP, 0.408, 11), dtype)


def test_leading_dimensions():
    """[B, C, H] as the decoder leaves it: rows numbered in row-major order, results shaped [B, C] and [B, C, H]."""
    generator = torch.Generator().manual_seed(4)
    hidden, embedding = head(6, 16, 50, torch.float32, generator)
    out = fused_head_sample_triton(hidden.view(2, 3, 16), embedding, SOFTCAP, 0.8, 9, **SMALL_BLOCKS)
    flat = head_sample_torch(hidden, embedding, SOFTCAP, 0.8, 9)
    assert out.entropy.shape == (2, 3) and out.self_conditioning.shape == (2, 3, 16)
    check(HeadSample(*(t.flatten(0, 1) for t in out)), flat, torch.float32)
    shaped = head_sample_torch(hidden.view(2, 3, 16), embedding, SOFTCAP, 0.8, 9)
    assert torch.equal(shaped.sample.flatten(), flat.sample)


def test_peaked_rows():
    """Each row aligned with one token's embedding at the serving's lowest temperature: the top logit near 43, an
    entropy near 0, which the shifted sum keeps exact where lse - E[z] would cancel two numbers of ~43."""
    generator = torch.Generator().manual_seed(3)
    _, embedding = head(1, 32, 257, torch.float32, generator)
    hidden = embedding[torch.tensor([0, 100, 255, 256])] * 5.0
    out = fused_head_sample_triton(hidden, embedding, SOFTCAP, 0.408, 5, splits=2, **SMALL_BLOCKS)
    reference = head_sample_torch(hidden, embedding, SOFTCAP, 0.408, 5)
    assert reference.entropy.max() < 1e-3
    check(out, reference, torch.float32)


def test_samples_follow_softmax():
    """2,000 rows with the same hidden state draw independent noise: the samples' frequencies match softmax(z)."""
    generator = torch.Generator().manual_seed(1)
    hidden, embedding = head(1, 16, 7, torch.float32, generator)
    draws = 2000
    out = fused_head_sample_triton(hidden.expand(draws, -1), embedding, SOFTCAP, 1.0, 2024, block_n=128)
    reference = head_sample_torch(hidden.expand(draws, -1), embedding, SOFTCAP, 1.0, 2024)
    assert torch.equal(out.sample, reference.sample)
    logits = torch.tanh(hidden @ embedding.T / SOFTCAP) * SOFTCAP
    probs = torch.softmax(logits[0], dim=-1)
    frequencies = torch.bincount(out.sample, minlength=7) / draws
    assert probs.min() > 0.01 and probs.max() < 0.5  # a spread distribution, not a near-deterministic one
    assert (frequencies - probs).abs().max() < 0.035  # 3 standard deviations of a frequency over 2,000 draws


@triton.jit
def _uniforms(seed_ptr, counters_ptr, out_ptr, n, BLOCK: tl.constexpr):
    index = tl.arange(0, BLOCK)
    mask = index < n
    tl.store(out_ptr + index, tl.rand(tl.load(seed_ptr), tl.load(counters_ptr + index, mask=mask, other=0)), mask=mask)


@pytest.mark.parametrize("seed", [0, 12345, 2**40 + 7, -3])
def test_philox_matches_tl_rand(seed):
    """Seeds past 2^32 use Philox's second key word, counters past 2^32 its second counter word."""
    counters = torch.cat([torch.arange(2000), torch.arange(2**32 - 8, 2**32 + 8)])
    out = torch.empty(counters.shape[0])
    _uniforms[(1,)](torch.tensor([seed]), counters, out, counters.shape[0], BLOCK=2048)
    assert torch.equal(out, philox_uniform(seed, counters))


def test_cpu_dispatch_is_torch():
    generator = torch.Generator().manual_seed(2)
    hidden, embedding = head(2, 16, 50, torch.float32, generator)
    out = fused_head_sample(hidden, embedding, SOFTCAP, 0.5, 3)
    for got, expected in zip(out, head_sample_torch(hidden, embedding, SOFTCAP, 0.5, 3)):
        assert torch.equal(got, expected)
