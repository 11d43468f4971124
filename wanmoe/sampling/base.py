"""Shared state of the flow-matching solvers: the grid, the step counter, log-SNR per index."""

from __future__ import annotations

import torch

from wanmoe.errors import InputError


class FlowSolver:
    """Base: `timesteps` int64 [N] for the DiT, `sigmas` float32 [N+1] for the update.

    Solver scalars are 0-dim float32 CPU tensors, computed one σ at a time with the same torch
    ops as the official schedulers (a vectorised log over the whole grid may differ in the last
    ulp). A solver instance holds the multistep history: use a new one per generation.
    """

    name = "base"
    # attributes beyond `step_index` that carry the multistep history (saved by checkpoints)
    STATE_FIELDS: tuple[str, ...] = ()

    def __init__(self, steps: int, shift: float, num_train_timesteps: int = 1000) -> None:
        timesteps, sigmas = self.grid(steps, shift, num_train_timesteps)  # validates steps / shift
        self.timesteps = timesteps  # [N] int64, CPU
        self.sigmas = sigmas  # [N+1] float32, CPU, last entry 0
        self.shift = shift
        self.step_index = 0
        self._lam: dict[int, torch.Tensor] = {}

    @staticmethod
    def grid(steps: int, shift: float, num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps int64 [N], sigmas float32 [N+1]) of this solver: a `sigmas.py` schedule."""
        raise NotImplementedError

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    def __len__(self) -> int:
        return self.num_steps

    def lam(self, i: int) -> torch.Tensor:
        """λ_i = ln(1-σ_i) - ln(σ_i) as a 0-dim float32 tensor (+inf at σ=0, -inf at σ=1)."""
        if i not in self._lam:
            sigma = self.sigmas[i]
            self._lam[i] = torch.log(1 - sigma) - torch.log(sigma)
        return self._lam[i]

    def _begin_step(self, v: torch.Tensor, x: torch.Tensor) -> int:
        i = self.step_index
        if i >= self.num_steps:
            raise InputError(f"{self.name} solver was built for {self.num_steps} steps and step() "
                             f"was called a {i + 1}th time; make a new solver per generation")
        if v.shape != x.shape:
            raise InputError(f"velocity shape {tuple(v.shape)} != sample shape {tuple(x.shape)}; "
                             f"step(v, x) needs the model's velocity for exactly this sample")
        return i

    def x0_prediction(self, v: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        """m_i = x_i - σ_i·v_i (spec §4.1), float32."""
        return x - self.sigmas[i] * v

    # ---- checkpoint state (sampling/checkpoint.py) -------------------------------------------
    def state_dict(self) -> dict:
        """The mutable state after the last step: step index + STATE_FIELDS (tensors cloned)."""
        def copy(v):
            if isinstance(v, torch.Tensor):
                return v.detach().cpu().clone()
            if isinstance(v, list):
                return [copy(e) for e in v]
            return v

        state = {"step_index": self.step_index}
        state.update({k: copy(getattr(self, k)) for k in self.STATE_FIELDS})
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; tensors go to the device the saved sample will be moved to."""
        expected = {"step_index", *self.STATE_FIELDS}
        if not isinstance(state, dict) or set(state) != expected:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise InputError(f"{self.name} solver state has fields {got}; expected {sorted(expected)}")
        for k, v in state.items():
            setattr(self, k, v)

    def to(self, device) -> "FlowSolver":
        """Move the tensors of the history to `device` (after load_state_dict)."""
        def move(v):
            if isinstance(v, torch.Tensor):
                return v.to(device)
            if isinstance(v, list):
                return [move(e) for e in v]
            return v

        for k in self.STATE_FIELDS:
            setattr(self, k, move(getattr(self, k)))
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.num_steps}, shift={self.shift})"
