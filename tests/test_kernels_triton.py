"""The Triton fused MoE (engine/kernels/moe_triton.py) under the interpreter, against the torch `moe_experts`.

References: `moe_experts` on the same dense weights, and on `QuantizedWeight.dequantize(x.dtype)` for quantised
ones. Tolerances: fp32 activations 1e-5 (abs and rel: only the summation order differs); bf16 activations 3e-2
abs + 2e-2 rel (outputs of magnitude ~1-10: the reference rounds gate, up and the down projection to bf16 before
the GeGLU and the router weight, the kernel keeps them in fp32, a few bf16 ulps apart).
Shapes are tiny (the interpreter runs each program in numpy): E=4 experts, top-2.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed")
import triton.language as tl  # noqa: E402

from engine.kernels.moe import moe_experts, use_triton  # noqa: E402
from engine.kernels.moe_triton import BLOCK_M, fp8_e4m3_to_fp32, moe_experts_triton  # noqa: E402
from engine.kernels.quantize import quantize  # noqa: E402

E, TOP_K = 4, 2
TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=3e-2, rtol=2e-2)}


def routing(tokens, generator, experts=E, skew=3.0):
    """Distinct top-k experts per token, drawn with skewed probabilities (ragged groups), from the first
    `experts` experts only (the rest receive no rows), and router weights."""
    probabilities = torch.softmax(torch.arange(experts, dtype=torch.float32) * skew / experts, dim=0)
    index = torch.multinomial(probabilities.expand(tokens, -1), TOP_K, replacement=False, generator=generator)
    return index, torch.rand(tokens, TOP_K, generator=generator) + 0.1


def weights(hidden, intermediate, generator, dtype=torch.float32):
    gate_up = torch.randn(E, 2 * intermediate, hidden, generator=generator) / hidden**0.5
    down = torch.randn(E, hidden, intermediate, generator=generator) / intermediate**0.5
    return gate_up.to(dtype), down.to(dtype)


def check(x, gate_up, down, index, router, reference_weights=None):
    out = moe_experts_triton(x, gate_up, down, index, router)
    reference = moe_experts(x, *(reference_weights or (gate_up, down)), index, router)
    assert out.dtype == x.dtype and out.shape == x.shape
    torch.testing.assert_close(out, reference, **TOLERANCE[x.dtype])
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 5, 17])
@pytest.mark.parametrize(("hidden", "intermediate"), [(32, 24), (48, 16)])  # 24, 48: masked tails of a 32/64 block
def test_dense_experts_match_torch(dtype, tokens, hidden, intermediate):
    generator = torch.Generator().manual_seed(tokens * 100 + hidden)
    gate_up, down = weights(hidden, intermediate, generator, dtype)
    index, router = routing(tokens, generator, experts=E - 1)  # expert E-1 is empty
    x = torch.randn(tokens, hidden, generator=generator).to(dtype)
    check(x, gate_up, down, index, router)


def test_experts_spanning_several_row_blocks():
    """Every token picks experts 2 and 0: two groups of 37 rows (three blocks each, the last one masked), two empty
    experts before, between and after them."""
    generator = torch.Generator().manual_seed(7)
    gate_up, down = weights(32, 24, generator)
    tokens = 2 * BLOCK_M + 5
    index = torch.tensor([[2, 0]]).expand(tokens, -1).contiguous()
    router = torch.rand(tokens, TOP_K, generator=generator)
    check(torch.randn(tokens, 32, generator=generator), gate_up, down, index, router)


def test_one_row_per_expert_and_weights_in_another_dtype():
    """Four tokens, each on its own pair of experts; bf16 weights cast to fp32 activations in the kernel."""
    generator = torch.Generator().manual_seed(8)
    gate_up, down = weights(32, 16, generator, torch.bfloat16)
    index = torch.tensor([[0, 1], [2, 3], [1, 3], [0, 2]])
    router = torch.rand(4, TOP_K, generator=generator)
    x = torch.randn(4, 32, generator=generator)
    check(x, gate_up, down, index, router, reference_weights=(gate_up.float(), down.float()))


# (H, I). int4-g32 at 96: a 64-wide K block with a masked tail of one group; g64 at I=704, the released down_proj
# reduction dim (11 groups, 11 K blocks); fp8 at widths no block divides.
QUANTISED_SHAPES = {"int4-g32": (96, 96), "int4-g64": (64, 704), "fp8": (48, 24)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scheme", list(QUANTISED_SHAPES))
def test_quantised_experts_match_torch_on_dequantised_weights(scheme, dtype):
    hidden, intermediate = QUANTISED_SHAPES[scheme]
    generator = torch.Generator().manual_seed(9)
    gate_up, down = (quantize(w, scheme) for w in weights(hidden, intermediate, generator))
    index, router = routing(17, generator, experts=E - 1)
    x = torch.randn(17, hidden, generator=generator).to(dtype)
    check(x, gate_up, down, index, router, reference_weights=(gate_up.dequantize(dtype), down.dequantize(dtype)))


@triton.jit
def _decode_fp8(codes_ptr, out_ptr):
    i = tl.arange(0, 256)
    tl.store(out_ptr + i, fp8_e4m3_to_fp32(tl.load(codes_ptr + i).to(tl.int32)))


def test_fp8_codes_decode_exactly():
    """Every float8_e4m3fn code but the two NaNs decodes to torch's value (zeros, subnormals, ±448)."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    out = torch.empty(256)
    _decode_fp8[(1,)](codes, out)
    expected = codes.view(torch.float8_e4m3fn).float()
    finite = ~expected.isnan()
    assert int(finite.sum()) == 254 and torch.equal(out[finite], expected[finite])


