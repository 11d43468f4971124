"""Seeded random state dicts for the project's own modules, built on meta (nothing allocated).

Two weight styles: `scaled=True` gives well-conditioned weights (norms ~1, matrices
~1/sqrt(fan_in), biases ~0.1) for models that must run end to end; `scaled=False` gives plain
standard-normal values, enough where only names, shapes and exact round trips matter.
Both draw one `torch.randn` per state-dict entry in order from one generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from wanmoe.configs import DiTConfig, T5Config, VAEConfig


def module_shapes(build: Callable[[], nn.Module]) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of a module built on the meta device."""
    with torch.device("meta"):
        module = build()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def random_state(shapes: dict[str, tuple[int, ...]], seed: int, dtype: torch.dtype = torch.float32, *,
                 scaled: bool = True) -> dict[str, torch.Tensor]:
    """One seeded tensor per entry of `shapes` (see the module docstring for the two styles)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        r = torch.randn(shape, generator=gen)
        if not scaled:
            v = r
        elif name.endswith("gamma") or ("norm" in name and name.endswith("weight")):
            v = 1.0 + 0.1 * r
        elif len(shape) >= 2:
            v = r / math.sqrt(max(1, math.prod(shape[1:])))
        else:
            v = 0.1 * r
        out[name] = v.to(dtype).contiguous()
    return out


def dit_state(cfg: DiTConfig, seed: int, *, scaled: bool = True) -> dict[str, torch.Tensor]:
    """float32 WanDiT weights (official names)."""
    from wanmoe.models.dit import WanDiT

    return random_state(module_shapes(lambda: WanDiT(cfg)), seed, scaled=scaled)


def t5_state(cfg: T5Config, seed: int, dtype: torch.dtype = torch.bfloat16, *,
             scaled: bool = True) -> dict[str, torch.Tensor]:
    """UMT5Encoder weights (official names), bf16 like the released `.pth` unless `dtype` says."""
    from wanmoe.text.umt5 import UMT5Encoder

    return random_state(module_shapes(lambda: UMT5Encoder(cfg)), seed, dtype, scaled=scaled)


def vae_state(cfg: VAEConfig, seed: int, *, scaled: bool = True) -> dict[str, torch.Tensor]:
    """float32 Wan2.1 / Wan2.2 VAE weights (official names)."""
    from wanmoe.vae import build_vae

    return random_state(module_shapes(lambda: build_vae(cfg)), seed, scaled=scaled)
