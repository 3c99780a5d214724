"""Hot operations behind small functions, one op per file, so accelerated kernels can replace the torch versions."""

from engine.kernels.attention import attention
from engine.kernels.moe import moe_experts
from engine.kernels.rms_norm import rms_norm, scale_unit, unit_rms_norm
from engine.kernels.rope import apply_rope

__all__ = ["apply_rope", "attention", "moe_experts", "rms_norm", "scale_unit", "unit_rms_norm"]
