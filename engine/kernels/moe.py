import torch
import torch.nn.functional as F


def moe_experts(
    x: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
) -> torch.Tensor:
    """Sum of the routed experts' GeGLU outputs, weighted by the router.

    x: [T, H]; gate_up_proj: [E, 2I, H] (gate rows first); down_proj: [E, H, I]; top_k_*: [T, K].
    Assignments are sorted by expert once, then each expert that received tokens runs one matmul over its rows:
    the Python loop is over experts hit, never over tokens. Weighted contributions are summed in fp32.
    """
    num_tokens, top_k = top_k_index.shape
    expert_of_slot = top_k_index.reshape(-1)
    order = torch.argsort(expert_of_slot, stable=True)
    counts = torch.bincount(expert_of_slot, minlength=gate_up_proj.shape[0]).tolist()
    rows = x[order // top_k]
    outputs = torch.empty(order.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        end = start + count
        gate, up = F.linear(rows[start:end], gate_up_proj[expert]).chunk(2, dim=-1)
        outputs[start:end] = F.linear(F.gelu(gate, approximate="tanh") * up, down_proj[expert])
        start = end
    outputs *= top_k_weights.reshape(-1)[order, None]
    per_slot = torch.empty_like(outputs)
    per_slot[order] = outputs
    return per_slot.view(num_tokens, top_k, -1).sum(dim=1).to(x.dtype)
