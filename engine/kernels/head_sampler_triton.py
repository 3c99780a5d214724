"""`fused_head_sample` as one Triton launch over vocabulary tiles plus a small torch combine.

Program (r, s) takes BLOCK_N rows of `hidden` and split s of the vocabulary (a run of whole BLOCK_V tiles). Per
tile it computes the logits h·E_v (the hidden dimension in BLOCK_H chunks, fp32 accumulate, rounded to the
activation dtype as F.linear's output is), soft-caps and tempers them, and updates, per row:
- the running max m, the exp-sum l = Σ e^(z-m) and the shifted sum a = Σ e^(z-m)·(z-m) (entropy = log l - a/l:
  relative to the max, so a peaked row does not cancel two large numbers), rescaled by e^(m_old - m_new);
- the argmax (first index on ties, as torch's) and the Gumbel-max sample: argmax of z - log(-log u) with u the
  Philox stream `tl.rand(seed, row·V + v)`, one draw per (row, token), made here and never stored;
- the self-conditioning sum Σ e^(z-m)·E_v over the full hidden width, rescaled the same way.
That last accumulator is [BLOCK_N, H] (H = 2816 in the released model): it cannot live in registers, so each
program keeps it in its own slice of an fp32 [splits, N, H] buffer (read, rescaled, added to and written back in
BLOCK_H chunks once per tile; no atomics, deterministic; the first tile writes without reading, so the buffer needs
no zeroing). The splits (enough programs to fill the GPU) are merged in torch: [splits, N] statistics and one
weighted sum of the partial signals.

Traffic: E is read twice per tile (logits, then signal; the second read from cache) by each row block, and the
accumulator moves N·H·8 bytes per BLOCK_V tokens: N·V·H·(4/BLOCK_N + 8/BLOCK_V) bytes in all, least at 64x128 for
the register budget of the score tile. At the released shape (V=262,144, H=2816) and a 256-token canvas that is
~24 GB through L2/HBM per step, half of it the accumulator: likely this kernel's bound, so benchmark it against
the unfused chain before relying on it. Block sizes are untuned (no GPU was available when this was written).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.head_sampler import HeadSample
from engine.kernels.triton_common import dot, dot_in_fp32, round_to

BLOCK_N, BLOCK_V, BLOCK_H = 64, 128, 32
NUM_WARPS = 8  # with these blocks: 217 registers, no spills (ptxas, sm_90, bf16)
# Before the first tile: finite, so the first rescale multiplies the empty sums by e^(-huge) = 0 (never 0·inf).
NO_MAX = tl.constexpr(-1.0e30)


def fused_head_sample_triton(
    hidden: torch.Tensor,
    embedding: torch.Tensor,
    softcap: float,
    temperature: torch.Tensor | float,
    seed: torch.Tensor | int,
    splits: int | None = None,
    block_n: int = BLOCK_N,
    block_v: int = BLOCK_V,
    block_h: int = BLOCK_H,
) -> HeadSample:
    """`fused_head_sample` (same arguments and result); `splits` and the block sizes are for tests and tuning."""
    *leading, width = hidden.shape
    vocab = embedding.shape[0]
    if embedding.dtype != hidden.dtype or embedding.shape[1] != width:
        raise ValueError(f"hidden {tuple(hidden.shape)} {hidden.dtype} and embedding "
                         f"{tuple(embedding.shape)} {embedding.dtype} do not match")
    hidden = hidden.reshape(-1, width)
    rows, device = hidden.shape[0], hidden.device
    row_blocks = triton.cdiv(rows, block_n)
    if splits is None:
        splits = triton.cdiv(_programs_wanted(device), row_blocks)
    split_size = triton.cdiv(triton.cdiv(vocab, min(splits, triton.cdiv(vocab, block_v))), block_v) * block_v
    splits = triton.cdiv(vocab, split_size)
    stats = torch.empty(5, splits, rows, dtype=torch.float32, device=device)  # max, sum, shifted sum, top, key
    indices = torch.empty(2, splits, rows, dtype=torch.int32, device=device)  # argmax, sample
    partial = torch.empty(splits, rows, width, dtype=torch.float32, device=device)
    _head_sample_kernel[(row_blocks, splits)](
        hidden.contiguous(), embedding.contiguous(),
        torch.as_tensor(temperature, dtype=torch.float32, device=device).reshape(1),
        torch.as_tensor(seed, dtype=torch.int64, device=device).reshape(1),
        stats, indices, partial, rows, vocab, width, split_size, float(softcap),
        BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=block_h, DOT_FP32=dot_in_fp32(hidden), num_warps=NUM_WARPS,
    )
    return HeadSample(*(t.reshape(*leading, *t.shape[1:]) for t in _combine(stats, indices, partial)))


def _programs_wanted(device: torch.device) -> int:
    """Two programs per SM on CUDA; one (no splitting) elsewhere, where only the interpreter runs the kernel."""
    return 2 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def _combine(stats: torch.Tensor, indices: torch.Tensor, partial: torch.Tensor) -> HeadSample:
    """Merge the splits: rescale each split's sums to the row's overall max."""
    maxes, sums, shifted, tops, keys = stats
    best = maxes.max(dim=0).values
    weight = torch.exp(maxes - best)
    total = (weight * sums).sum(dim=0)
    entropy = torch.log(total) - (weight * (shifted + sums * (maxes - best))).sum(dim=0) / total
    # argmax over splits takes the first one on ties: the lowest token index, as within a split
    argmax = indices[0].gather(0, tops.argmax(dim=0, keepdim=True))[0].long()
    sample = indices[1].gather(0, keys.argmax(dim=0, keepdim=True))[0].long()
    signal = (weight[..., None] * partial).sum(dim=0) / total[:, None]
    return HeadSample(entropy, argmax, sample, signal)


@triton.jit
def _tanh(x):
    """tanh in fp32 as Cephes' tanhf computes it (relative error ~1.4e-7): an odd polynomial below 0.625, else
    1 - 2/(e^2|x| + 1). Core Triton has no tanh, and libdevice's does not run under the interpreter."""
    ax = tl.abs(x)
    x2 = x * x
    poly = ((((-5.70498872745e-3 * x2 + 2.06390887954e-2) * x2 - 5.37397155531e-2) * x2 + 1.33314422036e-1) * x2
            - 3.33332819422e-1) * x2 * x + x
    big = 1.0 - 2.0 / (tl.exp(2.0 * ax) + 1.0)
    return tl.where(ax > 0.625, tl.where(x < 0, -big, big), poly)


