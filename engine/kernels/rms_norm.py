import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Gemma-4 RMSNorm: fp32 math, `x * (mean(x²)+eps)^-½ * w` (the weight is the multiplier itself, not 1+w).

    ATen's fused `rms_norm` gives the same bits as the reference's five-op formula in fp32 (pow(·, -½) is rsqrt
    there too), in one call instead of eight: the decoder runs ~11 of these per layer and step.
    """
    if x.dtype == torch.float32 and (weight is None or weight.dtype == torch.float32):
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    normed = F.rms_norm(x.float(), (x.shape[-1],), None if weight is None else weight.float(), eps)
    return normed.type_as(x)
