"""Flow-matching objective of Wan2.2 (spec §4.1, §4.3) and the per-expert noise ranges (§3).

x_σ = (1 − σ)·x0 + σ·ε, target v = ε − x0, model timestep t = 1000·σ. Training σ is drawn as
σ = shift(u) with u uniform, i.e. the same shifted grid the sampler walks. An expert owns a σ
range: the high-noise expert σ >= boundary, the low-noise one σ < boundary, a dense model all.
"""

from __future__ import annotations

import torch


def shift_sigma(u: torch.Tensor, shift: float) -> torch.Tensor:
    """σ' = shift·u / (1 + (shift − 1)·u) (spec §4.3)."""
    return shift * u / (1 + (shift - 1) * u)


def unshift_sigma(sigma: float, shift: float) -> float:
    """Inverse of `shift_sigma` for a scalar."""
    return sigma / (shift - (shift - 1) * sigma)


def sigma_range(expert: str, boundary: float | None) -> tuple[float, float]:
    """[lo, hi) of σ an expert is trained on."""
    if expert == "high_noise":
        return (boundary, 1.0)
    if expert == "low_noise":
        return (0.0, boundary)
    return (0.0, 1.0)


def sample_sigmas(n: int, shift: float, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    """n σ values in [lo, hi] distributed like the shifted uniform grid restricted to that range."""
    u_lo, u_hi = unshift_sigma(lo, shift), unshift_sigma(hi, shift)
    u = u_lo + (u_hi - u_lo) * torch.rand(n, generator=gen)
    return shift_sigma(u, shift).clamp(1e-4, 1.0)


def noisy_pair(x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_σ, v) for latents x0 [B, C, F, H, W] and σ [B]."""
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise, noise - x0


def flow_loss(model, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
              context: list[torch.Tensor]) -> torch.Tensor:
    """MSE between the DiT's velocity at t = 1000σ and ε − x0."""
    xt, v = noisy_pair(x0, sigma, noise)
    pred = model(xt, sigma * 1000.0, context)
    return (pred - v).square().mean()