@triton.jit
def _head_sample_kernel(
    h_ptr, e_ptr, temperature_ptr, seed_ptr, stats_ptr, index_ptr, partial_ptr, N, V, H, split_size, softcap,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, DOT_FP32: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    split = tl.program_id(1)
    start = split * split_size
    end = tl.minimum(start + split_size, V)
    temperature = tl.load(temperature_ptr)
    seed = tl.load(seed_ptr)
    partial_rows = partial_ptr + (split * N + rows).to(tl.int64)[:, None] * H

    m = tl.full([BLOCK_N], NO_MAX, dtype=tl.float32)
    l = tl.zeros([BLOCK_N], dtype=tl.float32)
    a = tl.zeros([BLOCK_N], dtype=tl.float32)
    top = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    top_index = tl.zeros([BLOCK_N], dtype=tl.int32)
    key = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    key_index = tl.zeros([BLOCK_N], dtype=tl.int32)
    for v0 in range(start, end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < end
        e_cols = e_ptr + cols.to(tl.int64) * H
        s = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
        for k0 in range(0, H, BLOCK_H):
            k = k0 + tl.arange(0, BLOCK_H)
            k_mask = k < H
            x = tl.load(h_ptr + rows[:, None] * H + k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            w = tl.load(e_cols[None, :] + k[:, None], mask=k_mask[:, None] & col_mask[None, :], other=0.0)
            s = dot(x, w, s, DOT_FP32)
        s = round_to(s, h_ptr.dtype.element_ty).to(tl.float32)  # F.linear's output is in the activation dtype
        z = _tanh(s / softcap) * softcap / temperature
        z = tl.where(col_mask[None, :], z, float("-inf"))

        tile_top = tl.max(z, axis=1)
        better = tile_top > top  # strictly: an earlier tile keeps a tie
        top_index = tl.where(better, v0 + tl.argmax(z, axis=1).to(tl.int32), top_index)
        top = tl.maximum(top, tile_top)

        u = tl.rand(seed, rows.to(tl.int64)[:, None] * V + cols[None, :])
        g = z - tl.log(-tl.log(u))
        tile_key = tl.max(g, axis=1)
        better = tile_key > key
        key_index = tl.where(better, v0 + tl.argmax(g, axis=1).to(tl.int32), key_index)
        key = tl.maximum(key, tile_key)

        m_new = tl.maximum(m, tile_top)
        alpha = tl.exp(m - m_new)
        p = tl.exp(z - m_new[:, None])
        shifted = p * tl.where(col_mask[None, :], z - m_new[:, None], 0.0)
        a = alpha * (a + l * (m - m_new)) + tl.sum(shifted, axis=1)
        l = alpha * l + tl.sum(p, axis=1)
        m = m_new

        # Rounded to the embedding dtype, as the model's softmax(...).to(weight.dtype) @ weight.
        p = round_to(p, e_ptr.dtype.element_ty)
        for k0 in range(0, H, BLOCK_H):
            k = k0 + tl.arange(0, BLOCK_H)
            k_mask = k < H
            w = tl.load(e_cols[:, None] + k[None, :], mask=col_mask[:, None] & k_mask[None, :], other=0.0)
            acc = dot(p, w, tl.zeros([BLOCK_N, BLOCK_H], dtype=tl.float32), DOT_FP32)
            ptrs = partial_rows + k[None, :]
            mask = row_mask[:, None] & k_mask[None, :]
            if v0 > start:
                acc += tl.load(ptrs, mask=mask, other=0.0) * alpha[:, None]
            tl.store(ptrs, acc, mask=mask)

    slots = split * N + rows
    field = tl.num_programs(1) * N
    tl.store(stats_ptr + slots, m, mask=row_mask)
    tl.store(stats_ptr + field + slots, l, mask=row_mask)
    tl.store(stats_ptr + 2 * field + slots, a, mask=row_mask)
    tl.store(stats_ptr + 3 * field + slots, top, mask=row_mask)
    tl.store(stats_ptr + 4 * field + slots, key, mask=row_mask)
    tl.store(index_ptr + slots, top_index, mask=row_mask)
    tl.store(index_ptr + field + slots, key_index, mask=row_mask)
