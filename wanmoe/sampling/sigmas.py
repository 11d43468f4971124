"""Noise-level grids of the flow-matching solvers (spec §4.3, §4.4, §4.6).

Every grid is built the way the official schedulers build it, because the integer model
timesteps (trunc(1000·σ) of a float64 σ) and the float32 solver σ must come out bit-identical:

* UniPC: s = linspace(σ_max, 0, N+1)[:N] in float64 with σ_max = float32(0.999) (the first entry
  of the float32 training table), shifted once.
* DPM++ and Euler: s = linspace(1.0, 0, N+1)[:N], shifted once (so t_0 = 1000).

Both return (timesteps int64 [N], sigmas float32 [N+1] ending in 0), on the CPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from wanmoe.errors import InputError


def check_steps_shift(steps, shift) -> None:
    """Validate user-facing step count and shift."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InputError(f"steps {steps!r} must be an integer >= 1 (official: 40 for t2v-A14B, "
                         f"50 for ti2v-5B)")
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not (
            math.isfinite(shift) and shift > 0):
        raise InputError(f"shift {shift!r} must be a finite number > 0 (official: 12.0 for "
                         f"t2v-A14B, 5.0 for ti2v-5B; 1.0 = no shift)")


def shift_sigmas(s: np.ndarray, shift: float) -> np.ndarray:
    """σ' = shift·s / (1 + (shift-1)·s), float64, same operation order as the official code."""
    s = np.asarray(s, dtype=np.float64)
    return shift * s / (1 + (shift - 1) * s)


def unipc_sigma_max(num_train_timesteps: int = 1000) -> float:
    """First entry of the float32 training table 1 - linspace(1, 1/T, T)[::-1]: float32(0.999)."""
    alphas = np.linspace(1, 1 / num_train_timesteps, num_train_timesteps)[::-1]
    table = torch.from_numpy((1.0 - alphas).copy()).to(torch.float32)
    return table[0].item()  # 0.9990000128746033 for T = 1000


def _finish(sig64: np.ndarray, num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated int64 model timesteps from float64 σ; float32 solver σ with a final 0."""
    timesteps = torch.from_numpy(sig64 * num_train_timesteps).to(torch.int64)  # trunc toward 0
    sigmas = torch.from_numpy(np.concatenate([sig64, [0.0]]).astype(np.float32))
    return timesteps, sigmas


def unipc_schedule(steps: int, shift: float,
                   num_train_timesteps: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps int64 [N], sigmas float32 [N+1]) of FlowUniPCMultistepScheduler (spec §4.4)."""
    check_steps_shift(steps, shift)
    s = np.linspace(unipc_sigma_max(num_train_timesteps), 0.0, steps + 1).copy()[:-1]
    return _finish(shift_sigmas(s, shift), num_train_timesteps)


def flow_schedule(steps: int, shift: float,
                  num_train_timesteps: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps int64 [N], sigmas float32 [N+1]) of the DPM++ path, grid from 1.0 (spec §4.6).

    The official DPM++ path shifts once here and again inside the scheduler with shift 1, which
    is the exact identity in float64 (1·s / (1 + 0·s) = s), so one shift is applied.
    """
    check_steps_shift(steps, shift)
    s = np.linspace(1, 0, steps + 1)[:steps]
    return _finish(shift_sigmas(s, shift), num_train_timesteps)
