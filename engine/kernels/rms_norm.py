import torch
import torch.nn.functional as F


def unit_rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """`x·(mean(x²)+eps)^-½` in fp32, before any weight: what norms of the same input can share.

    ATen's `rms_norm` gives the same bits as the reference's five-op formula (pow(·, -½) is rsqrt there too) in one
    call; the decoder runs about eleven norms per layer and step.
    """
    return F.rms_norm(x.float(), (x.shape[-1],), None, eps)


def scale_unit(unit: torch.Tensor, weight: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Apply a norm's weight to `unit_rms_norm`'s output (fp32 product, as the reference), cast to `dtype`."""
    scaled = unit if weight is None else unit * weight.float()
    return scaled.to(dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Gemma-4 RMSNorm: fp32 math, `x * (mean(x²)+eps)^-½ * w` (the weight is the multiplier itself, not 1+w)."""
    return scale_unit(unit_rms_norm(x, eps), weight, x.dtype)
