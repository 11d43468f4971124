"""Per-block wall times of a DiT: the worked example of a hook in one file (docs/architecture.md).

`time_blocks(model)` swaps the model's block runner for one that times every block; the model
code is untouched, and `BlockTimer.remove()` puts the previous runner back. On CUDA each block
is synchronised before its clock is read (a profiling aid: it costs speed).
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch
from torch import nn


class BlockTimer:
    """Seconds spent in each block index, summed over forwards; `calls[i]` counts them."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.previous = model, model.block_runner
        self.seconds: dict[int, float] = defaultdict(float)
        self.calls: dict[int, int] = defaultdict(int)
        model.block_runner = self._run

    def _run(self, blocks, h, *args):
        for i, block in enumerate(blocks):
            _sync(h)
            t0 = time.perf_counter()
            h = block(h, *args)
            _sync(h)
            self.seconds[i] += time.perf_counter() - t0
            self.calls[i] += 1
        return h

    def remove(self) -> None:
        self.model.block_runner = self.previous


def _sync(t: torch.Tensor) -> None:
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


def time_blocks(model: nn.Module) -> BlockTimer:
    """Start timing every block of `model` (a module with a `block_runner` hook)."""
    return BlockTimer(model)
