import torch
import torch.nn.functional as F

from engine.kernels.quantize import QuantizedWeight

_grouped_mm = getattr(F, "grouped_mm", None)


def moe_experts(
    x: torch.Tensor,
    gate_up_proj: torch.Tensor | QuantizedWeight,
    down_proj: torch.Tensor | QuantizedWeight,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
) -> torch.Tensor:
    """Sum of the routed experts' GeGLU outputs, weighted by the router.

    x: [T, H]; gate_up_proj: [E, 2I, H] (gate rows first); down_proj: [E, H, I]; top_k_*: [T, K].
    The T·K (token, expert) assignments are sorted by expert and run as one grouped matmul per projection
    (no Python loop over tokens); contributions are weighted and summed over K in fp32.
    Either weight may be a `QuantizedWeight`: on CUDA the Triton kernel dequantises it tile by tile; elsewhere it
    is dequantised to x's dtype on each call (the reference the kernel is tested against).
    """
    if use_triton(x, gate_up_proj, down_proj):
        return moe_triton.moe_experts_triton(x, gate_up_proj, down_proj, top_k_index, top_k_weights)
    if isinstance(gate_up_proj, QuantizedWeight):
        gate_up_proj = gate_up_proj.dequantize(x.dtype)
    if isinstance(down_proj, QuantizedWeight):
        down_proj = down_proj.dequantize(x.dtype)
    num_tokens, top_k = top_k_index.shape
    sorted_experts, order, group_ends = sort_by_expert(top_k_index, gate_up_proj.shape[0])
    rows = x[order // top_k]
    placement = None
    if bounded_gemm_shapes(rows):
        rows, group_ends, placement = _pad_groups(rows, group_ends, sorted_experts)
    gate, up = _grouped_linear(rows, gate_up_proj, group_ends).chunk(2, dim=-1)
    out = _grouped_linear(F.gelu(gate, approximate="tanh") * up, down_proj, group_ends)
    if placement is not None:
        out = out[placement]
    weighted = out * top_k_weights.reshape(-1)[order, None]
    unsorted = torch.empty_like(weighted).index_copy_(0, order, weighted)
    return unsorted.view(num_tokens, top_k, -1).sum(dim=1).to(x.dtype)


def use_triton(x: torch.Tensor, *weights: torch.Tensor | QuantizedWeight) -> bool:
    """Whether the Triton kernel runs: on CUDA only (a launch without a GPU fails), and there wherever torch has no
    fused path: quantised experts, or no native grouped_mm for this dtype and device (its fallback copies the group
    ends to the host and launches one matmul per expert)."""
    if x.device.type != "cuda" or moe_triton is None:
        return False
    return any(isinstance(w, QuantizedWeight) for w in weights) or not _native_grouped_mm(x.dtype, x.device)


def _native_grouped_mm(dtype: torch.dtype, device: torch.device) -> bool:
    # get_device_properties, not get_device_capability: torch.compile folds it to a constant.
    if _grouped_mm is None or dtype != torch.bfloat16:
        return False
    return torch.cuda.get_device_properties(device).major in (9, 10)


def sort_by_expert(top_k_index: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The T·K (token, expert) assignments sorted by expert: the sorted experts, the order, and where each
    expert's run of rows ends (int32, what grouped_mm takes as offsets).

    searchsorted, unlike bincount, needs no host sync (bincount sizes its output from the data), so routing stays
    inside one graph under torch.compile and never waits for the device.
    """
    sorted_experts, order = torch.sort(top_k_index.reshape(-1))
    experts = torch.arange(num_experts, device=sorted_experts.device, dtype=sorted_experts.dtype)
    return sorted_experts, order, torch.searchsorted(sorted_experts, experts, right=True).to(torch.int32)


# On the CPU, oneDNN compiles and caches a kernel for every GEMM shape it meets in bf16/fp16 (about a megabyte each,
# never freed), so rows-per-expert counts that change with every prompt grow the process without bound. Padding
# each expert's group to a multiple of GROUP_ROWS rows keeps the set of shapes small. fp32 (MKL) has no such cache
# and keeps the exact, unpadded path.
GROUP_ROWS = 16


def bounded_gemm_shapes(x: torch.Tensor) -> bool:
    """Whether reduced-precision GEMMs on `x`'s device need their shapes bucketed (see GROUP_ROWS): bf16/fp16
    tensors on the CPU, or fp32 ones under CPU autocast (training), whose GEMMs run in bf16."""
    if x.device.type != "cpu":
        return False
    return x.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu")


def _pad_groups(rows: torch.Tensor, group_ends: torch.Tensor, sorted_experts: torch.Tensor):
    """Rows laid out with each expert's group padded to a multiple of GROUP_ROWS (zero rows), the padded group
    ends, and where each original row sits in that layout.

    The layout's size is the most the padding can take (fewer than GROUP_ROWS per expert), not the padded total:
    reading that total would wait for the data, and rows past the last group are never multiplied.
    """
    counts = torch.diff(group_ends.long(), prepend=group_ends.new_zeros(1).long())
    padded_counts = (counts + GROUP_ROWS - 1) // GROUP_ROWS * GROUP_ROWS
    padded_ends = padded_counts.cumsum(0)
    within_group = torch.arange(rows.shape[0], device=rows.device) - (counts.cumsum(0) - counts)[sorted_experts]
    placement = (padded_ends - padded_counts)[sorted_experts] + within_group
    padded = rows.new_zeros(rows.shape[0] + counts.shape[0] * (GROUP_ROWS - 1), rows.shape[1])
    padded[placement] = rows
    return padded, padded_ends.to(torch.int32), placement


def _grouped_linear(rows: torch.Tensor, weight: torch.Tensor, group_ends: torch.Tensor) -> torch.Tensor:
    """rows (sorted by expert; expert e's rows end at group_ends[e]) times weight[e]^T."""
    if weight.dtype != rows.dtype:
        weight = weight.to(rows.dtype)
    # The native grouped matmul takes bf16 only; deciding by dtype (not by catching its error) keeps torch.compile
    # off a call it would fail to trace.
    if _grouped_mm is not None and rows.dtype == torch.bfloat16:
        return _grouped_mm(rows, weight.transpose(-2, -1), offs=group_ends)
    # is_dynamo_compiling, not is_compiling: torch holds is_compiling's flag True for a whole compile session, process
    # wide, so eager calls on other threads (requests served while the step compiles in the background) would take
    # this path too, with other rounding than the exact engine's. torch.export (engine.compiled_step) runs in a
    # process of its own.
    if torch.compiler.is_dynamo_compiling() or torch.compiler.is_exporting():
        # The loop below needs the group sizes on the host, which would split the graph. Traced, every expert
        # multiplies every row and each row keeps its own expert's product: E/K times the FLOPs, for the small
        # fp32/fp16 models that run where bf16 is not native.
        experts = torch.searchsorted(group_ends, torch.arange(rows.shape[0], device=rows.device), right=True)
        products = torch.einsum("rh,enh->ren", rows, weight)
        return products.gather(1, experts.clamp(max=weight.shape[0] - 1)[:, None, None].expand(-1, 1, weight.shape[1])).squeeze(1)
    out = rows.new_empty(rows.shape[0], weight.shape[1])
    start = 0
    for expert, end in enumerate(group_ends.tolist()):
        if end > start:
            out[start:end] = F.linear(rows[start:end], weight[expert])
        start = end
    return out


# Last: moe_triton imports sort_by_expert from this module. Where triton is not installed, the torch path runs.
try:
    from engine.kernels import moe_triton
except ImportError:
    moe_triton = None
