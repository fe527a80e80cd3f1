"""KV cache: one object per layer. Full layers keep every position (``FullKV``), sliding layers
keep a ring of ``window`` positions (``RingKV``).

All rows of a batch share positions (sequences are right-padded), so which absolute position a
stored key has follows from the layer's ``offset`` alone; the model builds one attention mask per
layer type from :meth:`key_positions` of that type's first layer, and every layer of the type
reuses it. Each layer's ``update`` stores this step's keys and advances its own offset.

A sliding ring stores position ``p`` in slot ``p % window``. A multi-token step attends over the
ring as it was plus the new keys, then writes the newest ``window`` keys into the ring, so memory
stays at ``window`` positions however long the sequence grows.

A tentative step (speculative decoding's verification) is bracketed by :meth:`KVCache.mark`, which
saves the ring slots the step will overwrite, and :meth:`KVCache.rewind`, which keeps the step's
first positions and restores the slots of the rest: the cache is then exactly what running only
the kept tokens would have left.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.config import SLIDING, ModelConfig

# What a layer's tentative step overwrote: (keys, values) of the ring slots, or None (nothing to restore).
Saved = tuple[torch.Tensor, torch.Tensor] | None


@dataclass(frozen=True)
class KVShape:
    """What every layer's storage has in common: [batch, kv_heads, positions, head_dim] of ``dtype``."""

    batch: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device

    def empty(self, positions: int) -> torch.Tensor:
        return torch.zeros((self.batch, self.kv_heads, positions, self.head_dim), dtype=self.dtype,
                           device=self.device)

    def with_batch(self, batch: int) -> KVShape:
        return KVShape(batch, self.kv_heads, self.head_dim, self.dtype, self.device)


class _StoredKV:
    """What both kinds of layer hold: K and V storage of ``shape``, and the positions seen so far."""

    def __init__(self, shape: KVShape) -> None:
        self.shape = shape
        self.offset = 0
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    @property
    def stored_positions(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]


# A decode step attends over its keys padded to a multiple of this many positions where the
# storage has room (the padding is masked out; storage is never grown for it): on the CPU, oneDNN
# builds a matmul kernel for every new shape, which costs several times the matmul itself, so a
# length that changed every step would pay that on every step.
ATTEND_STEP = 256


