"""Flow-matching UniPC, bh2, order 2, data prediction: the official default solver (spec §4.4-4.5).

Semantics that decide bit-parity with `FlowUniPCMultistepScheduler` (spec §9 item 13):
* the x0 prediction m_i = x_i - σ_i·v_i uses the sample *before* correction;
* the corrector (UniC) runs at every step i >= 1, with the order the previous predictor used;
* predictor order p_i = min(2, N - i, i + 1): 1 at the first and the last step;
* the last step (σ_N = 0) returns m_{N-1} exactly;
* every scalar is a 0-dim float32 tensor and the arithmetic keeps the official operation order.
"""

from __future__ import annotations

import torch

from wanmoe.sampling.base import FlowSolver
from wanmoe.sampling.sigmas import unipc_schedule

SOLVER_ORDER = 2


class FlowUniPC(FlowSolver):
    """UniPC (bh2) multistep solver on the flow-matching grid from σ_max = float32(0.999)."""

    name = "unipc"
    STATE_FIELDS = ("_m", "_last_x", "_last_order", "orders")
    grid = staticmethod(unipc_schedule)

    def __init__(self, steps: int, shift: float, num_train_timesteps: int = 1000) -> None:
        super().__init__(steps, shift, num_train_timesteps)
        self._m: list[torch.Tensor] = []  # x0 predictions, newest last (at most 2 kept)
        self._last_x: torch.Tensor | None = None  # sample the previous predictor started from
        self._last_order = 0
        self.orders: list[int] = []  # predictor order used at each step (for inspection)

    def predictor_order(self, i: int) -> int:
        """p_i = min(solver order, steps left, warm-up count + 1) (lower_order_final)."""
        return min(SOLVER_ORDER, self.num_steps - i, i + 1)

    def step(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x_{i+1} from the velocity v_i evaluated at x_i."""
        i = self._begin_step(v, x)
        v, x = v.float(), x.float()
        m = self.x0_prediction(v, x, i)  # from the uncorrected sample
        if i > 0:
            x = self._correct(m, x, i)
        self._m = (self._m + [m])[-SOLVER_ORDER:]
        order = self.predictor_order(i)
        self._last_x, self._last_order = x, order
        self.orders.append(order)
        x_next = self._predict(x, i, order)
        self.step_index += 1
        return x_next

    def _h_terms(self, t: int, s: int):
        """(α_t, σ_t/σ_s, h, hh, φ = B = expm1(hh)) for the step from index s to index t."""
        sigma_t, sigma_s = self.sigmas[t], self.sigmas[s]
        h = self.lam(t) - self.lam(s)
        hh = -h  # data-prediction variant
        phi = torch.expm1(hh)
        return 1 - sigma_t, sigma_t / sigma_s, h, hh, phi

    def _predict(self, x: torch.Tensor, i: int, order: int) -> torch.Tensor:
        """UniP from x_i (corrected) to σ_{i+1}."""
        alpha_t, ratio, h, hh, phi = self._h_terms(i + 1, i)
        m0 = self._m[-1]
        x_t = ratio * x - alpha_t * phi * m0
        if order == 2:
            rk = (self.lam(i - 1) - self.lam(i)) / h
            d1 = (self._m[-2] - m0) / rk
            b_h = phi  # bh2: B(h) = expm1(hh), the same value as φ
            x_t = x_t - alpha_t * b_h * (0.5 * d1)  # order-2 UniP uses ρ = 0.5 directly
        return x_t

    def _correct(self, m: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        """UniC: recompute x_i from the previous start point with the new x0 prediction m_i."""
        order = self._last_order
        alpha_t, ratio, h, hh, phi = self._h_terms(i, i - 1)
        m0 = self._m[-1]  # m_{i-1}
        b_h = phi  # bh2: B(h) = expm1(hh), the same value as φ
        x_t = ratio * self._last_x - alpha_t * phi * m0
        if order == 1:
            rho_last = torch.tensor(0.5, dtype=torch.float32)
            return x_t - alpha_t * b_h * (rho_last * (m - m0))
        rk = (self.lam(i - 2) - self.lam(i - 1)) / h
        d1 = (self._m[-2] - m0) / rk  # [*x.shape]
        rho = _corrector_rhos(rk, hh, phi, b_h)  # [2] float32
        return x_t - alpha_t * b_h * (rho[0] * d1 + rho[1] * (m - m0))


def _corrector_rhos(rk: torch.Tensor, hh: torch.Tensor, phi: torch.Tensor,
                    b_h: torch.Tensor) -> torch.Tensor:
    """Solve [[1, 1], [r, 1]]·ρ = [k1/B, 2·k2/B] in float32 (order-2 UniC coefficients)."""
    k1 = phi / hh - 1
    k2 = k1 / hh - 0.5
    r_mat = torch.stack([torch.ones(2), torch.stack([rk, torch.ones(())])])  # [2, 2]
    rhs = torch.stack([k1 * 1 / b_h, k2 * 2 / b_h])  # [2]
    return torch.linalg.solve(r_mat, rhs)
