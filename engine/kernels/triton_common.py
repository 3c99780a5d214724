"""Pieces the Triton kernels share: a dot product and a rounding that give the GPU's bits under the interpreter."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def dot_in_fp32(activations: torch.Tensor) -> bool:
    """Widen dot operands to fp32: for fp32 activations (IEEE, not TF32), and off CUDA, where only the interpreter
    runs and its bf16 dot multiplies the raw uint16 bits (triton 3.7). The operands are rounded to their dtype
    first, so the products are the bf16 ones, exact in fp32."""
    return activations.dtype == torch.float32 or activations.device.type != "cuda"


@triton.jit
def dot(a, b, acc, DOT_FP32: tl.constexpr):
    """acc + a @ b (see `dot_in_fp32`)."""
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def round_to(x, dtype: tl.constexpr):
    """fp32 x rounded to `dtype` (to nearest even), in `dtype`. bf16 by integer arithmetic first: the
    interpreter's fp32->bf16 cast truncates (triton 3.7); on the GPU both give the same bits."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        x = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
    return x.to(dtype)