def test_mixed_quantised_and_dense_weights():
    generator = torch.Generator().manual_seed(10)
    gate_up, down = weights(64, 32, generator)
    index, router = routing(5, generator)
    x = torch.randn(5, 64, generator=generator)
    packed = quantize(gate_up, "int4-g32")
    check(x, packed, down, index, router, reference_weights=(packed.dequantize(), down))


def test_cpu_tensors_stay_on_the_torch_path_and_dequantise_per_call():
    generator = torch.Generator().manual_seed(11)
    gate_up, down = weights(64, 64, generator)
    packed = (quantize(gate_up, "int4-g64"), quantize(down, "fp8"))
    index, router = routing(5, generator)
    x = torch.randn(5, 64, generator=generator)
    assert not use_triton(x, *packed) and not use_triton(x, gate_up, down)
    dequantised = (packed[0].dequantize(), packed[1].dequantize())
    assert torch.equal(moe_experts(x, *packed, index, router), moe_experts(x, *dequantised, index, router))


HOST_READS = ("item", "tolist", "__bool__", "__int__", "__index__", "cpu", "numpy")


@contextlib.contextmanager
def tensor_methods(methods):
    """torch.Tensor with `methods` (name -> function, None: the inherited one) in place, restored on exit."""
    saved = {name: torch.Tensor.__dict__.get(name) for name in methods}
    try:
        for name, function in methods.items():
            _set_method(name, function)
        yield
    finally:
        for name, function in saved.items():
            _set_method(name, function)


def _set_method(name, function):
    if function is not None:
        setattr(torch.Tensor, name, function)
    elif name in torch.Tensor.__dict__:
        delattr(torch.Tensor, name)


def test_no_value_is_read_back_to_the_host(monkeypatch):
    """The wrapper sizes every buffer and the grid from T·K and E: reading routing data on the host (a sync on a
    GPU) would go through one of HOST_READS. The interpreter itself copies launch arguments to numpy, so the
    launches run unguarded."""
    from engine.kernels import moe_triton

    generator = torch.Generator().manual_seed(12)
    gate_up, down = weights(32, 16, generator)
    index, router = routing(9, generator)
    x = torch.randn(9, 32, generator=generator)
    expected = moe_experts(x, gate_up, down, index, router)
    originals = {name: torch.Tensor.__dict__.get(name) for name in HOST_READS}
    launch = moe_triton._launch

    def unguarded_launch(*args, **kwargs):
        with tensor_methods(originals):
            return launch(*args, **kwargs)

    def host_read(*args, **kwargs):
        raise AssertionError("a tensor value was read on the host")

    monkeypatch.setattr(moe_triton, "_launch", unguarded_launch)
    with tensor_methods({name: host_read for name in HOST_READS}):
        out = moe_experts_triton(x, gate_up, down, index, router)
    torch.testing.assert_close(out, expected, **TOLERANCE[torch.float32])
