"""`flash_attention` as one Triton launch: online softmax over key tiles, masks computed from positions.

Program (m, b·KV + g, d) takes BLOCK_M query rows of KV head g's group: the G = H/KV query heads that read it,
stacked (row r is head g·G + r // T, query r % T), so each key/value tile is loaded once for the whole group. Per
key tile it builds the visibility from the positions, skips the tile when no row of the block may see any of its
keys (a causal prompt's future, keys outside a sliding window, empty slots), and otherwise updates the running
max, exp-sum and output accumulator. The shared prefix, when given, is a first run of tiles (batch stride 0).

head_dim up to 512 (the released model: 256 sliding, 512 full): the QK product runs over D in BLOCK_DK chunks
(q is re-read per chunk, from cache), and the output is split over programs in BLOCK_DV columns (grid axis 2).
At D=512 that is two programs per query block, each recomputing the scores: 1.5x the FLOPs of one program, but a
64x512 fp32 accumulator (128 KB) would not fit in registers next to the score tile. BLOCK_DV = D fits at D<=256.
Block sizes are untuned defaults (no GPU was available when this was written).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.flash_attention import Segment
from engine.kernels.triton_common import dot, dot_in_fp32, round_to

# With the default tiles, bf16: no register spills from D=64 to D=512 (ptxas, sm_90); 4 warps spill.
NUM_WARPS = 8


def flash_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_positions: torch.Tensor,
    k_positions: torch.Tensor,
    causal: bool,
    window: int | None = None,
    prefix: Segment | None = None,
    block_m: int = 64,
    block_n: int | None = None,
    block_dk: int | None = None,
    block_dv: int | None = None,
) -> torch.Tensor:
    """`flash_attention` (same arguments and result); the block sizes are for tests and tuning."""
    batch, heads, length, dim = q.shape
    kv_heads, keys = k.shape[1], k.shape[2]
    if heads % kv_heads or k.shape[0] != batch or k.shape[-1] != dim:
        raise ValueError(f"q {tuple(q.shape)} does not group over k {tuple(k.shape)}")
    padded = triton.next_power_of_2(dim)
    block_n = block_n or (64 if dim <= 128 else 32)
    block_dk = block_dk or min(padded, 64)
    block_dv = block_dv or min(padded, 256)
    # An absent prefix is an empty key run: its loop does nothing.
    prefix_k, prefix_v, prefix_positions = prefix if prefix is not None else (k, v, k_positions)
    prefix_length = prefix_k.shape[2] if prefix is not None else 0
    q_positions = q_positions.expand(batch, length)
    k_positions = k_positions.expand(batch, keys)
    out = torch.empty(batch, heads, length, dim, dtype=q.dtype, device=q.device)
    group = heads // kv_heads
    grid = (triton.cdiv(group * length, block_m), batch * kv_heads, triton.cdiv(dim, block_dv))
    _flash_kernel[grid](
        q, k, v, prefix_k, prefix_v, q_positions, k_positions, prefix_positions, out,
        length, keys, prefix_length, dim, group, kv_heads, window or 0,
        *q.stride(), *k.stride(), *v.stride(), *prefix_k.stride()[1:], *prefix_v.stride()[1:],
        *q_positions.stride(), *k_positions.stride(), prefix_positions.stride(-1),
        CAUSAL=causal, HAS_WINDOW=window is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_DK=block_dk,
        BLOCK_DV=block_dv, DOT_FP32=dot_in_fp32(q), num_warps=NUM_WARPS,
    )
    return out


@triton.jit
def _attend(
    q_ptr, q_rows, sq_d, row_mask, q_positions, reference, k_ptr, sk_s, sk_d, v_ptr, sv_s, sv_d, kpos_ptr, skp_s,
    S, d_out, D, window, m, l, acc,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr, DOT_FP32: tl.constexpr,
):
    """The running (max, exp-sum, accumulator) of the block's rows after one run of S key slots."""
    for start in range(0, S, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_mask = cols < S
        k_pos = tl.load(kpos_ptr + cols * skp_s, mask=col_mask, other=-1).to(tl.int32)
        visible = row_mask[:, None] & (k_pos >= 0)[None, :]
        if CAUSAL:
            visible = visible & (k_pos[None, :] <= q_positions[:, None])
        if HAS_WINDOW:
            visible = visible & (k_pos[None, :] > reference[:, None] - window)
        if tl.max(visible.to(tl.int32)) > 0:
            s = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for d0 in range(0, D, BLOCK_DK):
                d = d0 + tl.arange(0, BLOCK_DK)
                d_mask = d < D
                q = tl.load(q_ptr + q_rows[:, None] + d[None, :] * sq_d, mask=row_mask[:, None] & d_mask[None, :],
                            other=0.0)
                k = tl.load(k_ptr + cols[None, :] * sk_s + d[:, None] * sk_d, mask=d_mask[:, None] & col_mask[None, :],
                            other=0.0)
                s = dot(q, k, s, DOT_FP32)
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that have seen no key yet
            alpha = tl.exp(m - m_safe)
            p = tl.exp(s - m_safe[:, None])
            l = l * alpha + tl.sum(p, axis=1)
            v = tl.load(v_ptr + cols[:, None] * sv_s + d_out[None, :] * sv_d,
                        mask=col_mask[:, None] & (d_out < D)[None, :], other=0.0)
            acc = dot(round_to(p, v_ptr.dtype.element_ty), v, acc * alpha[:, None], DOT_FP32)
            m = m_new
    return m, l, acc


@triton.jit
def _flash_kernel(
    q_ptr, k_ptr, v_ptr, pk_ptr, pv_ptr, qpos_ptr, kpos_ptr, ppos_ptr, o_ptr,
    T, S, SP, D, GROUP, KV, window,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_s, sk_d, sv_b, sv_h, sv_s, sv_d,
    spk_h, spk_s, spk_d, spv_h, spv_s, spv_d, sqp_b, sqp_t, skp_b, skp_s, spp_s,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_FP32: tl.constexpr,
):
    b = tl.program_id(1) // KV
    g = tl.program_id(1) % KV
    r = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = r < GROUP * T
    head = g * GROUP + r // T
    t = r % T
    q_rows = b.to(tl.int64) * sq_b + head.to(tl.int64) * sq_h + t.to(tl.int64) * sq_t
    # Positions compared in int32 (they stay below 2^31): half the registers of int64 over a [M, N] tile.
    q_positions = tl.load(qpos_ptr + b * sqp_b + t * sqp_t, mask=row_mask, other=0).to(tl.int32)
    if CAUSAL:
        reference = q_positions
    else:  # the decoder's window is measured from its first query (the canvas start)
        reference = tl.zeros_like(q_positions) + tl.load(qpos_ptr + b * sqp_b).to(tl.int32)
    d_out = tl.program_id(2) * BLOCK_DV + tl.arange(0, BLOCK_DV)

    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    batch, group = b.to(tl.int64), g.to(tl.int64)
    m, l, acc = _attend(
        q_ptr, q_rows, sq_d, row_mask, q_positions, reference, pk_ptr + group * spk_h, spk_s, spk_d,
        pv_ptr + group * spv_h, spv_s, spv_d, ppos_ptr, spp_s, SP, d_out, D, window, m, l, acc,
        CAUSAL, HAS_WINDOW, BLOCK_M, BLOCK_N, BLOCK_DK, DOT_FP32)
    m, l, acc = _attend(
        q_ptr, q_rows, sq_d, row_mask, q_positions, reference, k_ptr + batch * sk_b + group * sk_h, sk_s, sk_d,
        v_ptr + batch * sv_b + group * sv_h, sv_s, sv_d, kpos_ptr + b * skp_b, skp_s, S, d_out, D, window, m, l, acc,
        CAUSAL, HAS_WINDOW, BLOCK_M, BLOCK_N, BLOCK_DK, DOT_FP32)
    out = acc / tl.where(l > 0, l, 1.0)[:, None]  # no visible key: acc is 0, and so is the output
    o_rows = ((b * GROUP * KV + head).to(tl.int64) * T + t) * D
    tl.store(o_ptr + o_rows[:, None] + d_out[None, :], round_to(out, o_ptr.dtype.element_ty),
             mask=row_mask[:, None] & (d_out < D)[None, :])
