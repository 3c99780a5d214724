import torch


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Half-split rotary embedding on `[B, heads, T, D]`; tables are `[B or 1, 1, T, D]`.

    `x·cos + rotate_half(x)·sin` with rotate_half(x) = (−x₂, x₁): the sign lives in `signed_sin` = (−sin₁, sin₂),
    so the rotation is a roll of the halves (same products and sums as the reference, bit for bit).
    """
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin
