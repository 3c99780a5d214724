"""The DiffusionGemma text model: one Gemma-4 MoE stack used twice.

- `encode` is the causal encoder: it runs over prompt tokens (later: committed canvases) and writes their keys and
  values into the cache. Its hidden states are not needed for generation.
- `decode` is the bidirectional denoiser: the canvas attends to [cached prefix ; canvas] with no mask, reads the
  cache without writing it, and returns soft-capped fp32 logits. Its input embedding is self-conditioned on the
  previous step's processed logits.
Both share every weight except the per-layer `layer_scalar`, of which the checkpoint stores one copy for each.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from engine.cache import KVCache, SharedPrefixKV
from engine.config import FULL, ModelConfig
from engine.kernels import apply_rope, attention, moe_experts, rms_norm, scale_unit, unit_rms_norm
from engine.kernels.flash_attention import flash_attention, flash_available


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, with_scale: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if with_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rope_inverse_frequencies(config: ModelConfig, layer_type: str, head_dim: int) -> torch.Tensor:
    params = config.rope_parameters[layer_type]
    theta = float(params["rope_theta"])
    if params.get("rope_type", "default") == "proportional":
        # Rotate only the first p·D/2 frequency pairs (exponents over the full D); the rest have frequency 0 (NoPE).
        rotated = int(params.get("partial_rotary_factor", 1.0) * head_dim // 2)
        exponents = torch.arange(0, 2 * rotated, 2, dtype=torch.int64).float() / head_dim
        inv_freq = torch.cat((1.0 / theta**exponents, torch.zeros(head_dim // 2 - rotated)))
        return inv_freq / float(params.get("factor", 1.0))
    dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)


class Rotary(nn.Module):
    """(cos, signed sin) tables per layer type (see `apply_rope`), computed in fp32, cast to the activation dtype."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layer_types = sorted(set(config.layer_types))
        for layer_type in self.layer_types:
            head_dim = config.layer(config.layer_types.index(layer_type)).head_dim
            inv_freq = rope_inverse_frequencies(config, layer_type, head_dim)
            self.register_buffer(f"{layer_type}_inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """positions: [T] (shared by the batch) or [B, T] (per example, as in training with left padding)."""
        tables = {}
        for layer_type in self.layer_types:
            inv_freq = getattr(self, f"{layer_type}_inv_freq")
            freqs = positions[..., None].float() * inv_freq
            angles = torch.cat((freqs, freqs), dim=-1)
            angles = angles[None, None] if positions.dim() == 1 else angles[:, None]  # [B or 1, 1, T, D]
            sin = angles.sin().to(dtype)
            half = sin.shape[-1] // 2
            tables[layer_type] = (angles.cos().to(dtype), torch.cat((-sin[..., :half], sin[..., half:]), dim=-1))
        return tables


class KeyValueStore(Protocol):
    """What attention needs from a cache: the encoder appends, the decoder reads with the canvas placed behind."""

    def encoder_keys_values(
        self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor, first_key: int
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decoder_keys_values(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor, first_key: int
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


# attend(layer index, layer type, q, k, v) -> attended values [B, H, T, D]
Attend = Callable[[int, str, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        geometry = config.layer(layer_index)
        self.head_dim = geometry.head_dim
        self.is_sliding = geometry.is_sliding
        self.num_heads = config.num_heads
        self.num_kv_heads = geometry.num_kv_heads
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        # Full-attention layers have no v_proj: V is the raw (pre-norm, pre-RoPE) K projection.
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False) if self.is_sliding else None
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.eps = config.rms_norm_eps
        self.qkv = FusedLinear(self.q_proj, self.k_proj, *([self.v_proj] if self.v_proj else []))

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        batch, length, _ = x.shape
        heads, kv_heads = self.num_heads, self.num_kv_heads
        # Every head of q, k and v is RMS-normed over head_dim: one norm over all of them, then the q and k weights.
        unit = unit_rms_norm(self.qkv(x).view(batch, length, -1, self.head_dim), self.eps)
        q = scale_unit(unit[:, :, :heads], self.q_norm.weight, x.dtype).transpose(1, 2)
        k = scale_unit(unit[:, :, heads : heads + kv_heads], self.k_norm.weight, x.dtype).transpose(1, 2)
        # The V-norm is scale-free; full-attention layers have no v_proj and use the raw K projection as V.
        v = unit[:, :, heads + kv_heads :] if self.v_proj is not None else unit[:, :, heads:]
        v = v.to(x.dtype).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def output(self, attended: torch.Tensor) -> torch.Tensor:
        batch, _, length, _ = attended.shape
        return self.o_proj(attended.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim))


class FusedLinear:
    """Several bias-free projections of the same input, run as one matmul once `fuse()` has been called.

    `fuse()` (inference only) moves the weights into one `[sum(out), in]` matrix and leaves each `nn.Linear` with a
    view of its rows, so checkpoints and state dicts are unchanged. The fused product gives the same bits as the
    separate ones (each output is the same dot product over the same inputs; tests/test_engine_kernels.py) and
    saves a matmul dispatch and a pass over the input per extra projection. Unfused (training) it calls each layer.
    """

    def __init__(self, *linears: nn.Linear):
        self.linears = linears
        self.weight: torch.Tensor | None = None
        self.sizes = [linear.out_features for linear in linears]

    def fuse(self) -> None:
        self.weight = torch.cat([linear.weight.detach() for linear in self.linears])
        for linear, rows in zip(self.linears, self.weight.split(self.sizes)):
            linear.weight = nn.Parameter(rows, requires_grad=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The projections side by side along the last axis."""
        if self.weight is None:
            return torch.cat([linear(x) for linear in self.linears], dim=-1)
        return F.linear(x, self.weight)


class DenseMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.gate_up = FusedLinear(self.gate_proj, self.up_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return geglu(self.gate_up, self.down_proj, x)


def geglu(gate_up: FusedLinear, down_proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up(x).chunk(2, dim=-1)
    return down_proj(F.gelu(gate, approximate="tanh") * up)


class Router(nn.Module):
    """Softmax over all experts of a scale-free-normed residual, top-k, renormalise, then per-expert scale."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.proj = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.scale = nn.Parameter(torch.ones(config.hidden_size))
        self.per_expert_scale = nn.Parameter(torch.ones(config.num_experts))
        self.top_k = config.top_k_experts
        self.root_size = config.hidden_size**-0.5

    def forward(self, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`normed`: the scale-free RMS norm of the residual (shared with the layer's feed-forward norms)."""
        z = normed * self.scale * self.root_size
        probabilities = F.softmax(self.proj(z), dim=-1, dtype=torch.float32)
        weights, index = torch.topk(probabilities, k=self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights * self.per_expert_scale[index], index


class Experts(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        e, i, h = config.num_experts, config.moe_intermediate_size, config.hidden_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, h))
        self.down_proj = nn.Parameter(torch.empty(e, h, i))

    def forward(self, x: torch.Tensor, weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return moe_experts(x, self.gate_up_proj, self.down_proj, index, weights)


class Layer(nn.Module):
    def __init__(self, config: ModelConfig, index: int):
        super().__init__()
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.index = index
        self.eps = eps
        self.self_attn = Attention(config, index)
        self.mlp = DenseMLP(hidden, config.intermediate_size)
        self.router = Router(config)
        self.experts = Experts(config)
        for name in (
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
            "post_feedforward_layernorm_1",
            "post_feedforward_layernorm_2",
            "pre_feedforward_layernorm_2",
        ):
            setattr(self, name, RMSNorm(hidden, eps))
        self.register_buffer("encoder_layer_scalar", torch.ones(1))
        self.register_buffer("decoder_layer_scalar", torch.ones(1))

    def feed_forward(self, a: torch.Tensor, layer_scalar: torch.Tensor) -> torch.Tensor:
        # The dense branch, the router and the experts each RMS-norm the residual `a`: normalise once, then apply
        # each one's weight (the router's norm has none).
        unit = unit_rms_norm(a, self.eps)
        dense_input = scale_unit(unit, self.pre_feedforward_layernorm.weight, a.dtype)
        dense = self.post_feedforward_layernorm_1(self.mlp(dense_input))
        flat = unit.reshape(-1, a.shape[-1])
        weights, index = self.router(flat.to(a.dtype))
        experts_input = scale_unit(flat, self.pre_feedforward_layernorm_2.weight, a.dtype)
        routed = self.post_feedforward_layernorm_2(self.experts(experts_input, weights, index).reshape(a.shape))
        return (a + self.post_feedforward_layernorm(dense + routed)) * layer_scalar


def _with_padding(mask: torch.Tensor | None, key_padding: torch.Tensor) -> torch.Tensor:
    """Combine a [T, S] position mask with a [B, S] key padding mask into [B, 1, T, S]."""
    padding = key_padding[:, None, None, :]
    return padding if mask is None else mask & padding


class DiffusionGemma(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, hidden)
        self.layers = nn.ModuleList(Layer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(hidden, config.rms_norm_eps)
        self.self_conditioning = nn.ModuleDict(
            {
                "pre_norm": RMSNorm(hidden, config.rms_norm_eps),
                "gate_proj": nn.Linear(hidden, config.intermediate_size, bias=False),
                "up_proj": nn.Linear(hidden, config.intermediate_size, bias=False),
                "down_proj": nn.Linear(config.intermediate_size, hidden, bias=False),
            }
        )
        self.self_conditioning_gate_up = FusedLinear(
            self.self_conditioning["gate_proj"], self.self_conditioning["up_proj"]
        )
        self.rotary = Rotary(config)
        self.embed_scale = math.sqrt(hidden)
        self.window = config.sliding_window

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        weight = self.embed_tokens.weight
        return F.embedding(ids, weight) * self.scale_as(weight.dtype)

    def scale_as(self, dtype: torch.dtype) -> torch.Tensor:
        # sqrt(H) rounded through fp32 to the weight dtype, as the reference does (53.066 becomes 53.0 in bf16).
        return torch.tensor(self.embed_scale, dtype=torch.float32).to(dtype)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.capped_logits(self.norm(hidden))

    def capped_logits(self, normed: torch.Tensor) -> torch.Tensor:
        """fp32 soft-capped logits of the final-normed hidden states (the tied embedding as the head)."""
        cap = self.config.final_logit_softcapping
        logits = F.linear(normed, self.embed_tokens.weight).float()
        return torch.tanh(logits / cap) * cap

    def encoder_mask(self, layer_type: str, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor | None:
        """Boolean [T, S] mask from absolute positions. Causal (+ W-key window on sliding layers) by default."""
        q, k = queries[:, None], keys[None, :]
        if self.config.encoder_is_causal:
            mask = k <= q
            if layer_type != FULL:
                mask &= k > q - self.window
            return mask
        return (q - k).abs() <= self.window if layer_type != FULL else None

    def encode(
        self,
        ids: torch.Tensor,
        start: int,
        store: KeyValueStore,
        return_hidden: bool = False,
        positions: torch.Tensor | None = None,
        key_padding: torch.Tensor | None = None,
    ):
        """Causal pass over `ids` at positions start.. that appends their keys/values to `store`.

        Training passes left-padded batches: `positions` [B, T] per example and `key_padding` [B, T] (True = real),
        and asks for the final hidden states (`return_hidden`) to put the next-token head on the positions it needs.
        """
        length = ids.shape[1]
        index = torch.arange(start, start + length, device=ids.device)
        tables = self.rotary(index if positions is None else positions, self.embed_tokens.weight.dtype)

        def attend(layer: int, layer_type: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            # Keys older than the window can never be attended to by these queries on a sliding layer.
            first_key = max(0, start - self.window + 1) if layer_type != FULL and self.config.encoder_is_causal else 0
            keys, values = store.encoder_keys_values(layer, start, k, v, first_key)
            key_index = torch.arange(first_key, start + length, device=ids.device)
            if q.is_cuda and flash_available() and key_padding is None and self.config.encoder_is_causal:
                # SDPA's flash backends stop at head_dim 256: the full layers' 512 would fall to its math path.
                window = self.window if layer_type != FULL else None
                return flash_attention(q, keys, values, index, key_index, True, window)
            mask = self.encoder_mask(layer_type, index, key_index)
            if key_padding is not None:
                # Every query keeps its own key, so a padding row is never fully masked (which would give NaN).
                mask = _with_padding(mask, key_padding[:, first_key:]) | (index[:, None] == key_index[None, :])
            return attention(q, keys, values, mask)

        x = self.run_layers(self.embed(ids), tables, attend, encoder=True)
        return x if return_hidden else None

    def run_layers(self, x: torch.Tensor, tables: dict[str, tuple[torch.Tensor, torch.Tensor]], attend: Attend,
                   encoder: bool) -> torch.Tensor:
        """The shared stack; `attend(layer, layer_type, q, k, v)` is where encoder, decoder and caches differ."""
        for layer in self.layers:
            layer_type = self.config.layer_types[layer.index]
            cos, sin = tables[layer_type]
            attn = layer.self_attn
            q, k, v = attn.project(layer.input_layernorm(x), cos, sin)
            a = x + layer.post_attention_layernorm(attn.output(attend(layer.index, layer_type, q, k, v)))
            x = layer.feed_forward(a, layer.encoder_layer_scalar if encoder else layer.decoder_layer_scalar)
        return x

    def self_conditioned_embedding(
        self, canvas: torch.Tensor, sc_logits: torch.Tensor | None, sc_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        signal = None if sc_logits is None else self.self_conditioning_signal(sc_logits)
        return self.signal_conditioned_embedding(canvas, signal, sc_mask)

    def self_conditioning_signal(self, sc_logits: torch.Tensor) -> torch.Tensor:
        """softmax(previous logits)·E: the expected embedding under the previous step's distribution."""
        weight = self.embed_tokens.weight
        return torch.softmax(sc_logits, dim=-1, dtype=torch.float32).to(weight.dtype) @ weight

    def signal_conditioned_embedding(
        self, canvas: torch.Tensor, signal: torch.Tensor | None, sc_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        e = self.embed(canvas)
        if signal is not None:
            soft = signal.to(e.dtype) * self.scale_as(e.dtype)
            if sc_mask is not None:  # training: examples without self-conditioning get a zero signal
                soft = soft * sc_mask.to(soft.dtype)[:, None, None]
            sc = self.self_conditioning
            e = e + geglu(self.self_conditioning_gate_up, sc["down_proj"], sc["pre_norm"](soft))
        # Without a signal the MLP's output is exactly 0, so it is skipped; the scale-free post-norm always applies.
        return rms_norm(e, None, self.config.rms_norm_eps)

    def decode(
        self,
        canvas: torch.Tensor,
        start: int,
        store: KeyValueStore,
        sc_logits: torch.Tensor | None,
        tables: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
        key_padding: torch.Tensor | None = None,
        sc_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Bidirectional canvas pass at positions start..start+C over [prefix ; canvas]. Returns fp32 logits.

        Training passes per-example rotary `tables`, a `key_padding` [B, start + C] mask and an `sc_mask` [B].
        """
        if tables is None:
            tables = self.canvas_rotary(start, canvas.shape[1], canvas.device)

        def attend(layer: int, layer_type: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            # Sliding layers see what the reference's cache retains: the last W-1 prefix positions.
            first_key = max(0, start - (self.window - 1)) if layer_type != FULL else 0
            keys, values = store.decoder_keys_values(layer, k, v, first_key)
            mask = None if key_padding is None else key_padding[:, None, None, first_key:]
            return attention(q, keys, values, mask)

        x = self.self_conditioned_embedding(canvas, sc_logits, sc_mask)
        return self.logits(self.run_layers(x, tables, attend, encoder=False))

    def decode_shared(self, canvas: torch.Tensor, store: SharedPrefixKV, signal: torch.Tensor,
                      sc_mask: torch.Tensor) -> torch.Tensor:
        """Serving mode's decoder: `decode` at the store's next position over [shared prompt ; row tail ; canvas],
        self-conditioned on `signal` (`self_conditioning_signal` of the previous step); returns the final-normed
        hidden states [B, C, H] (the head and the sampler are the caller's, possibly fused).

        Static shapes for torch.compile: the position is a tensor and the first step passes zero `sc_mask` rows
        (with a zero signal the self-conditioning MLP adds exactly 0) instead of no signal.
        """
        positions = store.next_position + torch.arange(canvas.shape[1], device=canvas.device)
        tables = self.rotary(positions, self.embed_tokens.weight.dtype)
        x = self.signal_conditioned_embedding(canvas, signal, sc_mask)
        return self.norm(self.run_layers(x, tables, partial(store.attend, causal=False), encoder=False))

    def encode_shared(self, ids: torch.Tensor, store: SharedPrefixKV) -> torch.Tensor:
        """Serving mode's encoder for tokens after the shared prompt (a committed canvas, a candidate to score):
        writes their keys/values into the rows' tails (the caller commits them) and returns the hidden states."""
        positions = store.next_position + torch.arange(ids.shape[1], device=ids.device)
        tables = self.rotary(positions, self.embed_tokens.weight.dtype)
        return self.run_layers(self.embed(ids), tables, partial(store.attend, causal=True), encoder=True)

    def canvas_rotary(self, start: int, length: int, device: torch.device):
        positions = torch.arange(start, start + length, device=device)
        return self.rotary(positions, self.embed_tokens.weight.dtype)

    def fuse_projections(self) -> None:
        """Inference: run projections that read the same input as one matmul each (see `FusedLinear`)."""
        fused = [self.self_conditioning_gate_up]
        for layer in self.layers:
            fused += [layer.self_attn.qkv, layer.mlp.gate_up]
        for projections in fused:
            projections.fuse()

    def cache_geometries(self) -> list[tuple[int, int]]:
        return [(layer.self_attn.num_kv_heads, layer.self_attn.head_dim) for layer in self.layers]

    def cache_windows(self) -> list[int | None]:
        """Each layer's sliding window as a KV cache needs it (None: the layer attends to every position)."""
        causal = self.config.encoder_is_causal
        return [self.window if layer.self_attn.is_sliding and causal else None for layer in self.layers]

    def new_cache(self, batch: int = 1) -> "KVCache":
        weight = self.embed_tokens.weight
        return KVCache(batch, self.cache_geometries(), weight.dtype, weight.device, self.cache_windows())
