import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention with scaling 1.0 (Gemma 4 normalises q and k instead).

    q: [B, H, T, D]; k, v: [B, KV, S, D] with H a multiple of KV (head j reads KV head j // (H/KV));
    mask: boolean [T, S] or [B, 1, T, S] (True = may attend) or None. Returns [B, H, T, D]. SDPA groups the query
    heads itself (the KV heads are never repeated in memory) and gives the same bits as the reference's attention
    over repeated KV heads, with or without a mask.
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0, enable_gqa=True)
