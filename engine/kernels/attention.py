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


def shared_prefix_attention(
    q: torch.Tensor,
    prefix_k: torch.Tensor,
    prefix_v: torch.Tensor,
    prefix_visible: torch.Tensor,
    own_k: torch.Tensor,
    own_v: torch.Tensor,
    own_visible: torch.Tensor,
) -> torch.Tensor:
    """Attention of B rows over two key sets: a prefix every row shares, stored once, and each row's own keys.

    q: [B, H, T, D]; prefix_k/v: [1, KV, Sp, D]; own_k/v: [B, KV, So, D]; *_visible: boolean [T or 1, Sp or So]
    (True = may attend; every query must see at least one key). One softmax over [prefix ; own], scaling 1.0,
    query head j reading KV head j // (H/KV). The rows' queries are stacked against the prefix, so the prefix is
    never repeated per row (no copy of a long prompt's keys per request or per step).
    """
    batch, heads, length, dim = q.shape
    kv_heads = own_k.shape[1]
    rows = heads // kv_heads * length  # the query rows of one KV head
    # Scores in fp32, as SDPA keeps them (bf16 scores would carry 3 significant digits into the softmax); the
    # weighted sum of values in the activation dtype, as SDPA's output is.
    grouped = q.float().reshape(batch, kv_heads, rows, dim)
    stacked = grouped.transpose(0, 1).reshape(1, kv_heads, batch * rows, dim)
    prefix_scores = (stacked @ prefix_k.float().transpose(-1, -2)).view(kv_heads, batch, rows, -1).transpose(0, 1)
    scores = torch.cat([prefix_scores, grouped @ own_k.float().transpose(-1, -2)], dim=-1)
    visible = torch.cat([prefix_visible.expand(length, -1), own_visible.expand(length, -1)], dim=-1)
    visible = visible.repeat(heads // kv_heads, 1)
    weights = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1).to(q.dtype)
    split = prefix_k.shape[2]
    prefix_weights = weights[..., :split].transpose(0, 1).reshape(1, kv_heads, batch * rows, split)
    out = (prefix_weights @ prefix_v).view(kv_heads, batch, rows, dim).transpose(0, 1) + weights[..., split:] @ own_v
    return out.reshape(batch, heads, length, dim)
