"""The denoise loop: expert for this step -> guided velocity -> solver step. Knows no model."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from wanmoe.models.experts import ExpertSchedule, ExpertStage

# progress(step_index, num_steps, stage, t); on_stage_change(prev_stage, new_stage)
ProgressFn = Callable[[int, int, ExpertStage, torch.Tensor], None]
StageChangeFn = Callable[[ExpertStage, ExpertStage], None]
Denoiser = Callable[[ExpertStage, torch.Tensor, torch.Tensor], torch.Tensor]


def denoise(x: torch.Tensor, solver, schedule: ExpertSchedule, denoiser: Denoiser,
            progress: Optional[ProgressFn] = None,
            on_stage_change: Optional[StageChangeFn] = None, *, start: int = 0,
            after_step: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """Run every step of `solver` from the noise x; returns the final sample (x0 at σ=0).

    `on_stage_change` fires before the first step of each new stage, not for the first stage
    (the caller prepares that expert: `schedule.select(solver.timesteps[0])`), so it fires once
    for the default T2V-A14B run (high -> low noise). `progress` is called after each step.

    `start`: the first step to run (a resumed run: x and the solver state are those after
    `start` steps). `after_step(done, x)` sees the sample after each step (checkpoints).
    """
    n = len(solver.timesteps)
    prev: ExpertStage | None = None
    for i in range(start, n):
        t = solver.timesteps[i]  # 0-dim int64, what the DiT receives
        stage = schedule.select(t)
        if prev is not None and stage != prev and on_stage_change is not None:
            on_stage_change(prev, stage)
        prev = stage
        v = denoiser(stage, x, t)
        x = solver.step(v, x)
        if after_step is not None:
            after_step(i + 1, x)
        if progress is not None:
            progress(i, n, stage, t)  # after step i is done
    return x
