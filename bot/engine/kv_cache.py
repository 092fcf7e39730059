"""The engine's attention cache: one preallocated arena per layer, a contiguous span per row.

Each layer keeps two tensors, keys and values, shaped [capacity, heads, head_dim]. A row
reserves one contiguous span of `prompt + max_new_tokens` token slots when it joins, so every
token it will ever cache has its place from the start: a step writes its new columns in place
(`index_copy_` of the step's tokens only) and attention reads the row's filled prefix as a view.
Nothing is copied per step, nothing is padded to another row's length, and a row that leaves
only gives its span back. The arena grows (doubling, up to the budget) when a new span does
not fit, and is compacted (live spans moved down, once) when the free room is fragmented.

Not thread-safe: the engine's one worker thread owns it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

_ROUND = 256  # capacity grows in multiples of this many tokens
_FIRST = 2048  # the first arena holds at least one full context (within the budget)


class KVArena:
    def __init__(self, layers: int, heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, max_tokens: int) -> None:
        self.layers, self.heads, self.head_dim = layers, heads, head_dim
        self.dtype, self.device = dtype, device
        self.max_tokens = max_tokens  # the KV budget in tokens (one lone request may exceed it)
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.spans: dict[int, tuple[int, int]] = {}  # owner -> (start, size)
        self.moves = 0  # compactions and growths that copied data (for benchmarks)

    # ----- spans -----------------------------------------------------------------------
    @property
    def reserved(self) -> int:
        return sum(size for _, size in self.spans.values())

    def allocate(self, owner: int, size: int, filled: Mapping[int, int]) -> int:
        """Reserve `size` contiguous slots for `owner`; `filled` says how many tokens each
        live owner has written (what a compaction or growth must keep). Returns the start."""
        assert owner not in self.spans
        start = self._first_fit(size)
        if start is None and self.capacity - self.reserved >= size:
            self._compact(filled)
            start = self._first_fit(size)
        if start is None:
            self._grow(self.reserved + size, filled)
            start = self._first_fit(size)
        assert start is not None
        self.spans[owner] = (start, size)
        return start

    def ensure(self, total: int, filled: Mapping[int, int]) -> None:
        """Grow once, before several spans are allocated together, if they will not fit."""
        if total > self.capacity:
            self._grow(total, filled)

    def free(self, owner: int) -> None:
        self.spans.pop(owner, None)

    def clear(self, release: bool = False) -> None:
        """Forget every span; with `release`, give the memory back too (after a failure)."""
        self.spans.clear()
        if release:
            self.keys, self.values, self.capacity = [], [], 0

    def _first_fit(self, size: int) -> int | None:
        cursor = 0
        for start, used in sorted(self.spans.values()):
            if start - cursor >= size:
                return cursor
            cursor = start + used
        return cursor if self.capacity - cursor >= size else None

    def _grow(self, needed: int, filled: Mapping[int, int]) -> None:
        """A bigger arena (double, within the budget, at least `needed`), live data compacted in."""
        target = max(needed, min(max(2 * self.capacity, _FIRST), self.max_tokens))
        target = -(-target // _ROUND) * _ROUND
        if self.max_tokens >= needed:
            target = min(target, max(self.max_tokens, needed))
        shape = (target, self.heads, self.head_dim)
        keys = [torch.empty(shape, dtype=self.dtype, device=self.device)
                for _ in range(self.layers)]
        values = [torch.empty(shape, dtype=self.dtype, device=self.device)
                  for _ in range(self.layers)]
        cursor, spans = 0, {}
        for owner, (start, size) in sorted(self.spans.items(), key=lambda item: item[1][0]):
            used = filled.get(owner, 0)
            if used:
                self.moves += 1
                for old, new in zip(self.keys + self.values, keys + values, strict=True):
                    new[cursor:cursor + used].copy_(old[start:start + used])
            spans[owner] = (cursor, size)
            cursor += size
        self.keys, self.values, self.capacity, self.spans = keys, values, target, spans

    def _compact(self, filled: Mapping[int, int]) -> None:
        """Move live spans down so that the free room is one piece at the end."""
        cursor = 0
        for owner, (start, size) in sorted(self.spans.items(), key=lambda item: item[1][0]):
            if start != cursor:
                used = filled.get(owner, 0)
                if used:
                    self.moves += 1
                    for tensor in self.keys + self.values:
                        tensor[cursor:cursor + used] = tensor[start:start + used].clone()
                self.spans[owner] = (cursor, size)
            cursor += size

    def start(self, owner: int) -> int:
        return self.spans[owner][0]

    # ----- per layer, during a forward pass --------------------------------------------
    def write(self, layer: int, slots: torch.Tensor, keys: torch.Tensor,
              values: torch.Tensor) -> None:
        """Write one step's keys and values ([tokens, heads, head_dim]) at arena `slots`."""
        self.keys[layer].index_copy_(0, slots, keys.to(self.dtype))
        self.values[layer].index_copy_(0, slots, values.to(self.dtype))

    def view(self, layer: int, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A row's cached keys and values as [1, heads, length, head_dim] views (no copy)."""
        return (self.keys[layer][start:start + length].transpose(0, 1).unsqueeze(0),
                self.values[layer][start:start + length].transpose(0, 1).unsqueeze(0))