def padded(end: int) -> int:
    return -(-end // ATTEND_STEP) * ATTEND_STEP


GROWTH_FACTOR = 1.25  # a full layer's storage grows by a quarter: appending stays amortised (each
# position is copied about five times in all) and the storage holds at most a quarter more than its
# positions, where doubling would hold up to twice as much just past a power of two.


class FullKV(_StoredKV):
    """A full-attention layer: storage for every position, grown by ``GROWTH_FACTOR`` (rounded to
    ``growth``) so that appending stays amortised, or reserved exactly up front."""

    def __init__(self, shape: KVShape, growth: int = 256) -> None:
        super().__init__(shape)
        self.growth = growth

    def capacity_for(self, needed: int) -> int:
        """The storage ``reserve(needed, exact=False)`` leaves."""
        capacity = self.stored_positions
        if needed <= capacity:
            return capacity
        return (max(needed, int(capacity * GROWTH_FACTOR)) + self.growth - 1) // self.growth * self.growth

    def reserve(self, needed: int, exact: bool = True) -> None:
        capacity = self.stored_positions
        if needed <= capacity:
            return
        size = needed if exact else self.capacity_for(needed)
        keys, values = self.shape.empty(size), self.shape.empty(size)
        if capacity:
            keys[:, :, : self.offset] = self.keys[:, :, : self.offset]
            values[:, :, : self.offset] = self.values[:, :, : self.offset]
        self.keys, self.values = keys, values

    def key_positions(self, new: int) -> torch.Tensor:
        """Absolute positions of the keys attended over when ``new`` tokens arrive (a decode step:
        padded, within the storage, with positions after its own, which the causal mask hides)."""
        end = self.offset + new
        return torch.arange(self._span(end, self.capacity_for(end)) if new == 1 else end, device=self.shape.device)

    @staticmethod
    def _span(end: int, capacity: int) -> int:
        return min(padded(end), capacity)

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's K/V [B, H, T, D]; return the keys/values to attend over."""
        end = self.offset + k.shape[2]
        self.reserve(end, exact=False)
        span = self._span(end, self.stored_positions) if k.shape[2] == 1 else end
        self.keys[:, :, self.offset : end] = k
        self.values[:, :, self.offset : end] = v
        self.offset = end
        return self.keys[:, :, :span], self.values[:, :, :span]

    def copy(self, batch: int) -> FullKV:
        """``batch`` rows, each a copy of this single-row layer."""
        clone = FullKV(self.shape.with_batch(batch), self.growth)
        clone.offset = self.offset
        if self.keys is not None:
            clone.keys = self.keys[:, :, : self.offset].repeat(batch, 1, 1, 1)
            clone.values = self.values[:, :, : self.offset].repeat(batch, 1, 1, 1)
        return clone

    def mark(self, new: int) -> Saved:
        """Nothing to save: positions past the offset are never read."""
        return None

    def rewind(self, offset: int, saved: Saved, keep: int) -> None:
        self.offset = offset + keep


class RingKV(_StoredKV):
    """A sliding-window layer: a ring of ``window`` positions."""

    def __init__(self, shape: KVShape, window: int) -> None:
        super().__init__(shape)
        self.window = window

    def reserve(self, needed: int, exact: bool = True) -> None:
        """A ring never needs more than its window."""

    def _span(self, end: int) -> int:
        """The ring slots a decode step ending at ``end`` attends over: padded, at most the ring."""
        return min(padded(end), self.window)

    def key_positions(self, new: int) -> torch.Tensor:
        """Absolute positions of the keys attended over when ``new`` tokens arrive, in storage order."""
        start, end, window, device = self.offset, self.offset + new, self.window, self.shape.device
        if new == 1:
            # Decode writes first and attends over the ring's first slots, padded (see ATTEND_STEP),
            # or all of them; slots not yet written have negative positions, which the mask hides.
            slots = torch.arange(self._span(end), device=device)
            return end - 1 - (end - 1 - slots) % window
        held = min(start, window)
        slots = torch.arange(held, device=device)
        ring = start - 1 - (start - 1 - slots) % window
        return torch.cat((ring, torch.arange(start, end, device=device)))

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's K/V [B, H, T, D]; return the keys/values to attend over."""
        new, window = k.shape[2], self.window
        if self.keys is None:
            self.keys, self.values = self.shape.empty(window), self.shape.empty(window)
        ring_k, ring_v = self.keys, self.values
        if new == 1:
            slot = self.offset % window
            ring_k[:, :, slot : slot + 1] = k
            ring_v[:, :, slot : slot + 1] = v
            self.offset += 1
            span = self._span(self.offset)  # as key_positions: slots fill in order until the ring wraps
            return ring_k[:, :, :span], ring_v[:, :, :span]
        held = min(self.offset, window)
        keys = torch.cat((ring_k[:, :, :held], k), dim=2) if held else k
        values = torch.cat((ring_v[:, :, :held], v), dim=2) if held else v
        kept = min(new, window)
        slots = torch.arange(self.offset + new - kept, self.offset + new, device=self.shape.device) % window
        ring_k[:, :, slots] = k[:, :, new - kept :]
        ring_v[:, :, slots] = v[:, :, new - kept :]
        self.offset += new
        return keys, values

    def copy(self, batch: int) -> RingKV:
        """``batch`` rows, each a copy of this single-row layer."""
        clone = RingKV(self.shape.with_batch(batch), self.window)
        clone.offset = self.offset
        if self.keys is not None:
            clone.keys = self.keys.repeat(batch, 1, 1, 1)
            clone.values = self.values.repeat(batch, 1, 1, 1)
        return clone

    def _slots(self, first: int, count: int) -> torch.Tensor:
        return torch.arange(first, first + count, device=self.shape.device) % self.window

    def mark(self, new: int) -> Saved:
        """The ring slots a step of ``new`` tokens will overwrite (at most a window's worth)."""
        if new > self.window:
            raise ValueError(f"a tentative step of {new} tokens exceeds the sliding window of {self.window}")
        if self.keys is None:
            return None
        slots = self._slots(self.offset, new)
        return self.keys[:, :, slots].clone(), self.values[:, :, slots].clone()

    def rewind(self, offset: int, saved: Saved, keep: int) -> None:
        """Keep the step's first ``keep`` positions; the slots of the others get back what they held."""
        end = self.offset
        self.offset = offset + keep
        if saved is None or self.offset == end:
            return
        dropped = torch.arange(keep, end - offset, device=self.shape.device)
        slots = self._slots(self.offset, end - self.offset)
        self.keys[:, :, slots] = saved[0][:, :, dropped]
        self.values[:, :, slots] = saved[1][:, :, dropped]


LayerKV = FullKV | RingKV


@dataclass
class Mark:
    """The cache's offset before a tentative step, and what each layer's step overwrote."""

    offset: int
    saved: list[Saved]


class KVCache:
    """The layers' K/V for a batch of ``batch`` rows that share positions 0..offset-1."""

    def __init__(self, layers: list[LayerKV], batch: int) -> None:
        self.layers = layers
        self.batch = batch

    @classmethod
    def for_model(cls, config: ModelConfig, batch: int, dtype: torch.dtype, device: torch.device | str) -> KVCache:
        shape = KVShape(batch, config.num_key_value_heads, config.head_dim, dtype, torch.device(device))
        return cls([RingKV(shape, config.sliding_window) if kind == SLIDING else FullKV(shape)
                    for kind in config.layer_types], batch)

    @property
    def offset(self) -> int:
        return self.layers[0].offset

    @property
    def device(self) -> torch.device:
        return self.layers[0].shape.device

    def reserve(self, length: int) -> None:
        """Allocate full-layer storage for exactly ``length`` positions at once (no regrowth copies)."""
        for layer in self.layers:
            layer.reserve(length)

    def nbytes(self) -> int:
        """Bytes of K/V storage held, across all layers."""
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.layers if layer.keys is not None)

    def mark(self, new: int) -> Mark:
        """Before a tentative step of ``new`` tokens: what :meth:`rewind` needs to undo part of it."""
        return Mark(self.offset, [layer.mark(new) for layer in self.layers])

    def rewind(self, mark: Mark, keep: int) -> None:
        """After the step marked by ``mark``: keep its first ``keep`` positions, forget the rest."""
        if not 0 <= keep <= self.offset - mark.offset:
            raise ValueError(f"cannot keep {keep} of the step's {self.offset - mark.offset} positions")
        for layer, saved in zip(self.layers, mark.saved):
            layer.rewind(mark.offset, saved, keep)

    def repeat(self, batch: int) -> KVCache:
        """A new cache whose ``batch`` rows each copy this single-row cache (shared-prefix scoring)."""
        if self.batch != 1:
            raise ValueError("only a single-row cache can be repeated")
        return KVCache([layer.copy(batch) for layer in self.layers], batch)
