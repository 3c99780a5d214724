import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention with scaling 1.0 (Gemma 4 normalises q and k instead).

    q: [B, H, T, D]; k, v: [B, KV, S, D] with H a multiple of KV (head j reads KV head j // (H/KV));
    mask: boolean [T, S] (True = may attend) or None. Returns [B, H, T, D].
    The query heads of one KV group are folded into the sequence axis, so the cache is never repeated per head.
    """
    batch, heads, length, dim = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    grouped_q = q.reshape(batch, kv_heads, group * length, dim)
    if mask is not None and group > 1:
        mask = mask.repeat(group, 1)
    out = F.scaled_dot_product_attention(grouped_q, k, v, attn_mask=mask, scale=1.0)
    return out.reshape(batch, heads, length, dim)
