"""Experts with weight-only quantised weights, and the weight memory of a model per precision.

`QuantizedExperts` stands in for `engine.model.Experts` (the loader swaps it in): the same call, with each
projection held as a `QuantizedWeight` in two buffers. Its state dict names are the pre-quantised checkpoint's
tensor names (under the loader's `model.decoder.` prefix):

    layers.N.experts.gate_up_proj.qweight   int4: uint8 [E, 2I, H/2]   fp8: float8_e4m3fn [E, 2I, H]
    layers.N.experts.gate_up_proj.scales    int4: bf16 [E, 2I, H/G]    fp8: fp32 [E, 2I]
    layers.N.experts.down_proj.qweight      int4: uint8 [E, H, I/2]    fp8: float8_e4m3fn [E, H, I]
    layers.N.experts.down_proj.scales       int4: bf16 [E, H, I/G]     fp8: fp32 [E, H]

(the packing is engine/kernels/quantize.py's).
"""

from __future__ import annotations

import torch
from torch import nn

from engine.config import ModelConfig
from engine.kernels import moe_experts
from engine.kernels.quantize import SCHEMES, QuantizedWeight, packed_layout
from engine.model import DiffusionGemma

PROJECTIONS = ("gate_up_proj", "down_proj")
PACKED = ("qweight", "scales")


class QuantizedProjection(nn.Module):
    """One [E, N, K] expert weight as packed data (`qweight`) and `scales` buffers."""

    def __init__(self, scheme: str, shape: tuple[int, int, int]):
        super().__init__()
        self.scheme = scheme
        data_shape, data_dtype, scales_shape, scales_dtype = packed_layout(scheme, shape)
        self.register_buffer("qweight", torch.empty(data_shape, dtype=data_dtype))
        self.register_buffer("scales", torch.empty(scales_shape, dtype=scales_dtype))

    def weight(self) -> QuantizedWeight:
        return QuantizedWeight(self.scheme, self.qweight, self.scales)


class QuantizedExperts(nn.Module):
    def __init__(self, config: ModelConfig, scheme: str):
        super().__init__()
        e, i, h = config.num_experts, config.moe_intermediate_size, config.hidden_size
        self.gate_up_proj = QuantizedProjection(scheme, (e, 2 * i, h))
        self.down_proj = QuantizedProjection(scheme, (e, h, i))

    def forward(self, x: torch.Tensor, weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return moe_experts(x, self.gate_up_proj.weight(), self.down_proj.weight(), index, weights)


def quantize_experts_modules(model: DiffusionGemma, scheme: str) -> None:
    """Replace every layer's experts by empty `QuantizedExperts` on the model's device (meta before loading)."""
    device = model.embed_tokens.weight.device
    for layer in model.layers:
        with torch.device(device):
            layer.experts = QuantizedExperts(model.config, scheme)


def is_packed_tensor(name: str) -> bool:
    """Whether a state-dict name is a quantised expert buffer (kept in its own dtype, never cast)."""
    parts = name.split(".")
    return len(parts) >= 3 and parts[-3] == "experts" and parts[-2] in PROJECTIONS and parts[-1] in PACKED


def weight_bytes(config: ModelConfig, quantization: str | None = None, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes of every weight the engine loads for `config` (built on meta, nothing allocated): experts under
    `quantization` (None: unquantised), every other tensor in `dtype`, as `engine.loader.load_weights` stores them."""
    with torch.device("meta"):
        model = DiffusionGemma(config)
        if quantization is not None:
            quantize_experts_modules(model, quantization)
    return sum(
        t.numel() * (t.element_size() if is_packed_tensor(name) else dtype.itemsize)
        for name, t in model.state_dict().items()
    )


def memory_table(config: ModelConfig) -> dict[str, int]:
    """Weight bytes per precision: bf16 throughout, then experts in each quantisation (the rest bf16)."""
    return {"bf16": weight_bytes(config)} | {scheme: weight_bytes(config, scheme) for scheme in SCHEMES}
