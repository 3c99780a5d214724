"""The routed experts as two grouped-GEMM Triton launches, dense or with weight-only quantised experts.

Rows (the T·K token-expert assignments) are sorted by expert with `sort_by_expert`. Each expert's run of rows is
cut into blocks of BLOCK_M; program (b, n) takes block b, finds its expert by counting the per-expert block ends
that lie at or before b (a vector compare over all experts), and computes one BLOCK_N tile of output columns.
The grid is sized from T·K and E alone (at most floor(T·K / BLOCK_M) + min(E, T·K) blocks are ever occupied), so
nothing is read back to the host; programs past the last occupied block do nothing.

1. gate/up: h = gelu_tanh(x W_gate^T) * (x W_up^T), fused in the epilogue, stored in the activation dtype.
2. down: y = h W_down^T times the row's router weight, stored in fp32 at the row's (token, slot) position.
Then y.view(T, K, H).sum(1) in fp32, as `moe_experts` does: deterministic (no atomics).

Weights are dense (bf16/fp16/fp32, cast to the activation dtype in the kernel) or a `QuantizedWeight`:
int4 (packed uint8 + bf16 group scales) or fp8-e4m3 (codes read as uint8, fp32 per-row scales), dequantised tile by
tile in fp32 and rounded to the activation dtype, the values `QuantizedWeight.dequantize(x.dtype)` gives the torch
reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.moe import sort_by_expert
from engine.kernels.quantize import QuantizedWeight
from engine.kernels.triton_common import dot, dot_in_fp32

DENSE, INT4, FP8 = 0, 1, 2
BLOCK_M = 16
MAX_BLOCK = 64
MIN_BLOCK = 16  # tl.dot's smallest tile side on the GPU


def moe_experts_triton(
    x: torch.Tensor,
    gate_up_proj: torch.Tensor | QuantizedWeight,
    down_proj: torch.Tensor | QuantizedWeight,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
) -> torch.Tensor:
    """`moe_experts` (same arguments and result) as two Triton launches; either weight may be quantised."""
    num_tokens, top_k = top_k_index.shape
    num_experts, two_i, hidden = gate_up_proj.shape
    intermediate = two_i // 2
    rows = num_tokens * top_k
    _, order, group_ends = sort_by_expert(top_k_index, num_experts)
    counts = torch.diff(group_ends, prepend=group_ends.new_zeros(1))
    block_ends = torch.cumsum((counts + BLOCK_M - 1) // BLOCK_M, 0).to(torch.int32)
    routing = (order.contiguous(), group_ends, block_ends)
    blocks = rows // BLOCK_M + min(num_experts, rows)
    x = x.contiguous()
    h = x.new_empty(rows, intermediate)
    _launch(_gate_up_kernel, blocks, x, gate_up_proj, routing, h, intermediate, hidden, top_k)
    y = torch.empty(rows, hidden, device=x.device, dtype=torch.float32)
    weights = top_k_weights.reshape(-1).float().contiguous()
    _launch(_down_kernel, blocks, h, down_proj, routing, y, hidden, intermediate, top_k, weights)
    return y.view(num_tokens, top_k, hidden).sum(dim=1).to(x.dtype)


def _launch(kernel, blocks, inputs, weight, routing, out, n, k, top_k, router_weights=None):
    """One grouped GEMM: `out` tile (block, n-tile) = inputs' rows of a block times the block's expert weight."""
    scheme, data, scales, group = _weight_operands(weight)
    block_n, block_k = _block(n), _block(k)
    num_experts = weight.shape[0]
    extra = () if router_weights is None else (router_weights,)
    kernel[(blocks, triton.cdiv(n, block_n))](
        inputs, data, scales, *routing, *extra, out, n, k, num_experts,
        TOP_K=top_k, SCHEME=scheme, GROUP=group, BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_K=block_k,
        BLOCK_E=triton.next_power_of_2(num_experts), DOT_FP32=dot_in_fp32(inputs),
    )


def _weight_operands(weight):
    """(scheme, data, scales, group size) for the kernel; dense weights pass themselves as (unused) scales."""
    if isinstance(weight, QuantizedWeight):
        if weight.group_size is None:
            return FP8, weight.data.view(torch.uint8), weight.scales, 1
        return INT4, weight.data, weight.scales, weight.group_size
    weight = weight.contiguous()
    return DENSE, weight, weight, 1


def _block(size: int) -> int:
    return max(MIN_BLOCK, min(MAX_BLOCK, triton.next_power_of_2(size)))


@triton.jit
def _block_rows(block, group_ends_ptr, block_ends_ptr, E, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr):
    """The expert of row block `block` (E when past the last occupied block), its sorted rows and their mask."""
    experts = tl.arange(0, BLOCK_E)
    ends = tl.load(block_ends_ptr + experts, mask=experts < E, other=2147483647)
    expert = tl.sum((ends <= block).to(tl.int32), axis=0)
    previous = expert > 0
    first_block = tl.load(block_ends_ptr + expert - 1, mask=previous, other=0)
    first_row = tl.load(group_ends_ptr + expert - 1, mask=previous, other=0)
    end_row = tl.load(group_ends_ptr + expert, mask=expert < E, other=0)
    rows = first_row + (block - first_block) * BLOCK_M + tl.arange(0, BLOCK_M)
    return expert, rows, rows < end_row


@triton.jit
def _weight_tile(w_ptr, s_ptr, expert, n, k, n_mask, k_mask, N, K, SCHEME: tl.constexpr, GROUP: tl.constexpr):
    """W[expert, n, k] as a [BLOCK_K, BLOCK_N] fp32 tile (transposed for the dot), dequantised if packed."""
    mask = k_mask[:, None] & n_mask[None, :]
    base = expert.to(tl.int64) * N
    if SCHEME == 1:  # INT4: byte k // 2, low nibble for even k; scale of group k // GROUP
        packed = tl.load(w_ptr + (base + n[None, :]) * (K // 2) + k[:, None] // 2, mask=mask, other=0)
        q = ((packed.to(tl.int32) >> ((k[:, None] % 2) * 4)) & 0xF).to(tl.float32) - 8.0
        scale = tl.load(s_ptr + (base + n[None, :]) * (K // GROUP) + k[:, None] // GROUP, mask=mask, other=0.0)
        w = q * scale.to(tl.float32)
    elif SCHEME == 2:  # FP8 (as uint8 codes): one scale per output row
        codes = tl.load(w_ptr + (base + n[None, :]) * K + k[:, None], mask=mask, other=0)
        w = fp8_e4m3_to_fp32(codes.to(tl.int32)) * tl.load(s_ptr + base + n, mask=n_mask, other=0.0)[None, :]
    else:
        w = tl.load(w_ptr + (base + n[None, :]) * K + k[:, None], mask=mask, other=0.0).to(tl.float32)
    return w


@triton.jit
def fp8_e4m3_to_fp32(bits):
    """float8_e4m3fn codes (int32) to fp32, exactly, by bit arithmetic: Triton has no e4m3 type below sm89.
    Normal codes move their 4 exponent and 3 mantissa bits into fp32's fields, rebiased by 127 - 7 = 120; exponent
    0 is subnormal, m·2^-9. The NaN codes (0x7F, 0xFF) never occur: quantisation clamps to ±448."""
    normal = (((bits & 0x7F) << 20) + (120 << 23)).to(tl.float32, bitcast=True)
    magnitude = tl.where((bits & 0x78) == 0, (bits & 7).to(tl.float32) * 0.001953125, normal)
    return tl.where((bits & 0x80) != 0, -magnitude, magnitude)


@triton.jit
def _dot(a, w, acc, DOT_FP32: tl.constexpr):
    """acc + a @ w, w rounded to a's dtype first (the reference multiplies in the activation dtype)."""
    return dot(a, w.to(a.dtype), acc, DOT_FP32)


