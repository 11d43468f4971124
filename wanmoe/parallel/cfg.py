"""CFG parallel: the conditional and unconditional passes on two rank groups, combined after.

Ranks of CFG branch 0 run DiT(x, t, prompt), ranks of branch 1 DiT(x, t, negative prompt), each
on its own (sequence-parallel) group; then rank u of each branch exchanges its velocity with
its partner (an all-gather over the pair) and both combine v = v_u + g (v_c - v_u) with the
same fp32 ops as `sampling.guidance.CFGDenoiser`, so every rank holds the same guided velocity
and runs the same solver step. Guidance 1 (or no negative prompt) needs only the conditional
pass: both branches run it and nothing is exchanged.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from wanmoe.models.experts import ExpertStage
from wanmoe.sampling.guidance import CFGDenoiser, _timestep_batch
from wanmoe.errors import InputError


class CFGParallelDenoiser(CFGDenoiser):
    """`CFGDenoiser` whose two passes run on two rank groups (`branch` 0: cond, 1: uncond)."""

    def __init__(self, experts, cond, uncond, *, branch: int, group, seq_len=None) -> None:
        super().__init__(experts, cond, uncond, batched=False, seq_len=seq_len)
        self.branch, self.group = branch, group

    def __call__(self, stage: ExpertStage, x: torch.Tensor, t) -> torch.Tensor:
        squeeze = x.dim() == 4
        xb = x.unsqueeze(0) if squeeze else x  # [B, C, F, H, W]
        b = xb.shape[0]
        if b != len(self.cond):
            raise InputError(f"sample batch {b} != number of prompt contexts {len(self.cond)}; "
                             f"give one prompt context per sample")
        tb = _timestep_batch(t, b, xb.device)
        model = self.expert(stage)
        g = stage.guidance
        if self.uncond is None or g == 1.0:
            v = self._forward(model, xb, tb, self.cond)
        else:
            mine = self._forward(model, xb, tb, self.uncond if self.branch else self.cond)
            both = [torch.empty_like(mine) for _ in range(2)]
            dist.all_gather(both, mine.contiguous(), group=self.group)  # [cond, uncond]
            v_c, v_u = both
            v = v_u + g * (v_c - v_u)
        return v.squeeze(0) if squeeze else v
