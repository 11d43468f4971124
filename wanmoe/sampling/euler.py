"""Plain flow-matching Euler: x_{i+1} = x_i + (σ_{i+1} - σ_i)·v_i.

Not an official Wan2.2 solver; it is what few-step distilled weights (e.g. 4-step LoRAs) are
sampled with. Grid choice: the DPM++ grid from σ = 1.0, shifted once (for 4 steps at shift 5:
σ = 1, 0.9375, 0.8333, 0.625, 0), so the first model call sees pure noise at t = 1000. Model
timesteps follow the official rule, trunc(1000·σ) as int64 (1000, 937, 833, 625). The last step
lands on σ = 0 and returns x - σ·v, the x0 prediction. Matches diffusers'
FlowMatchEulerDiscreteScheduler given the same σ grid (float32 dt times v, added in float32).
"""

from __future__ import annotations

import torch

from wanmoe.sampling.base import FlowSolver
from wanmoe.sampling.sigmas import flow_schedule


class FlowEuler(FlowSolver):
    """First-order flow Euler on the DPM++ grid (σ from 1.0)."""

    name = "euler"
    grid = staticmethod(flow_schedule)

    def step(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x_{i+1} from the velocity v_i evaluated at x_i."""
        i = self._begin_step(v, x)
        dt = self.sigmas[i + 1] - self.sigmas[i]  # 0-dim float32, negative
        x_next = x.float() + dt * v.float()
        self.step_index += 1
        return x_next
