"""The Wan2.2-Lightning 4-step sampler: flow Euler on the distillation's own float32 grid.

Reproduces ModelTC/Wan2.2-Lightning `wan/utils/fm_solvers_euler.py` (`EulerScheduler`, used by
`wan/text2video.py` with `sample_solver="euler"`), dtype for dtype:

* t = np.linspace(1000, 0, N+1, dtype=float32); σ = t / 1000 as a float32 torch tensor, shifted
  in float32 torch ops, σ' = shift·σ / (1 + (shift-1)·σ); model timesteps = σ'·1000 in float32,
  the first N of them (4 steps at shift 5: 1000, 937.5, 833.3333, 625). No truncation to int:
  the DiT gets the float timestep (its sinusoid casts it to float64, as upstream).
* step: x_{i+1} = x_i.float() + (σ_{i+1} - σ_i)·v_i with the float32 σ (FlowEuler.step).
* expert: t >= boundary·1000 (`t.item() >= boundary` upstream): 2 high + 2 low steps at 0.875.
* guidance 1.0 (`wan/configs/wan_t2v_A14B.py` sample_guide_scale = (1.0, 1.0)): one model call
  per step (`use_cfg` skips the unconditional pass), which CFGDenoiser does for g == 1.0.

Phased guidance (not wired): a `cfg_steps K` option would run CFG with the user's scale for the
first K steps and 1.0 after (one call per step from step K on). It fits the loop as an
ExpertSchedule whose stages split at the timestep of step K (same expert, two guidance values),
so neither the loop nor CFGDenoiser would change.
"""

from __future__ import annotations

import numpy as np
import torch

from wanmoe.sampling.euler import FlowEuler
from wanmoe.sampling.sigmas import check_steps_shift


def lightning_schedule(steps: int, shift: float,
                       num_train_timesteps: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps float32 [N], sigmas float32 [N+1] ending in 0) of the Lightning EulerScheduler."""
    check_steps_shift(steps, shift)
    t = np.linspace(num_train_timesteps, 0, steps + 1, dtype=np.float32)
    s = torch.from_numpy(t) / num_train_timesteps  # float32, as `set_shift` divides
    s = shift * s / (1 + (shift - 1) * s)  # same expression and order as `timestep_shift`
    timesteps = s * num_train_timesteps  # float32, not truncated
    return timesteps[:-1].clone(), s


class FlowEulerLightning(FlowEuler):
    """Flow Euler on the Wan2.2-Lightning grid: float32 σ and float model timesteps."""

    name = "euler-lightning"
    grid = staticmethod(lightning_schedule)


# The published Lightning settings (wan/configs/wan_t2v_A14B.py in the Lightning repo); the
# boundary stays the model's (0.875 for T2V-A14B: 2 high-noise + 2 low-noise steps).
LIGHTNING = dict(solver=FlowEulerLightning.name, steps=4, shift=5.0, guide_scale=1.0)
