"""Weight-only quantisation of expert weight tensors [E, N, K] (N output rows, K the reduction dim).

Schemes:
* ``int4-g32`` / ``int4-g64``: symmetric int4 per group of 32/64 consecutive K entries, q = round(w / s) in
  [-7, 7], stored offset by 8 (1..15), two per uint8 along K (element 2j in the low nibble of byte j, 2j+1 in the
  high one): data uint8 [E, N, K/2], scales bf16 [E, N, K/G]. Symmetric, not asymmetric: trained weights are
  centred on zero, so a zero point would buy under one level of 15 while costing a second tensor per group and a
  subtraction in the kernel's inner loop. bf16 scales keep fp32's exponent range (a group of tiny weights never
  underflows, as it could in fp16). q is rounded against the stored bf16 scale, so |w - s·q| <= s/2 exactly.
* ``fp8``: float8_e4m3fn per output channel, s = absmax(row) / 448: data [E, N, K], scales fp32 [E, N].

The torch `dequantize` is the reference the Triton kernel (engine/kernels/moe_triton.py) is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SCHEMES = ("int4-g32", "int4-g64", "fp8")
INT4_LEVEL = 7  # symmetric: q in [-7, 7]; -8 is never produced
INT4_OFFSET = 8
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
SCALE_DTYPE = {"int4": torch.bfloat16, "fp8": torch.float32}


def group_size(scheme: str) -> int | None:
    """The int4 group size of `scheme` (None for fp8); ValueError for an unknown scheme."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    return int(scheme.removeprefix("int4-g")) if scheme.startswith("int4") else None


def packed_layout(scheme: str, shape: tuple[int, int, int]) -> tuple[tuple, torch.dtype, tuple, torch.dtype]:
    """(data shape, data dtype, scales shape, scales dtype) of a [E, N, K] weight under `scheme`."""
    experts, rows, k = shape
    group = group_size(scheme)
    if group is None:
        return (experts, rows, k), FP8, (experts, rows), SCALE_DTYPE["fp8"]
    if k % group:
        raise ValueError(f"{scheme}: group size {group} does not divide the reduction dim K={k}")
    return (experts, rows, k // 2), torch.uint8, (experts, rows, k // group), SCALE_DTYPE["int4"]


@dataclass(frozen=True)
class QuantizedWeight:
    """A quantised [E, N, K] expert weight: packed `data`, `scales` and the `scheme` that produced them."""

    scheme: str
    data: torch.Tensor
    scales: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        experts, rows, k = self.data.shape
        return (experts, rows, k * 2 if self.data.dtype == torch.uint8 else k)

    @property
    def group_size(self) -> int | None:
        return group_size(self.scheme)

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.data, self.scales))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The [E, N, K] weight the packed data stands for, computed in fp32 and cast once to `dtype`."""
        if self.group_size is None:
            return (self.data.float() * self.scales.float()[..., None]).to(dtype)
        low, high = self.data & 0xF, self.data >> 4
        q = torch.stack((low, high), dim=-1).flatten(-2).float() - INT4_OFFSET
        scales = self.scales.float().repeat_interleave(self.group_size, dim=-1)
        return (q * scales).to(dtype)


def quantize(weight: torch.Tensor, scheme: str) -> QuantizedWeight:
    """`weight` [E, N, K] quantised under `scheme` (on its own device; the arithmetic is fp32)."""
    group = group_size(scheme)
    if weight.dim() != 3:
        raise ValueError(f"expected an expert weight [E, N, K], got shape {list(weight.shape)}")
    if group is None:
        return _quantize_fp8(weight)
    packed_layout(scheme, tuple(weight.shape))  # rejects a group size that does not divide K
    return _quantize_int4(weight, scheme, group)


def _quantize_int4(weight: torch.Tensor, scheme: str, group: int) -> QuantizedWeight:
    experts, rows, k = weight.shape
    groups = weight.float().reshape(experts, rows, k // group, group)
    scales = (groups.abs().amax(dim=-1) / INT4_LEVEL).to(SCALE_DTYPE["int4"])
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero group: any scale gives q = 0
    q = torch.round(groups / scales.float()[..., None]).clamp_(-INT4_LEVEL - 1, INT4_LEVEL)
    nibbles = (q + INT4_OFFSET).to(torch.uint8).reshape(experts, rows, k // 2, 2)
    data = nibbles[..., 0] | (nibbles[..., 1] << 4)
    return QuantizedWeight(scheme, data.contiguous(), scales.contiguous())


def _quantize_fp8(weight: torch.Tensor) -> QuantizedWeight:
    w = weight.float()
    scales = w.abs().amax(dim=-1) / FP8_MAX
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    # Clamped: absmax / (absmax / 448) can round just above 448, which e4m3fn (no infinity) would turn into NaN.
    data = (w / scales[..., None]).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
    return QuantizedWeight("fp8", data, scales.to(SCALE_DTYPE["fp8"]))
