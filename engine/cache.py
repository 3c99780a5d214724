"""KV caches for the encoder prefix.

The encoder appends the keys/values of every encoded token (prompt, then each committed canvas); the decoder only
reads them. Full-attention layers keep every position, so a prompt that shares a prefix with the previous one can be
cropped and extended. Sliding layers can only ever read their window (the reference keeps the last W-1 positions),
so their buffers keep a bounded run of recent positions: when a write would overflow, the run is moved to the front
(the buffer *compacts*) and older positions are dropped. Positions stay in order, so a read is one contiguous slice
and gives the same bits as a cache that kept everything. A sliding layer also keeps `W` positions more than its
window, so a later prompt may diverge up to `W` tokens before the end and still reuse the cache.

Buffers are sized in powers of two (`capacity_bucket`), so a static-shape decoder step meets only a handful of shapes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from engine.kernels.attention import shared_prefix_attention
from engine.kernels.flash_attention import flash_attention, flash_available

MIN_CAPACITY = 256


def capacity_bucket(positions: int) -> int:
    """The buffer size for `positions`: the next power of two, at least MIN_CAPACITY."""
    return max(MIN_CAPACITY, 1 << max(positions - 1, 0).bit_length())


class KVCache:
    """Per-layer key/value buffers `[B, kv_heads, capacity, head_dim]` with a shared committed length.

    `windows[layer]` is the sliding window of that layer (None: full attention, every position kept). Slot `s` of
    a layer's buffer holds position `bases[layer] + s`; full layers always have base 0.
    """

    def __init__(self, batch: int, geometries: list[tuple[int, int]], dtype: torch.dtype, device: torch.device,
                 windows: list[int | None] | None = None):
        self.batch = batch
        self.geometries = geometries  # (kv_heads, head_dim) per layer
        self.windows = list(windows) if windows is not None else [None] * len(geometries)
        self.dtype = dtype
        self.device = device
        self.length = 0
        self.bases = [0] * len(geometries)
        self.keys: list[torch.Tensor] = [self._empty(layer, 0) for layer in range(len(geometries))]
        self.values: list[torch.Tensor] = [self._empty(layer, 0) for layer in range(len(geometries))]

    def _empty(self, layer: int, capacity: int) -> torch.Tensor:
        # Zeros, not uninitialised memory: a masked read multiplies unused slots by a weight of 0, and 0·NaN is NaN.
        kv_heads, head_dim = self.geometries[layer]
        return torch.zeros(self.batch, kv_heads, capacity, head_dim, dtype=self.dtype, device=self.device)

    def retained(self, layer: int) -> int | None:
        """How many positions before `length` a sliding layer keeps (its window plus the reuse margin)."""
        window = self.windows[layer]
        return None if window is None else 2 * window - 1

    @property
    def capacity(self) -> int:
        """Positions the full-attention buffers hold (the sliding ones may hold fewer)."""
        return max(keys.shape[2] + base for keys, base in zip(self.keys, self.bases)) if self.keys else 0

    def reserve(self, extra: int) -> None:
        """Make room for `extra` positions after the committed ones (grows by buckets, compacts sliding layers)."""
        for layer in range(len(self.geometries)):
            needed = self.length + extra - self.bases[layer]
            if needed <= self.keys[layer].shape[2]:
                continue
            retained = self.retained(layer)
            base = self.bases[layer] if retained is None else max(self.bases[layer], self.length - retained)
            capacity = self.keys[layer].shape[2]
            if self.length + extra - base > capacity:
                capacity = capacity_bucket(self.length + extra - base)
            self._move(layer, base, capacity)

    def _move(self, layer: int, base: int, capacity: int) -> None:
        """Keep positions [base, length) at the front of a buffer of `capacity` slots."""
        kept = slice(base - self.bases[layer], self.length - self.bases[layer])
        for buffers in (self.keys, self.values):
            old = buffers[layer]
            new = old if capacity == old.shape[2] else self._empty(layer, capacity)
            # clone: the source and destination slots may overlap when compacting in place
            new[:, :, : kept.stop - kept.start] = old[:, :, kept].clone() if new is old else old[:, :, kept]
            buffers[layer] = new
        self.bases[layer] = base

    def write(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        first = start - self.bases[layer]
        if first < 0:
            raise ValueError(f"layer {layer} no longer holds position {start} (it keeps {self.bases[layer]} on)")
        self.keys[layer][:, :, first : first + keys.shape[2]] = keys
        self.values[layer][:, :, first : first + keys.shape[2]] = values

    def span(self, layer: int, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        base = self.bases[layer]
        if start < base:
            raise ValueError(f"layer {layer} no longer holds position {start} (it keeps {base} on)")
        return self.keys[layer][:, :, start - base : end - base], self.values[layer][:, :, start - base : end - base]

    def encoder_keys_values(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor, first_key: int):
        """Store the encoded positions and return the keys/values their queries may read."""
        self.write(layer, start, keys, values)
        return self.span(layer, first_key, start + keys.shape[2])

    def decoder_keys_values(self, layer: int, keys: torch.Tensor, values: torch.Tensor, first_key: int):
        """Place the canvas behind the committed positions (not committed: `length` is unchanged)."""
        self.write(layer, self.length, keys, values)
        return self.span(layer, first_key, self.length + keys.shape[2])

    def can_crop(self, length: int) -> bool:
        """Whether the cache cut back to `length` still holds every key a query at `length` may read."""
        if not 0 <= length <= self.length:
            return False
        return all(window is None or base <= max(0, length - (window - 1))
                   for window, base in zip(self.windows, self.bases))

    def crop(self, length: int) -> None:
        if not self.can_crop(length):
            raise ValueError(f"cannot crop a cache of {self.length} positions (sliding layers keep "
                             f"{max(self.bases)} on) to {length}")
        self.length = length

    def clear(self) -> None:
        """Forget every position, keeping the buffers."""
        self.length = 0
        self.bases = [0] * len(self.geometries)

    def expanded(self, batch: int, extra: int) -> "KVCache":
        """A copy of the committed positions repeated to `batch` rows, with room for `extra` more positions."""
        if self.batch != 1 and batch != self.batch:
            raise ValueError(f"cannot expand a cache of batch {self.batch} to {batch}")
        copy = KVCache(batch, self.geometries, self.dtype, self.device, self.windows)
        copy.length, copy.bases = self.length, list(self.bases)
        for layer in range(len(self.geometries)):
            held = self.length - self.bases[layer]
            capacity = capacity_bucket(held + extra)
            for source, target in ((self.keys, copy.keys), (self.values, copy.values)):
                target[layer] = copy._empty(layer, capacity)
                target[layer][:, :, :held] = source[layer][:, :, :held]
        return copy


class SharedPrefixKV(NamedTuple):
    """Serving mode's key/value store for one request of B rows: the prompt cache, read in place by every row (never
    copied per request), and each row's own *tail* buffer for the canvases it commits and the one being denoised.

    Every shape is fixed by the prompt cache's buckets, B and the tail capacity, and every position is a tensor, so
    one compiled decoder step serves every prompt length and canvas (slots are chosen by masks, not by slicing).
    A NamedTuple: torch.compile sees its tensors as inputs, not as attributes of an object it must guard.
    """

    prefix_keys: list[torch.Tensor]  # the KVCache's buffers, batch 1
    prefix_values: list[torch.Tensor]
    prefix_bases: torch.Tensor  # [layers]: the position of each prefix buffer's slot 0
    prefix_length: torch.Tensor  # 0-dim: prompt positions the rows read (later slots are stale)
    tail_keys: list[torch.Tensor]  # [B, kv_heads, tail capacity, head_dim]
    tail_values: list[torch.Tensor]
    tail_length: torch.Tensor  # 0-dim: positions committed to the tails
    windows: tuple[int | None, ...]

    @classmethod
    def over(cls, cache: KVCache, length: int, batch: int, tail_capacity: int) -> "SharedPrefixKV":
        """A request's store over the first `length` positions of a batch-1 `cache`."""
        if cache.batch != 1 or not cache.can_crop(length):
            raise ValueError(f"a shared prefix needs a batch-1 cache holding the keys of its {length} positions")
        device = cache.device
        tails = [torch.zeros(batch, kv_heads, tail_capacity, head_dim, dtype=cache.dtype, device=device)
                 for kv_heads, head_dim in cache.geometries]
        return cls(list(cache.keys), list(cache.values), torch.tensor(cache.bases, device=device),
                   torch.tensor(length, device=device), tails, [torch.zeros_like(t) for t in tails],
                   torch.zeros((), dtype=torch.long, device=device), tuple(cache.windows))

    @property
    def next_position(self) -> torch.Tensor:
        return self.prefix_length + self.tail_length

    def attend(self, layer: int, layer_type: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               causal: bool, by_positions: bool | None = None) -> torch.Tensor:
        """Attend to [prefix ; tail ; k/v]: causally, writing k/v into the tails' next slots (the encoder committing
        a canvas), or bidirectionally without writing anything (the decoder: its canvas is not committed, and a
        step that mutates none of its inputs can be captured as a CUDA graph).

        `by_positions` (default: on CUDA with Triton) hands the visibility rules to `flash_attention` as key
        positions instead of building masks."""
        length, device = q.shape[2], q.device
        slots = self.tail_length + torch.arange(length, device=device)
        own_keys, own_values = self.tail_keys[layer], self.tail_values[layer]
        if causal:
            own_keys.index_copy_(2, slots, k)
            own_values.index_copy_(2, slots, v)
        else:
            own_keys, own_values = torch.cat([own_keys, k], dim=2), torch.cat([own_values, v], dim=2)
        query_positions = (self.prefix_length + slots)[:, None]
        prefix_positions = self.prefix_bases[layer] + torch.arange(self.prefix_keys[layer].shape[2], device=device)
        capacity = self.tail_keys[layer].shape[2]
        own_slots = torch.arange(own_keys.shape[2], device=device)
        # The committed tail, then (decoding) the canvas behind the buffer: its positions follow the committed ones.
        tail_positions = self.prefix_length + torch.where(own_slots < capacity, own_slots,
                                                          own_slots - capacity + self.tail_length)
        prefix_visible = (prefix_positions < self.prefix_length)[None]
        if causal:
            tail_visible = ((own_slots < self.tail_length + length)[None]
                            & (tail_positions[None] <= query_positions))
        else:
            tail_visible = ((own_slots < self.tail_length) | (own_slots >= capacity))[None]
        window = self.windows[layer]
        if by_positions if by_positions is not None else q.is_cuda and flash_available():
            # The Triton kernel takes the same rules as positions (-1: an empty slot) and tiles the keys itself.
            prefix_positions = torch.where(prefix_visible[0], prefix_positions, -1)
            own_positions = torch.where(tail_visible.any(dim=0), tail_positions, -1)
            return flash_attention(q, own_keys, own_values, query_positions[:, 0], own_positions, causal, window,
                                   prefix=(self.prefix_keys[layer], self.prefix_values[layer], prefix_positions))
        if window is not None:
            # Keys newer than `position - W`: per query when encoding, from the canvas start when decoding (the
            # reference decoder reads the last W-1 positions before the canvas, and the whole canvas).
            oldest = query_positions - window if causal else query_positions[:1] - window
            prefix_visible = prefix_visible & (prefix_positions[None] > oldest)
            tail_visible = tail_visible & (tail_positions[None] > oldest)
        return shared_prefix_attention(q, self.prefix_keys[layer], self.prefix_values[layer], prefix_visible,
                                       own_keys, own_values, tail_visible)