@triton.jit
def _gate_up_kernel(
    x_ptr, w_ptr, s_ptr, order_ptr, group_ends_ptr, block_ends_ptr, h_ptr, I, H, E,
    TOP_K: tl.constexpr, SCHEME: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr, DOT_FP32: tl.constexpr,
):
    expert, rows, row_mask = _block_rows(tl.program_id(0), group_ends_ptr, block_ends_ptr, E, BLOCK_M, BLOCK_E)
    if expert < E:
        tokens = tl.load(order_ptr + rows, mask=row_mask, other=0) // TOP_K
        n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = n < I
        gate = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for start in range(0, H, BLOCK_K):
            k = start + tl.arange(0, BLOCK_K)
            k_mask = k < H
            a = tl.load(x_ptr + tokens[:, None].to(tl.int64) * H + k[None, :],
                        mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            # gate rows come first in gate_up_proj [E, 2I, H], then the up rows
            gate = _dot(a, _weight_tile(w_ptr, s_ptr, expert, n, k, n_mask, k_mask, 2 * I, H, SCHEME, GROUP),
                        gate, DOT_FP32)
            up = _dot(a, _weight_tile(w_ptr, s_ptr, expert, n + I, k, n_mask, k_mask, 2 * I, H, SCHEME, GROUP),
                      up, DOT_FP32)
        # gelu with the tanh approximation: 0.5·g·(1 + tanh(u)) = g·sigmoid(2u)
        u = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)
        out = gate * tl.sigmoid(2.0 * u) * up
        tl.store(h_ptr + rows[:, None].to(tl.int64) * I + n[None, :], out.to(h_ptr.dtype.element_ty),
                 mask=row_mask[:, None] & n_mask[None, :])


@triton.jit
def _down_kernel(
    h_ptr, w_ptr, s_ptr, order_ptr, group_ends_ptr, block_ends_ptr, router_ptr, y_ptr, H, I, E,
    TOP_K: tl.constexpr, SCHEME: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr, DOT_FP32: tl.constexpr,
):
    expert, rows, row_mask = _block_rows(tl.program_id(0), group_ends_ptr, block_ends_ptr, E, BLOCK_M, BLOCK_E)
    if expert < E:
        n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = n < H
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for start in range(0, I, BLOCK_K):
            k = start + tl.arange(0, BLOCK_K)
            k_mask = k < I
            a = tl.load(h_ptr + rows[:, None].to(tl.int64) * I + k[None, :],
                        mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            acc = _dot(a, _weight_tile(w_ptr, s_ptr, expert, n, k, n_mask, k_mask, H, I, SCHEME, GROUP),
                       acc, DOT_FP32)
        slots = tl.load(order_ptr + rows, mask=row_mask, other=0)  # token · TOP_K + slot
        weight = tl.load(router_ptr + slots, mask=row_mask, other=0.0)
        tl.store(y_ptr + slots[:, None] * H + n[None, :], acc * weight[:, None],
                 mask=row_mask[:, None] & n_mask[None, :])
