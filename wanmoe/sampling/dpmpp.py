"""Flow-matching DPM-Solver++ (2M, midpoint): the official `--sample_solver dpm++` (spec §4.6).

Grid from σ = 1.0 (t_0 = 1000). First-order update at step 0 and at the last step (final σ 0,
which returns the x0 prediction exactly); second-order midpoint otherwise. Step 1 is
second-order in form but its correction term is exactly 0 because λ(σ=1) = -inf.
Operation order follows the official scheduler so results are bit-identical.
"""

from __future__ import annotations

import torch

from wanmoe.sampling.base import FlowSolver
from wanmoe.sampling.sigmas import flow_schedule


class FlowDPMPP(FlowSolver):
    """DPM-Solver++ multistep, order 2, midpoint, data prediction, on the grid from 1.0."""

    name = "dpm++"
    STATE_FIELDS = ("_m", "orders")
    grid = staticmethod(flow_schedule)

    def __init__(self, steps: int, shift: float, num_train_timesteps: int = 1000) -> None:
        super().__init__(steps, shift, num_train_timesteps)
        self._m: list[torch.Tensor] = []  # x0 predictions, newest last (at most 2 kept)
        self.orders: list[int] = []  # order used at each step (for inspection)

    def step(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x_{i+1} from the velocity v_i evaluated at x_i."""
        i = self._begin_step(v, x)
        m = self.x0_prediction(v.float(), x.float(), i)
        self._m = (self._m + [m])[-2:]
        x = x.float()  # the official scheduler upcasts the sample before the update
        if i == 0 or i == self.num_steps - 1:
            x_next, order = self._first_order(x, i), 1
        else:
            x_next, order = self._second_order(x, i), 2
        self.orders.append(order)
        self.step_index += 1
        return x_next

    def _first_order(self, x: torch.Tensor, i: int) -> torch.Tensor:
        sigma_t, sigma_s = self.sigmas[i + 1], self.sigmas[i]
        alpha_t = 1 - sigma_t
        h = self.lam(i + 1) - self.lam(i)
        return (sigma_t / sigma_s) * x - (alpha_t * (torch.exp(-h) - 1.0)) * self._m[-1]

    def _second_order(self, x: torch.Tensor, i: int) -> torch.Tensor:
        sigma_t, sigma_s0 = self.sigmas[i + 1], self.sigmas[i]
        alpha_t = 1 - sigma_t
        h = self.lam(i + 1) - self.lam(i)
        h_0 = self.lam(i) - self.lam(i - 1)
        r0 = h_0 / h  # +inf at step 1 (σ_0 = 1), which makes d1 exactly 0
        m0, m1 = self._m[-1], self._m[-2]
        d1 = (1.0 / r0) * (m0 - m1)
        coef = alpha_t * (torch.exp(-h) - 1.0)
        return (sigma_t / sigma_s0) * x - coef * m0 - 0.5 * coef * d1
