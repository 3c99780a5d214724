"""The decoder's head and the serving sampler in one pass over the vocabulary, without [N, V] logits.

For each row of final-normed hidden states: the soft-capped, tempered logits z = tanh(h·E^T / cap)·cap / T, their
softmax's entropy, the argmax, one sample, and the self-conditioning signal softmax(z) @ E that the next denoising
step embeds (today it is recomputed there from the [N, V] logits).

The sample is drawn by the Gumbel-max trick, argmax_v(z_v - log(-log u_v)), exactly distributed as softmax(z).
The uniforms are a counter-based stream: Triton's Philox `tl.rand(seed, row·V + v)`. The kernel draws each one where
it needs it (no [N, V] noise tensor exists, nothing is pre-drawn), and `philox_uniform` reproduces that stream bit
for bit in torch, so the torch version draws the same noise and, from the same logits, the same sample.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

# Triton's Philox4x32-10 (triton/language/random.py), of which tl.rand keeps the first output word.
PHILOX_ROUNDS = 10
PHILOX_KEY_A, PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
PHILOX_ROUND_A, PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
UINT32 = 0xFFFFFFFF
UNIFORM_SCALE = 4.6566127342e-10  # tl.rand's: the largest with (2^31 - 1)·scale < 1 in fp32


class HeadSample(NamedTuple):
    entropy: torch.Tensor  # [...] fp32: entropy of softmax(z), in nats
    argmax: torch.Tensor  # [...] int64: first index of the largest logit
    sample: torch.Tensor  # [...] int64: one draw from softmax(z)
    self_conditioning: torch.Tensor  # [..., H] fp32: Σ_v softmax(z)_v · E_v


def fused_head_sample(
    hidden: torch.Tensor,
    embedding: torch.Tensor,
    softcap: float,
    temperature: torch.Tensor | float,
    seed: torch.Tensor | int,
) -> HeadSample:
    """Head + sampler of every row of hidden [..., H] (final-normed; rows numbered in row-major order), with
    embedding [V, H] (the tied head, same dtype), temperature a scalar and seed an int, each a 0-dim device tensor
    for a step with no host value and no copy. Returns [...] per row, and [..., H] for the signal.

    The logits are h·E_v rounded to the activation dtype (as F.linear's output is), cast to fp32, soft-capped and
    divided by the temperature, as `DiffusionGemma.logits` and the serving step compute them. On CUDA one Triton
    launch tiles the vocabulary; elsewhere the torch version builds the logits (same results to rounding).
    """
    if hidden.device.type == "cuda" and head_sampler_triton is not None:
        return head_sampler_triton.fused_head_sample_triton(hidden, embedding, softcap, temperature, seed)
    return head_sample_torch(hidden, embedding, softcap, temperature, seed)


def fused_head_available(device: torch.device) -> bool:
    """Whether the Triton kernel can run here (CUDA with triton installed); elsewhere the torch version would
    build the full logits anyway, and the caller's own head is as good."""
    return device.type == "cuda" and head_sampler_triton is not None


def head_sample_torch(
    hidden: torch.Tensor,
    embedding: torch.Tensor,
    softcap: float,
    temperature: torch.Tensor | float,
    seed: torch.Tensor | int,
) -> HeadSample:
    """`fused_head_sample` from the full [N, V] logits: the reference the kernel is tested against."""
    logits = F.linear(hidden, embedding).float()
    z = torch.tanh(logits / softcap) * softcap / temperature
    probs = torch.softmax(z, dim=-1)
    counters = torch.arange(z.numel(), device=z.device).view(z.shape)
    sample = (z - torch.log(-torch.log(philox_uniform(seed, counters)))).argmax(dim=-1)
    entropy = torch.special.entr(probs).sum(dim=-1)
    return HeadSample(entropy, z.argmax(dim=-1), sample, probs @ embedding.float())


def philox_uniform(seed: torch.Tensor | int, counters: torch.Tensor) -> torch.Tensor:
    """`tl.rand(seed, counters)` in torch, bit for bit: fp32 uniforms in [0, 1), one per int64 counter.

    uint32 words are held in int64; a 32x32-bit product is formed from 16-bit halves so it never overflows.
    """
    seed = torch.as_tensor(seed, dtype=torch.int64, device=counters.device)
    k0, k1 = seed & UINT32, (seed >> 32) & UINT32
    c0, c1 = counters & UINT32, (counters >> 32) & UINT32
    c2 = c3 = torch.zeros_like(c0)
    for _ in range(PHILOX_ROUNDS):
        hi_b, lo_b = _multiply(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _multiply(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + PHILOX_KEY_A) & UINT32, (k1 + PHILOX_KEY_B) & UINT32
    # tl.rand: the word as int32, negative values folded onto [0, 2^31), times the scale in fp32
    word = torch.where(c0 >= 2**31, c0 - 2**32, c0)
    word = torch.where(word < 0, -word - 1, word)
    return word.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32, device=counters.device)


def _multiply(constant: int, word: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The high and low 32 bits of constant·word (both uint32)."""
    low = constant * (word & 0xFFFF)
    carry = constant * (word >> 16) + (low >> 16)
    return carry >> 16, ((carry & 0xFFFF) << 16) | (low & 0xFFFF)


# Last: head_sampler_triton imports HeadSample from this module. Where triton is not installed, torch runs.
try:
    from engine.kernels import head_sampler_triton
except ImportError:
    head_sampler_triton = None
