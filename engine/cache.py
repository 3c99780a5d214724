"""KV caches for the encoder prefix.

The encoder appends the keys/values of every encoded token (prompt, then each committed canvas); the decoder only
reads them. The inference cache keeps every position, so a prompt that shares a prefix with the previous one can be
cropped and extended, and sliding layers *read* only the window the reference keeps (its last W-1 positions).
Each layer's buffer has room behind the committed positions for one canvas, so a denoising step writes the canvas
keys/values in place instead of concatenating the whole prefix again.
"""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer key/value buffers `[B, kv_heads, capacity, head_dim]` with a shared committed length."""

    def __init__(self, batch: int, geometries: list[tuple[int, int]], dtype: torch.dtype, device: torch.device):
        self.batch = batch
        self.geometries = geometries  # (kv_heads, head_dim) per layer
        self.dtype = dtype
        self.device = device
        self.length = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._allocate(0)

    def _allocate(self, capacity: int) -> None:
        old_keys, old_values = self.keys, self.values
        self.keys, self.values = [], []
        for layer, (kv_heads, head_dim) in enumerate(self.geometries):
            shape = (self.batch, kv_heads, capacity, head_dim)
            keys = torch.empty(shape, dtype=self.dtype, device=self.device)
            values = torch.empty(shape, dtype=self.dtype, device=self.device)
            if old_keys:
                keys[:, :, : self.length] = old_keys[layer][:, :, : self.length]
                values[:, :, : self.length] = old_values[layer][:, :, : self.length]
            self.keys.append(keys)
            self.values.append(values)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def reserve(self, extra: int) -> None:
        """Make room for `extra` positions after the committed ones (grows geometrically)."""
        needed = self.length + extra
        if needed > self.capacity:
            self._allocate(max(needed, 2 * self.capacity))

    def write(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        end = start + keys.shape[2]
        self.keys[layer][:, :, start:end] = keys
        self.values[layer][:, :, start:end] = values

    def span(self, layer: int, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[layer][:, :, start:end], self.values[layer][:, :, start:end]

    def encoder_keys_values(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor, first_key: int):
        """Store the encoded positions and return the keys/values their queries may read."""
        self.write(layer, start, keys, values)
        return self.span(layer, first_key, start + keys.shape[2])

    def decoder_keys_values(self, layer: int, keys: torch.Tensor, values: torch.Tensor, first_key: int):
        """Place the canvas behind the committed positions (not committed: `length` is unchanged)."""
        self.write(layer, self.length, keys, values)
        return self.span(layer, first_key, self.length + keys.shape[2])

    def crop(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of {self.length} positions to {length}")
        self.length = length

    def expanded(self, batch: int, extra: int) -> "KVCache":
        """A copy of the committed positions repeated to `batch` rows, with room for `extra` more positions."""
        if self.batch != 1 and batch != self.batch:
            raise ValueError(f"cannot expand a cache of batch {self.batch} to {batch}")
        copy = KVCache(batch, self.geometries, self.dtype, self.device)
        copy._allocate(self.length + extra)
        for layer in range(len(self.geometries)):
            copy.keys[layer][:, :, : self.length] = self.keys[layer][:, :, : self.length]
            copy.values[layer][:, :, : self.length] = self.values[layer][:, :, : self.length]
        copy.length = self.length
        return copy
