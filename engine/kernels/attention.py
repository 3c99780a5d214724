import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention with scaling 1.0 (Gemma 4 normalises q and k instead).

    q: [B, H, T, D]; k, v: [B, KV, S, D] with H a multiple of KV (head j reads KV head j // (H/KV));
    mask: boolean [T, S] or [B, 1, T, S] (True = may attend) or None. Returns [B, H, T, D]. The KV heads are never repeated:
    without a mask SDPA groups the heads itself; with one, the query heads of a group are folded into the
    sequence axis and the mask is tiled to match.
    """
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=1.0, enable_gqa=True)
    batch, heads, length, dim = q.shape
    group = heads // k.shape[1]
    grouped_q = q.reshape(batch, k.shape[1], group * length, dim)
    mask = mask.expand(*mask.shape[:-2], length, mask.shape[-1])  # a broadcast query axis becomes explicit
    tiled = mask.repeat(*([1] * (mask.dim() - 2)), group, 1)  # grouped rows are ordered (head in group, t)
    out = F.scaled_dot_product_attention(grouped_q, k, v, attn_mask=tiled, scale=1.0)
    return out.reshape(batch, heads, length, dim)
