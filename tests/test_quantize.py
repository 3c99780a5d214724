"""Weight-only quantisation of expert tensors (engine/kernels/quantize.py): layout, round-trip error bounds, errors."""

from __future__ import annotations

import pytest
import torch

from engine.kernels.quantize import FP8_MAX, QuantizedWeight, quantize


def expert_weight(shape, seed=0):
    """N(0, 0.02) rows at magnitudes spread over 1e-4..1e2, one all-zero row and a row of tiny (subnormal-scale)
    values: every group's scale differs, and the fp8 subnormal range is reached."""
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=generator) * 0.02
    w *= torch.logspace(-4, 2, shape[1])[None, :, None]
    w[0, 0] = 0.0
    w[-1, -1] *= 1e-30
    return w


def int4_scales(q: QuantizedWeight) -> torch.Tensor:
    return q.scales.float().repeat_interleave(q.group_size, dim=-1)


@pytest.mark.parametrize("scheme", ["int4-g32", "int4-g64"])
@pytest.mark.parametrize("shape", [(1, 2, 64), (3, 5, 704), (2, 7, 192)])  # 704: the released down_proj K
def test_int4_round_trip_is_within_half_a_step(scheme, shape):
    w = expert_weight(shape)
    q = quantize(w, scheme)
    group = q.group_size
    assert q.data.dtype == torch.uint8 and q.data.shape == (shape[0], shape[1], shape[2] // 2)
    assert q.scales.dtype == torch.bfloat16 and q.scales.shape == (shape[0], shape[1], shape[2] // group)
    assert q.shape == shape and q.nbytes == w.numel() // 2 + w.numel() // group * 2
    step = int4_scales(q)
    error = (q.dequantize() - w).abs()
    # Rounding against the stored bf16 scale: at most half a step (plus fp32 rounding of w / s).
    assert bool((error <= step * (0.5 + 1e-6)).all())
    assert float((error / step).max()) > 0.45  # the bound is tight, not vacuous
    # bf16 output: one more rounding, half a bf16 ulp of the value.
    in_bf16 = q.dequantize(torch.bfloat16).float()
    assert bool(((in_bf16 - w).abs() <= step * (0.5 + 1e-6) + in_bf16.abs() * 2.0**-8).all())
    assert bool((q.dequantize()[0, 0] == 0).all())  # the all-zero row
    nibbles = torch.stack((q.data & 0xF, q.data >> 4))
    assert int(nibbles.min()) >= 1 and int(nibbles.max()) <= 15  # symmetric: q in [-7, 7], offset 8


def test_int4_packing_layout():
    """Element 2j in byte j's low nibble, 2j+1 in its high nibble, q + 8; absmax 7 gives scale exactly 1."""
    values = torch.tensor([-7.0, 7.0, 0.0, 1.0] + [0.0] * 28)
    q = quantize(values.reshape(1, 1, 32), "int4-g32")
    assert q.scales.item() == 1.0
    assert q.data[0, 0, :2].tolist() == [1 | (15 << 4), 8 | (9 << 4)]
    assert torch.equal(q.dequantize().flatten(), values)


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 704), (2, 9, 24)])
def test_fp8_round_trip_is_within_the_e4m3_mantissa(shape):
    w = expert_weight(shape, seed=1)
    q = quantize(w, "fp8")
    assert q.data.dtype == torch.float8_e4m3fn and q.data.shape == shape
    assert q.scales.dtype == torch.float32 and q.scales.shape == shape[:2]
    assert q.nbytes == w.numel() + shape[0] * shape[1] * 4
    scale = q.scales[..., None]
    assert bool((q.data.float().abs().amax(dim=-1) <= FP8_MAX).all())
    # e4m3: 3 mantissa bits, so half an ulp is 2^-4 relative for normal values (|w / s| >= 2^-6); below that the
    # subnormal spacing is 2^-9, half of it 2^-10 in units of s.
    bound = torch.maximum(w.abs() * 2.0**-4, scale * 2.0**-10) * (1 + 1e-6)
    assert bool(((q.dequantize() - w).abs() <= bound).all())
    assert bool((q.dequantize()[0, 0] == 0).all())


def test_quantisation_error_on_gaussian_weights():
    """The figures the schemes give on N(0, 0.02) expert weights at the released down_proj width (K=704)."""
    w = torch.randn(4, 64, 704, generator=torch.Generator().manual_seed(2)) * 0.02
    relative = {s: float((quantize(w, s).dequantize() - w).norm() / w.norm()) for s in ("int4-g32", "int4-g64", "fp8")}
    assert 0.07 < relative["int4-g32"] < relative["int4-g64"] < 0.13
    assert 0.01 < relative["fp8"] < 0.04


def test_group_size_must_divide_the_reduction_dim():
    with pytest.raises(ValueError, match="group size 64 does not divide the reduction dim K=96"):
        quantize(torch.zeros(1, 2, 96), "int4-g64")
    with pytest.raises(ValueError, match="group size 32 does not divide the reduction dim K=48"):
        quantize(torch.zeros(2, 2, 48), "int4-g32")
    with pytest.raises(ValueError, match="unknown quantization scheme 'int4-g128'"):
        quantize(torch.zeros(1, 2, 128), "int4-g128")
    with pytest.raises(ValueError, match=r"expected an expert weight \[E, N, K\]"):
        quantize(torch.zeros(2, 64), "fp8")
