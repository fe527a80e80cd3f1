"""KV cache: full layers keep every position, sliding layers keep a ring of ``window`` positions.

All rows of a batch share positions (sequences are right-padded), so which absolute position a
stored key has follows from the cache's ``offset`` alone; the model builds one attention mask per
layer type from :meth:`KVCache.key_positions` and every layer of that type reuses it.

A sliding ring stores position ``p`` in slot ``p % window``. A multi-token step attends over the
ring as it was plus the new keys, then writes the newest ``window`` keys into the ring, so memory
stays at ``window`` positions however long the sequence grows.
"""

from __future__ import annotations

import torch

from engine.config import SLIDING, ModelConfig

_GROWTH = 256


class KVCache:
    """Per-layer K/V for a batch of ``batch`` rows that share positions 0..offset-1."""

    def __init__(self, config: ModelConfig, batch: int, dtype: torch.dtype, device: torch.device | str) -> None:
        self.config = config
        self.batch = batch
        self.dtype = dtype
        self.device = torch.device(device)
        self.offset = 0
        self.window = config.sliding_window
        self.sliding = [kind == SLIDING for kind in config.layer_types]
        self.keys: list[torch.Tensor | None] = [None] * config.num_hidden_layers
        self.values: list[torch.Tensor | None] = [None] * config.num_hidden_layers

    def _empty(self, length: int) -> torch.Tensor:
        shape = (self.batch, self.config.num_key_value_heads, length, self.config.head_dim)
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    def _capacity(self, layer: int) -> int:
        stored = self.keys[layer]
        return 0 if stored is None else stored.shape[2]

    def _ensure_full(self, layer: int, needed: int, exact: bool = False) -> None:
        """Room for ``needed`` positions: exactly that many when ``exact``, else grown by doubling
        (rounded to ``_GROWTH``) so that appending stays amortised."""
        capacity = self._capacity(layer)
        if needed <= capacity:
            return
        new_capacity = needed if exact else (max(needed, 2 * capacity) + _GROWTH - 1) // _GROWTH * _GROWTH
        keys, values = self._empty(new_capacity), self._empty(new_capacity)
        if capacity:
            keys[:, :, : self.offset] = self.keys[layer][:, :, : self.offset]
            values[:, :, : self.offset] = self.values[layer][:, :, : self.offset]
        self.keys[layer], self.values[layer] = keys, values

    def reserve(self, length: int) -> None:
        """Allocate full-layer storage for exactly ``length`` positions at once (no regrowth copies)."""
        for layer, slides in enumerate(self.sliding):
            if not slides:
                self._ensure_full(layer, length, exact=True)

    def key_positions(self, sliding: bool, new: int) -> torch.Tensor:
        """Absolute positions of the keys a layer attends over when ``new`` tokens arrive."""
        start, end = self.offset, self.offset + new
        if not sliding:
            return torch.arange(end, device=self.device)
        window = self.window
        assert window is not None
        if new == 1:
            # Decode writes first and attends over the ring itself.
            slots = torch.arange(window, device=self.device)
            return end - 1 - (end - 1 - slots) % window
        held = min(start, window)
        slots = torch.arange(held, device=self.device)
        ring = start - 1 - (start - 1 - slots) % window
        return torch.cat((ring, torch.arange(start, end, device=self.device)))

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's K/V [B, H, T, D]; return the keys/values to attend over."""
        new = k.shape[2]
        if not self.sliding[layer]:
            end = self.offset + new
            self._ensure_full(layer, end)
            keys, values = self.keys[layer], self.values[layer]
            keys[:, :, self.offset : end] = k
            values[:, :, self.offset : end] = v
            return keys[:, :, :end], values[:, :, :end]
        window = self.window
        if self.keys[layer] is None:
            self.keys[layer], self.values[layer] = self._empty(window), self._empty(window)
        ring_k, ring_v = self.keys[layer], self.values[layer]
        if new == 1:
            slot = self.offset % window
            ring_k[:, :, slot : slot + 1] = k
            ring_v[:, :, slot : slot + 1] = v
            return ring_k, ring_v
        held = min(self.offset, window)
        keys = torch.cat((ring_k[:, :, :held], k), dim=2) if held else k
        values = torch.cat((ring_v[:, :, :held], v), dim=2) if held else v
        kept = min(new, window)
        slots = torch.arange(self.offset + new - kept, self.offset + new, device=self.device) % window
        ring_k[:, :, slots] = k[:, :, new - kept :]
        ring_v[:, :, slots] = v[:, :, new - kept :]
        return keys, values

    def advance(self, new: int) -> None:
        """Called once per forward, after every layer has stored its keys."""
        self.offset += new

    def stored_positions(self, layer: int) -> int:
        """How many positions of storage the layer holds (its ring size for sliding layers)."""
        return self._capacity(layer)

    def nbytes(self) -> int:
        """Bytes of K/V storage held, across all layers."""
        total = 0
        for keys, values in zip(self.keys, self.values):
            if keys is not None:
                total += keys.numel() * keys.element_size() + values.numel() * values.element_size()
        return total

    def repeat(self, batch: int) -> KVCache:
        """A new cache whose ``batch`` rows each copy this single-row cache (shared-prefix scoring)."""
        if self.batch != 1:
            raise ValueError("only a single-row cache can be repeated")
        clone = KVCache(self.config, batch, self.dtype, self.device)
        clone.offset = self.offset
        for layer, (keys, values) in enumerate(zip(self.keys, self.values)):
            if keys is None:
                continue
            length = keys.shape[2] if self.sliding[layer] else self.offset
            clone.keys[layer] = keys[:, :, :length].repeat(batch, 1, 1, 1)
            clone.values[layer] = values[:, :, :length].repeat(batch, 1, 1, 1)
        return clone
