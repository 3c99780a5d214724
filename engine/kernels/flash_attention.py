"""Attention with its masks given by positions instead of a dense [T, S] mask, for head_dim up to 512.

Query row i sits at position q_positions[i], key slot s at k_positions[s] (negative: an empty slot). Key s is
visible to query i iff k_pos[s] >= 0, and k_pos[s] <= q_pos[i] when causal, and k_pos[s] > ref - window when a
window is given, with ref = q_pos[i] when causal and the first query's position otherwise (the decoder: every
valid key, and a sliding window measured from the canvas start). Scaling 1.0; query head j reads KV head
j // (H/KV). A query that sees no key gets zeros (as torch 2.13's CPU SDPA gives too).

`prefix` is a second key set that every batch row shares, stored once with batch 1 (the prompt's cache), attended
in the same softmax as [prefix ; own keys] and never copied per row: what `shared_prefix_attention` does with masks.

On CUDA the Triton flash kernel runs (online softmax over key tiles, no score matrix in memory); elsewhere the
dense masks and SDPA. (Long prompts are encoded in chunks by the engine: engine.engine.PROMPT_CHUNK.)
"""

from __future__ import annotations

import torch

from engine.kernels.attention import attention

Segment = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # keys, values, key positions


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_positions: torch.Tensor,
    k_positions: torch.Tensor,
    causal: bool,
    window: int | None = None,
    prefix: Segment | None = None,
) -> torch.Tensor:
    """q: [B, H, T, D]; k, v: [B, KV, S, D]; q_positions [T] or [B, T]; k_positions [S] or [B, S] (int);
    prefix: (keys, values [1, KV, Sp, D], positions [Sp]) or None. Returns [B, H, T, D] in q's dtype."""
    if q.device.type == "cuda" and flash_attention_triton is not None:
        return flash_attention_triton.flash_attention_triton(q, k, v, q_positions, k_positions, causal, window, prefix)
    return flash_attention_torch(q, k, v, q_positions, k_positions, causal, window, prefix)


def flash_available() -> bool:
    """Whether the Triton kernel is installed (it runs on CUDA tensors only)."""
    return flash_attention_triton is not None


def flash_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_positions: torch.Tensor,
    k_positions: torch.Tensor,
    causal: bool,
    window: int | None = None,
    prefix: Segment | None = None,
) -> torch.Tensor:
    """`flash_attention` with the dense masks and SDPA: the reference the kernel is tested against."""
    if prefix is not None:
        batch = q.shape[0]
        prefix_k, prefix_v, prefix_positions = prefix
        k = torch.cat([prefix_k.expand(batch, -1, -1, -1), k], dim=2)
        v = torch.cat([prefix_v.expand(batch, -1, -1, -1), v], dim=2)
        k_positions = torch.cat([prefix_positions.expand(*k_positions.shape[:-1], -1), k_positions], dim=-1)
    return attention(q, k, v, _batched(visible_keys(q_positions, k_positions, causal, window)))


def visible_keys(q_positions: torch.Tensor, k_positions: torch.Tensor, causal: bool,
                 window: int | None) -> torch.Tensor:
    """Boolean [T, S] (or [B, T, S] with batched positions): which keys each query may attend to."""
    queries, keys = q_positions[..., :, None], k_positions[..., None, :]
    visible = keys >= 0
    if causal:
        visible = visible & (keys <= queries)
    if window is not None:
        reference = queries if causal else q_positions[..., :1, None]
        visible = visible & (keys > reference - window)
    return visible.expand(torch.broadcast_shapes(queries.shape, keys.shape))


def _batched(mask: torch.Tensor) -> torch.Tensor:
    """A [B, T, S] mask as SDPA broadcasts it over heads: [B, 1, T, S]; [T, S] stays as it is."""
    return mask[:, None] if mask.dim() == 3 else mask


# Last: flash_attention_triton imports this module. Where triton is not installed, the torch path runs.
try:
    from engine.kernels import flash_attention_triton
except ImportError:
    flash_attention_triton = None
