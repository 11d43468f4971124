"""Explicit causal time cache for chunked VAE encode/decode (official `feat_cache`, spec §6.5).

The official code keeps a flat list `feat_cache` plus a running index on the model and relies on
every layer being called in the same order each chunk. Here the history is an object created per
encode/decode call (or per tile) and passed down; each layer keys its own slot by itself, so call
order does not matter and nothing survives on the module between calls.
"""

from __future__ import annotations

import torch
from torch import nn


class CausalCache:
    """Time history of every causal layer for one clip, advanced one chunk at a time."""

    def __init__(self) -> None:
        self._slots: dict[int, torch.Tensor] = {}
        self.chunk_index = 0

    @property
    def first_chunk(self) -> bool:
        """True while the first chunk of the clip is being processed (upstream "Rep" / first_chunk)."""
        return self.chunk_index == 0

    def get(self, layer: nn.Module) -> torch.Tensor | None:
        return self._slots.get(id(layer))

    def set(self, layer: nn.Module, frames: torch.Tensor) -> None:
        self._slots[id(layer)] = frames

    def next_chunk(self) -> None:
        """Mark the end of one chunk; called by the driver after each encoder/decoder call."""
        self.chunk_index += 1

    def nbytes(self) -> int:
        """Bytes held by the cached frames (for memory accounting)."""
        return sum(t.numel() * t.element_size() for t in self._slots.values())
